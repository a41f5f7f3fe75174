"""Optional Weights & Biases tracking of one experiment (``wandb=true``); the run directory stays the record.

What a tracked run holds:

- config: the resolved experiment config, plus ``run_dir``;
- per sampler step (x-axis ``sampling/step``; the steps of consecutive batches follow one another):
  ``sampling/residual``, the batch mean of the data-fit residual ‖A(x̂₀) − y‖, and ``sampling/sigma``, the
  noise level σ of the step (DAPS: σ(t) of the annealing schedule; DPS: √((1 − ᾱ_t)/ᾱ_t));
- per finished sample (x-axis ``sample/index``): its metrics; at the end a ``samples`` table of every
  (image, run) of the run directory (from ``metrics.json``, so resumed and multi-process runs are complete);
- summary: for each metric m, ``m_mean`` / ``m_std`` (over images of each image's run-mean) and
  ``m_best_oracle_mean`` / ``m_best_residual_mean`` (see :func:`common.evaluation.summary.summarize`), the columns of
  the cross-run comparison (:func:`common.evaluation.comparison.comparison_values`: posterior-mean PSNR/SSIM, 1σ
  coverage and its exact-sampler value, ``residual_ratio`` (expected ≈ 1), model calls and wall time per sample,
  diverged samples), the counts, ``run_dir``; the result grid (``grid_results``) and the progress strips
  (``trajectory``) as images;
- files: the terminal log ``run.log`` of the run folder (as far as it got when the run finished);
- per-sample metrics are logged as each batch finishes; a sweep's jobs share a W&B group (the sweep's name)
  and are named by their swept values (``task=inpainting,seed=2``).

Settings: ``project``, ``entity`` and ``mode`` (online | offline | disabled) come from the config keys
``project_name``, ``wandb_entity`` and ``wandb_mode``; W&B's own environment variables ``WANDB_PROJECT``,
``WANDB_ENTITY`` and ``WANDB_MODE`` take precedence when set (that is how ``wandb agent`` and clusters steer
runs), and the local W&B folder is ``$WANDB_DIR`` when set, else the run directory.

W&B never costs results: when ``wandb.init`` fails (not logged in, no network, package missing) or any
later call raises, one warning is printed and the tracker turns into a no-op for the rest of the run.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from common.evaluation.comparison import comparison_values
from common.results.provenance import LOG_FILE

#: progress strips uploaded at the end (the first ones by name); the rest stay in the run directory
MAX_STRIPS = 16
MODES = ("online", "offline", "disabled")


def run_tags(choices: Mapping[str, str], task_group: str) -> list[str]:
    """W&B tags from the Hydra config-group choices: ``task:…``, ``model:…``, ``sampler:…``, ``data:…``,
    ``task_group:…`` (e.g. from ``HydraConfig.get().runtime.choices``)."""
    tags = [f"{group}:{choices[group]}" for group in ("task", "model", "sampler", "data") if choices.get(group)]
    return [tag[:64] for tag in tags + [f"task_group:{task_group}"]]  # W&B limits tags to 64 characters


def _settings(project: str, entity: str | None, mode: str) -> tuple[str, str | None, str]:
    """(project, entity, mode) after W&B's environment variables, which win over the config keys."""
    mode = os.environ.get("WANDB_MODE") or mode
    if mode not in MODES:
        raise ValueError(f"wandb mode {mode!r} is not valid: {', '.join(MODES)}")
    return os.environ.get("WANDB_PROJECT") or project, os.environ.get("WANDB_ENTITY") or entity, mode


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


class Tracker:
    """One experiment's W&B run, or a no-op (``Tracker()``) when tracking is off or has failed."""

    def __init__(self, run: Any = None) -> None:
        self._run = run
        self._offset = 0       # sampling/step of the current batch's step 0
        self._last_step = -1
        self._samples = 0      # sample/index of the next record

    # ------------------------------------------------------------------ life cycle
    @classmethod
    def start(cls, config: Mapping[str, Any], run_dir: str | Path, *, enabled: bool, project: str,
              entity: str | None = None, mode: str = "online", tags: Sequence[str] = (),
              name: str | None = None, group: str | None = None) -> "Tracker":
        """A tracker for one run: a W&B run when ``enabled`` and the mode is not ``disabled``, else a no-op.
        ``name`` (default: the run folder's name) and ``group`` (e.g. the sweep a job belongs to) label it in W&B.

        A failing ``wandb.init`` gives one warning and a no-op tracker; results are written all the same.
        """
        if not enabled:
            return cls()
        project, entity, mode = _settings(project, entity, mode)
        if mode == "disabled":
            return cls()
        run_dir, run = Path(run_dir), None
        try:
            import wandb

            run = wandb.init(project=project, entity=entity, mode=mode, config=dict(config), tags=list(tags),
                             name=name or run_dir.name, group=group, dir=os.environ.get("WANDB_DIR") or str(run_dir),
                             reinit="finish_previous")
            run.config.update({"run_dir": str(run_dir.resolve())}, allow_val_change=True)
            run.define_metric("sampling/step")
            run.define_metric("sampling/*", step_metric="sampling/step")
            run.define_metric("sample/index")
            run.define_metric("sample/*", step_metric="sample/index")
        except Exception as err:  # noqa: BLE001  (any W&B failure must leave a local-only run)
            warnings.warn(f"W&B tracking is off for this run: wandb.init failed ({type(err).__name__}: {err}); "
                          f"results are still written to {run_dir}", stacklevel=2)
            if run is not None:  # init worked, the set-up after it did not: close the half-made run
                with contextlib.suppress(Exception):
                    run.finish()
            return cls()
        return cls(run)

    @property
    def active(self) -> bool:
        return self._run is not None

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run one W&B call; an exception becomes a warning and switches tracking off."""
        if self._run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"W&B tracking stopped ({type(err).__name__}: {err}); the run directory keeps every "
                          f"result", stacklevel=3)
            self._run = None

    # ------------------------------------------------------------------ during sampling
    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        """Scalars of one sampler step (e.g. residual, sigma) under ``sampling/<name>``. A step index not larger
        than the previous one starts a new batch, whose steps are placed after those of the last batch."""
        if self._run is None:
            return
        if step <= self._last_step:
            self._offset += self._last_step + 1
        self._last_step = step
        payload = {f"sampling/{k}": v for k, v in values.items() if _number(v) is not None}
        self._call(self._run.log, {"sampling/step": self._offset + step, **payload})

    def on_step(self, scalars: Mapping[str, float]) -> None:
        """The ``on_step`` hook of :class:`common.run.progress.Progress` (``Outputs.on_step``): ``{"step": i,
        "residual": …, "sigma": …, ("t": …)}`` of one sampler step."""
        values = dict(scalars)
        self.log_step(int(values.pop("step")), values)

    def log_records(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Per-sample records (image_id, run, metrics, residual, failed_at_step) as they are finished."""
        for record in records:
            if self._run is None:
                return
            numbers = {f"sample/{k}": _number(v) for k, v in record.items()}
            self._call(self._run.log, {"sample/index": self._samples,
                                       **{k: v for k, v in numbers.items() if v is not None}})
            self._samples += 1

    # ------------------------------------------------------------------ end
    def finish(self, summary: Mapping[str, Any], run_dir: str | Path, wall_s: float | None = None) -> None:
        """Aggregate metrics and the comparison columns (``wall_s``: the folder's wall time so far), the per-sample
        table, the grid and progress strips as images; closes the run."""
        self._call(self._finish, summary, Path(run_dir), wall_s)
        self._run = None

    def log_image(self, key: str, path: str | Path, caption: str = "") -> None:
        """One picture (e.g. the cross-run comparison PNG) under ``key``."""
        if self._run is not None:
            import wandb

            self._call(self._run.log, {key: wandb.Image(str(path), caption=caption)})

    def close(self) -> None:
        """Finish the W&B run (what :meth:`finish` does last, for a run that logs no experiment)."""
        if self._run is not None:
            self._call(self._run.finish)
        self._run = None

    def _finish(self, summary: Mapping[str, Any], run_dir: Path, wall_s: float | None) -> None:
        import wandb

        values: dict[str, Any] = {"run_dir": str(run_dir.resolve()), "num_images": summary.get("num_images"),
                                  "num_samples": summary.get("num_samples"),
                                  "num_failed": len(summary.get("failed", []))}
        for metric, stats in summary.get("summary", {}).items():
            values.update({f"{metric}_{key}": value for key, value in stats.items()})
        values.update(comparison_values(summary, wall_s))
        payload: dict[str, Any] = {}
        rows = [{"image_id": int(image_id), "name": entry.get("name"), **run}
                for image_id, entry in summary.get("images", {}).items() for run in entry.get("runs", [])]
        if rows:
            columns = list(dict.fromkeys(k for row in rows for k in row))
            payload["samples"] = wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
        if (run_dir / "grid_results.png").is_file():
            payload["grid_results"] = wandb.Image(str(run_dir / "grid_results.png"), caption=run_dir.name)
        strips = sorted((run_dir / "trajectory").glob("*.png"))[:MAX_STRIPS]
        if strips:
            payload["trajectory"] = [wandb.Image(str(p), caption=p.stem) for p in strips]
        if payload:
            self._run.log(payload)
        if (run_dir / LOG_FILE).is_file():  # the terminal log so far (what is printed after this is not in it)
            self._run.save(str(run_dir / LOG_FILE), base_path=str(run_dir), policy="now")
        self._run.summary.update(values)
        self._run.finish()
