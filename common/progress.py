"""The sampler callback: progress bar, progress frames, divergence steps (k-diffusion's callback pattern).

Samplers call ``callback(state)`` once per outer step with ``step``, ``num_steps``, ``x_t``, ``x0hat``, ``x0y``
(or only some of them), ``residual`` (per-sample ‖A(x̂) − y‖), ``finite`` (per-sample bool) and ``decode``
(sample space -> image). Nothing here runs unless the user asked for it: frames only at ~``points`` steps,
the bar's PSNR only when ground truth is given and the model samples in pixel space (no decode per step).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from common.metrics import to_unit

FRAME_KEYS = ("x0hat", "x0y", "x_t")
#: seconds between progress-bar postfix updates (each reads values from the device, a synchronisation)
POSTFIX_INTERVAL = 0.5


def record_steps(num_steps: int, points: int) -> set[int]:
    """About ``points`` evenly spaced steps in [0, num_steps − 1], always including the last."""
    if points <= 0:
        return set()
    count = min(points, num_steps)
    return {round(i * (num_steps - 1) / max(count - 1, 1)) for i in range(count)} | {num_steps - 1}


class Progress:
    """Callable passed as ``callback`` to a sampler for one batch."""

    def __init__(self, batch_size: int, ground_truth: torch.Tensor | None = None, record_frames: bool = False,
                 points: int = 10, show_bar: bool = True, description: str = "", latent: bool = False,
                 on_step: Callable[[dict[str, float]], None] | None = None) -> None:
        # the bar's PSNR needs x̂ in pixel space: shown for pixel models only (no decode per step)
        self.ground_truth = None if latent else ground_truth
        self.record_frames, self.points, self.show_bar = record_frames, points, show_bar
        self.description = description
        self.frames: list[dict[str, list[torch.Tensor]]] = [{k: [] for k in FRAME_KEYS} for _ in range(batch_size)]
        self._first_bad = torch.full((batch_size,), -1, dtype=torch.long)
        self._last_postfix = float("-inf")
        self.on_step = on_step  # receives cheap per-step scalars (residual, sigma), e.g. for W&B curves
        self._bar: Any = None
        self._steps: set[int] | None = None

    def __call__(self, state: dict[str, Any]) -> None:
        step, num_steps = state["step"], state["num_steps"]
        if self._steps is None:  # first call
            self._steps = record_steps(num_steps, self.points) if self.record_frames else set()
            if self.show_bar:
                self._bar = tqdm(total=num_steps, desc=self.description, leave=False, dynamic_ncols=True)
        finite = state["finite"]
        first_bad = self._first_bad.to(finite.device)
        self._first_bad = torch.where(~finite & (first_bad < 0), step, first_bad)
        if step in self._steps:
            self._record(state)
        if self.on_step is not None:
            self.on_step(self._scalars(state))
        if self._bar is not None:
            now = time.monotonic()
            if now - self._last_postfix >= POSTFIX_INTERVAL or step == num_steps - 1:
                self._bar.set_postfix(self._postfix(state), refresh=False)
                self._last_postfix = now
            self._bar.update(1)
            if step == num_steps - 1:
                self._bar.close()

    @property
    def failed_at(self) -> list[int | None]:
        """First step at which each sample was reported non-finite (None: never); read after sampling."""
        return [None if s < 0 else s for s in self._first_bad.tolist()]

    @staticmethod
    def _scalars(state: dict[str, Any]) -> dict[str, float]:
        scalars = {"step": float(state["step"])}
        if state.get("residual") is not None:
            scalars["residual"] = float(state["residual"].nanmean())
        for key in ("sigma", "t"):
            if state.get(key) is not None:
                scalars[key] = float(state[key])
        return scalars

    def _postfix(self, state: dict[str, Any]) -> dict[str, str]:
        postfix = {}
        if "residual" in state and state["residual"] is not None:
            postfix["residual"] = f"{float(state['residual'].nanmean()):.3g}"
        estimate = state.get("x0y", state.get("x0hat"))
        if self.ground_truth is not None and estimate is not None:
            mse = (to_unit(estimate) - to_unit(self.ground_truth)).pow(2).flatten(1).mean(1)
            postfix["psnr"] = f"{float((-10 * mse.log10()).nanmean()):.2f}"
        return postfix

    @torch.no_grad()
    def _record(self, state: dict[str, Any]) -> None:
        decode = state["decode"]
        for key in FRAME_KEYS:
            if state.get(key) is not None:
                images = decode(state[key]).float().cpu()
                for i, image in enumerate(images):
                    self.frames[i][key].append(image)
