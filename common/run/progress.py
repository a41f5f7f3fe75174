"""The sampler callback of the experiment: progress bar and progress frames (k-diffusion's callback pattern).

Samplers call ``callback(state)`` once per outer step with the state documented in :mod:`common.sampling`
(divergence is the sampler's result, not the callback's business). Nothing here runs unless the user asked for
it: frames only at ~``points`` steps,
the bar's PSNR only when ground truth is given and the model samples in pixel space (no decode per step).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from common.evaluation.metrics import to_unit

FRAME_KEYS = ("x0hat", "x0y", "x_t")
#: seconds between progress-bar postfix updates (each reads values from the device, a synchronisation)
POSTFIX_INTERVAL = 0.5


def record_steps(num_steps: int, points: int) -> set[int]:
    """About ``points`` evenly spaced steps in [0, num_steps − 1], always including the last."""
    if points <= 0:
        return set()
    count = min(points, num_steps)
    return {round(i * (num_steps - 1) / max(count - 1, 1)) for i in range(count)} | {num_steps - 1}


class RunBar:
    """One progress bar for a whole run: the sampler steps of all its batches, so tqdm's ETA is the time left for
    the run. Its total, batches × steps per batch, is set at the first step (samplers report ``num_steps``);
    the postfix names the batch (``batch k/n``) beside the residual and PSNR."""

    def __init__(self, batches: int, label: str = "sampling") -> None:
        self.batches, self.label = batches, label
        self.batch = 0
        self._bar: Any = None

    def advance(self, step: int, num_steps: int, postfix: dict[str, str] | None) -> None:
        """One sampler step (``step`` of ``num_steps``) of the current batch; ``postfix`` None keeps the last one."""
        if self._bar is None:
            self._bar = tqdm(total=self.batches * num_steps, desc=self.label, leave=False, dynamic_ncols=True)
        if step == 0:
            self.batch += 1
        if postfix is not None:
            self._bar.set_postfix({"batch": f"{self.batch}/{self.batches}", **postfix}, refresh=False)
        self._bar.update(1)
        if self.batch == self.batches and step == num_steps - 1:
            self._bar.close()  # the run's last step (leave=False: the bar disappears)


class Progress:
    """Callable passed as ``callback`` to a sampler for one batch; ``bar`` (None: no bar) is the run's bar."""

    def __init__(self, batch_size: int, ground_truth: torch.Tensor | None = None, record_frames: bool = False,
                 points: int = 10, bar: RunBar | None = None, latent: bool = False,
                 on_step: Callable[[dict[str, float]], None] | None = None) -> None:
        # the bar's PSNR needs x̂ in pixel space: shown for pixel models only (no decode per step)
        self.ground_truth = None if latent else ground_truth
        self.record_frames, self.points, self._bar = record_frames, points, bar
        self.frames: list[dict[str, list[torch.Tensor]]] = [{k: [] for k in FRAME_KEYS} for _ in range(batch_size)]
        # per recorded frame (shared by the batch): its step and noise level ('sigma' or 't', value; t preferred)
        self.frame_steps: list[int] = []
        self.frame_times: list[tuple[str, float] | None] = []
        self.num_steps: int | None = None
        self._last_postfix = float("-inf")
        self.on_step = on_step  # receives cheap per-step scalars (residual, sigma), e.g. for W&B curves
        self._steps: set[int] | None = None

    def __call__(self, state: dict[str, Any]) -> None:
        step, num_steps = state["step"], state["num_steps"]
        if self._steps is None:  # first call
            self._steps = record_steps(num_steps, self.points) if self.record_frames else set()
        if step in self._steps:
            self._record(state)
        if self.on_step is not None:
            self.on_step(self._scalars(state))
        if self._bar is not None:
            now = time.monotonic()
            postfix = None
            if now - self._last_postfix >= POSTFIX_INTERVAL or step == num_steps - 1:
                postfix, self._last_postfix = self._postfix(state), now
            self._bar.advance(step, num_steps, postfix)

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
        self.num_steps = state["num_steps"]
        self.frame_steps.append(state["step"])
        name = next((k for k in ("t", "sigma") if state.get(k) is not None), None)
        self.frame_times.append(None if name is None else (name, float(state[name])))
        for key in FRAME_KEYS:
            if state.get(key) is not None:
                images = decode(state[key]).float().cpu()
                for i, image in enumerate(images):
                    self.frames[i][key].append(image)
