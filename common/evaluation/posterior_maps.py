"""Evaluations over a run directory's stored samples (they read the float samples and images back, and may
need the device): the posterior mean/std maps per image and the set metrics (FID/KID) over all samples.

Per image with n ≥ 2 finished runs (see :mod:`common.evaluation.uncertainty`): mean m = (1/n) Σ_r x̂_r, unbiased std s,
PSNR(m, x), SSIM(m, x) and the coverage P(|x − m| ≤ k s) at k = 1, 2, pooled over images weighted by pixel count.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from common.evaluation import uncertainty
from common.evaluation.figures import calibration_figure, png_bytes
from common.evaluation.metrics import FEW_IMAGES, Metrics, set_metrics
from common.evaluation.summary import finite, finite_or_none, mean_std
from common.results.run_dir import RunDirectory, load_png, torch_bytes

SET_BATCH = 16  # images per Inception batch for FID/KID


def runs_by_image(directory: RunDirectory, records: list[dict[str, Any]]) -> dict[int, list[int]]:
    """Finished, non-diverged runs per image whose float sample is on disk (images with ≥ 2 such runs)."""
    runs: dict[int, list[int]] = {}
    for rec in records:
        if rec.get("failed_at_step") is None and directory.raw_path(rec["image_id"], rec["run"]).is_file():
            runs.setdefault(rec["image_id"], []).append(rec["run"])
    return {i: sorted(r) for i, r in sorted(runs.items()) if len(r) >= 2}


def write_uncertainty(directory: RunDirectory, records: list[dict[str, Any]], summary: dict[str, Any]
                      ) -> dict[str, Any] | None:
    """Per image with ≥ 2 runs: posterior mean and std (images, heat map, float .pt), PSNR of the mean
    and coverage (see :mod:`common.evaluation.uncertainty`); adds ``posterior`` to each image of ``summary`` and
    returns the pooled numbers (None when no image has two runs)."""
    by_image = runs_by_image(directory, records)
    if not by_image:
        return None
    maps = {}
    for image_id, runs in by_image.items():
        samples = torch.stack([torch.load(directory.raw_path(image_id, r), weights_only=True).float() for r in runs])
        maps[image_id] = uncertainty.moments(samples)
    vmax = max(float(uncertainty.std_magnitude(std).max()) for _, std in maps.values())
    scores = Metrics(["psnr", "ssim"])
    curves, counts = [], []
    for image_id, (mean, std) in maps.items():
        directory.write_image(f"uncertainty/{image_id:05d}_mean.png", mean.float())
        directory.write_image(f"uncertainty/{image_id:05d}_std.png", uncertainty.heat_map(std, vmax))
        directory.write_bytes(f"uncertainty/{image_id:05d}.pt",
                              torch_bytes({"mean": mean.float(), "std": std.float(), "runs": by_image[image_id]}))
        entry: dict[str, Any] = {"runs": len(by_image[image_id]),
                                 "std_rms": float(uncertainty.std_magnitude(std).pow(2).mean().sqrt()),
                                 "psnr_of_mean": None, "ssim_of_mean": None, "coverage_1std": None,
                                 "coverage_2std": None}
        gt_path = directory.raw_path(image_id, None)
        if gt_path.is_file():
            gt = torch.load(gt_path, weights_only=True).float()
            values = scores(mean.float()[None], gt[None])
            entry["psnr_of_mean"] = finite_or_none(float(values["psnr"][0]))
            entry["ssim_of_mean"] = finite_or_none(float(values["ssim"][0]))
            curve = uncertainty.coverage(gt, mean, std, uncertainty.FIGURE_LEVELS)
            entry["coverage_1std"], entry["coverage_2std"] = uncertainty.coverage(gt, mean, std)
            curves.append(curve)
            counts.append(gt.numel())
        summary["images"].setdefault(str(image_id), {})["posterior"] = entry
    runs = min(len(r) for r in by_image.values())
    out: dict[str, Any] = {
        "images": len(maps), "runs": runs, "heat_map_max": vmax,
        **{key: mean_std(finite(summary["images"][str(i)]["posterior"][key] for i in maps))
           for key in ("psnr_of_mean", "ssim_of_mean")},
        "std_relative_error": uncertainty.std_relative_error(runs),
        "coverage_1std": None, "coverage_2std": None,
        "gaussian_1std": uncertainty.gaussian_coverage()[0], "gaussian_2std": uncertainty.gaussian_coverage()[1],
        "calibrated_1std": uncertainty.calibrated_coverage(runs)[0],
        "calibrated_2std": uncertainty.calibrated_coverage(runs)[1]}
    if curves:
        weights = torch.tensor(counts, dtype=torch.float64)
        pooled = (torch.tensor(curves, dtype=torch.float64) * weights[:, None]).sum(0) / weights.sum()
        levels = list(uncertainty.FIGURE_LEVELS)
        out["coverage_1std"], out["coverage_2std"] = (float(pooled[levels.index(k)]) for k in uncertainty.LEVELS)
        directory.write_bytes("uncertainty/calibration.png",
                              png_bytes(calibration_figure(pooled.tolist(), runs)))
    return out


def compute_set_metrics(directory: RunDirectory, records: list[dict[str, Any]], names: Sequence[str],
                        device: torch.device | str) -> dict[str, Any]:
    """FID/KID over every finished sample image against every ground-truth image (None, with one
    warning, when either set is missing)."""
    # run by run, images in id order (the references' order): what KID's per-run chunks need
    ok = sorted((r["run"], r["image_id"]) for r in records if r.get("failed_at_step") is None)
    samples = [directory.sample_path(i, r) for r, i in ok if directory.sample_path(i, r).is_file()]
    references = sorted((directory.root / "inputs").glob("*_gt.png"))
    out: dict[str, Any] = {"num_samples": len(samples), "num_references": len(references),
                           "biased_small_set": min(len(samples), len(references)) < FEW_IMAGES}
    if len(samples) < 2 or len(references) < 2:
        warnings.warn(f"{'/'.join(names)} need at least two saved sample images (save_samples=true) and two "
                      f"ground-truth images; found {len(samples)} and {len(references)}: reported as null",
                      stacklevel=2)
        return {**out, **{n: None for n in names}}
    values = set_metrics(names, _png_batches(samples), _png_batches(references), device=device)
    return {**out, **{n: finite_or_none(v) for n, v in values.items()}}


def _png_batches(paths: Sequence[Path], size: int = SET_BATCH) -> Iterator[torch.Tensor]:
    for first in range(0, len(paths), size):
        yield torch.stack([load_png(p) for p in paths[first:first + size]])
