"""The numbers that compare samplers, one set per run folder: the columns of ``commands.report``'s table and of each
run's W&B summary (so the W&B runs table compares samplers with no extra work).

From a run's ``metrics.json`` (:func:`common.evaluation.summary.summarize`) and its wall time:

- per metric m (PSNR, SSIM, LPIPS, ...): ``m_mean`` / ``m_std``, the mean and std over images of one per-image value
  chosen by ``stat`` (:data:`STATISTICS`); ``m_std`` is None with one image (a ``± 0`` would say nothing);
- ``psnr_of_mean`` / ``ssim_of_mean``: the same of the posterior mean (the pixel-wise mean of ≥ 2 runs);
- ``coverage_1std``: the fraction of pixels with |x − mean| ≤ 1 std, and ``coverage_1std_expected``, what an exact
  sampler gives with the same number of runs (0.683 as n → ∞; :mod:`common.evaluation.uncertainty`);
- ``residual_ratio``: ‖A(x̂) − y‖ / (σ√m), mean over images (≈ 1 fits the noise, ≪ 1 overfits it);
- ``model_calls`` / ``model_backward``: denoiser evaluations and backward passes per sample; ``wall_s_per_sample``:
  the folder's wall time (every invocation) over its samples;
- ``diverged`` and ``samples``: the samples that diverged (NaN/inf) and all samples.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from common.evaluation.metrics import HIGHER_IS_BETTER
from common.evaluation.summary import finite, mean_std

#: the per-image value a metric column averages: the mean over the image's runs, the oracle best run (best against
#: the ground truth, what the DAPS tables report; flatters samplers with more spread) or the residual-best run
STATISTICS = {"mean": "mean over each image's runs",
              "best_oracle": "oracle best of each image's runs (chosen against the ground truth)",
              "best_residual": "each image's run with the smallest ‖A(x̂) − y‖ (no ground truth)"}
#: the further columns, in table order
COLUMNS = ("psnr_of_mean", "ssim_of_mean", "coverage_1std", "coverage_1std_expected", "residual_ratio", "model_calls",
           "model_backward", "wall_s_per_sample", "diverged", "samples")


def comparison_values(summary: Mapping[str, Any], wall_s: float | None, stat: str = "mean") -> dict[str, Any]:
    """The comparison columns (module docstring) of one run from its ``metrics.json`` content ``summary`` and its
    total wall time ``wall_s`` (None: not recorded)."""
    if stat not in STATISTICS:
        raise ValueError(f"stat={stat!r} is not valid: {', '.join(STATISTICS)}")
    images = summary.get("images") or {}
    out: dict[str, Any] = {}
    for metric in summary.get("summary") or {}:
        values = finite(entry[metric][stat] for entry in images.values() if isinstance(entry.get(metric), Mapping))
        stats = mean_std(values)
        out[f"{metric}_mean"], out[f"{metric}_std"] = stats["mean"], stats["std"] if len(values) > 1 else None
    u = summary.get("uncertainty") or {}
    cost = summary.get("cost") or {}
    samples = summary.get("num_samples") or 0
    out.update({
        "psnr_of_mean": (u.get("psnr_of_mean") or {}).get("mean"),
        "ssim_of_mean": (u.get("ssim_of_mean") or {}).get("mean"),
        "coverage_1std": u.get("coverage_1std"),
        "coverage_1std_expected": u.get("calibrated_1std") if u.get("coverage_1std") is not None else None,
        "residual_ratio": (summary.get("residual_ratio") or {}).get("mean"),
        "model_calls": cost.get("model_calls"), "model_backward": cost.get("model_backward"),
        "wall_s_per_sample": wall_s / samples if wall_s is not None and samples else None,
        "diverged": len(summary.get("failed") or []), "samples": samples})
    return out


def badness(column: str, row: Mapping[str, Any]) -> float | None:
    """How far ``row[column]`` is from the ideal, smaller is better (None: no value, or a column without a best):
    metrics by their direction (higher PSNR/SSIM, lower LPIPS/FID/KID), the 1σ coverage by its distance from the
    exact sampler's, the residual ratio by |log ratio| (0.5 and 2 are as far from 1), costs and divergences as
    they are."""
    value = row.get(column)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    metric = column.removesuffix("_mean").removesuffix("_of")
    if column.endswith("_mean") or column.endswith("_of_mean"):
        return -value if HIGHER_IS_BETTER.get(metric, False) else value
    if column == "coverage_1std":
        expected = row.get("coverage_1std_expected")
        return abs(value - expected) if isinstance(expected, (int, float)) else None
    if column == "residual_ratio":
        return abs(math.log(value)) if value > 0 else None
    if column in ("model_calls", "model_backward", "wall_s_per_sample", "diverged"):
        return value
    return None
