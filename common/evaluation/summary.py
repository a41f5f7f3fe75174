"""Summaries of a run directory's records: statistics over runs and images, ``records.csv``, ``eval.md``.

Pure functions of the per-sample records (``records/*.json``, see :mod:`common.results.run_dir`); no files, no device.
Per image i with runs r = 1..n and metric m:  mean_i = (1/n) Σ_r m_{i,r},
std_i = sqrt((1/n) Σ_r (m_{i,r} − mean_i)²) (population std); over images the same statistics of the
per-image means.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterable, Sequence

import torch

from common.evaluation import uncertainty
from common.evaluation.metrics import FEW_IMAGES, HIGHER_IS_BETTER, METRIC_DESCRIPTIONS, RESIDUAL_RATIO_NOTE

#: images listed one per row where a person reads the table (terminal, grid, the page's first screen); the rest are
#: in eval.md, records.csv and the page's per-image cards
SCREENFUL = 16


def finite_or_none(value: float | None) -> float | None:
    """None for None/NaN/inf (metrics.json stays valid JSON)."""
    return value if value is not None and math.isfinite(value) else None


def finite(values: Iterable[float | None]) -> list[float]:
    """The finite values (None, NaN and ±inf dropped)."""
    return [v for v in values if v is not None and math.isfinite(v)]


def mean_std(values: Sequence[float]) -> dict[str, float | None]:
    """{"mean", "std"} of finite values: the mean and the population std (1/n), in float64 (0.0 for one
    value; None for none). The one mean/std of the project's summaries."""
    if not values:
        return {"mean": None, "std": None}
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std(unbiased=False)) if len(values) > 1 else 0.0}


def summarize(records: list[dict[str, Any]], metric_names: Sequence[str], image_names: dict[int, str]
              ) -> dict[str, Any]:
    """Per image: every run's metrics, their mean/std over runs, the oracle best run (best metric against
    the ground truth, what the DAPS tables report) and the residual-best run (smallest ‖A(x̂) − y‖, no oracle),
    and the residual's mean/std/min over runs.
    Overall: for each metric, mean/std over images of the per-image run-mean, and the means of both bests;
    ``residual`` and ``residual_ratio`` (‖A(x̂) − y‖ / (σ√m), see :func:`common.evaluation.metrics.residual_ratio`):
    mean/std over images of the per-image run-means; ``cost``: denoiser evaluations (``model_calls``) and backward
    passes (``model_backward``) per sample, averaged over the samples that recorded them."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for rec in records:
        by_image.setdefault(rec["image_id"], []).append(rec)
    images: dict[str, Any] = {}
    failed = []
    for image_id, recs in sorted(by_image.items()):
        recs.sort(key=lambda r: r["run"])
        ok = [r for r in recs if r.get("failed_at_step") is None]
        failed += [{"image_id": image_id, "run": r["run"], "step": r["failed_at_step"]}
                   for r in recs if r.get("failed_at_step") is not None]
        entry: dict[str, Any] = {"name": image_names.get(image_id, recs[0].get("name")),
                                 "runs": [{k: r.get(k) for k in ("run", *metric_names, "residual", "residual_ratio",
                                                                 "failed_at_step")}
                                          for r in recs]}
        residuals = finite(r.get("residual") for r in ok)
        by_residual = min((r for r in ok if finite([r.get("residual")])), key=lambda r: r["residual"], default=None)
        entry["residual"] = {**mean_std(residuals), "min": min(residuals) if residuals else None,
                             "best_run": by_residual["run"] if by_residual else None}
        entry["residual_ratio"] = mean_std(finite(r.get("residual_ratio") for r in ok))
        for m in metric_names:
            values = finite(r.get(m) for r in ok)
            pick = max if HIGHER_IS_BETTER[m] else min
            entry[m] = {**mean_std(values), "best_oracle": pick(values) if values else None,
                        "best_residual": finite_or_none(by_residual.get(m)) if by_residual else None}
        images[str(image_id)] = entry
    overall = {}
    for m in metric_names:
        per_image = [images[k][m] for k in images]
        overall[m] = {**mean_std(finite(e["mean"] for e in per_image)),
                      "best_oracle_mean": mean_std(finite(e["best_oracle"] for e in per_image))["mean"],
                      "best_residual_mean": mean_std(finite(e["best_residual"] for e in per_image))["mean"]}
    cost = {key: mean_std(finite(r.get(key) for r in records))["mean"] for key in ("model_calls", "model_backward")}
    return {"summary": overall, "residual": mean_std(finite(images[k]["residual"]["mean"] for k in images)),
            "residual_ratio": mean_std(finite(images[k]["residual_ratio"]["mean"] for k in images)), "cost": cost,
            "images": images, "failed": failed, "num_images": len(images), "num_samples": len(records)}


def records_csv(records: list[dict[str, Any]], metric_names: Sequence[str], summary: dict[str, Any]) -> str:
    """records.csv: one row per (image, run) with every metric, the residual, and which runs the two
    best-of-runs selections chose (oracle by the first metric; residual)."""
    columns = ["image_id", "name", "run", *metric_names, "residual", "residual_ratio", "failed_at_step",
               "best_residual",
               *(f"best_oracle_{m}" for m in metric_names)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for rec in sorted(records, key=lambda r: (r["image_id"], r["run"])):
        entry = summary["images"].get(str(rec["image_id"]), {})
        row = {k: rec.get(k) for k in ("image_id", "name", "run", *metric_names, "residual", "residual_ratio",
                                       "failed_at_step")}
        row["name"] = entry.get("name", row["name"])
        row["best_residual"] = int(entry.get("residual", {}).get("best_run") == rec["run"])
        for m in metric_names:
            best = entry.get(m, {}).get("best_oracle")
            row[f"best_oracle_{m}"] = int(best is not None and rec.get(m) == best)
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


_NONE = {"mean": None, "std": None}


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{value:.4f}"


def _spread(stats: dict[str, Any], spread: bool) -> str:
    """``mean ± std`` when the std is over more than one value, else the mean alone (a ``± 0.0000`` says nothing)."""
    return f"{_fmt(stats['mean'])} ± {_fmt(stats['std'])}" if spread else _fmt(stats["mean"])


def markdown_table(summary: dict[str, Any], metric_names: Sequence[str], max_images: int | None = None) -> str:
    """eval.md: one row per image (mean ± std over runs, oracle and residual-selected best, residual and normalised
    residual), the average, then the posterior uncertainty, set metrics (FID/KID) and what produced the numbers.
    ``max_images`` (the terminal's copy: :data:`SCREENFUL`) lists only the first images, saying how many are left
    out; the average is always over every image.

    Columns that would say nothing are left out: with one run per image a row shows each run's value (no
    ± std, no best-of-runs columns, which equal it); with one image the average has no ± std; a metric without
    a single value (LPIPS without its weights) is named under the table instead of a column of nulls."""
    images = summary["images"]
    shown = [m for m in metric_names if any(entry[m]["mean"] is not None for entry in images.values())]
    runs = max((len(entry["runs"]) for entry in images.values()), default=0) > 1
    many = len(images) > 1
    head = ["image", "name"]
    for m in shown:
        head += [f"{m} mean ± std", f"{m} best (oracle)", f"{m} best (residual)"] if runs else [m]
    head += ["residual mean ± std", "residual/(σ√m) mean ± std"] if runs else ["residual", "residual/(σ√m)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    listed = list(images.items())[:max_images]
    for image_id, entry in listed:
        cells = [str(image_id), str(entry["name"])]
        for m in shown:
            cells += ([_spread(entry[m], True), _fmt(entry[m]["best_oracle"]), _fmt(entry[m]["best_residual"])]
                      if runs else [_fmt(entry[m]["mean"])])
        cells += [_spread(entry["residual"], runs), _spread(entry.get("residual_ratio") or _NONE, runs)]
        lines.append("| " + " | ".join(cells) + " |")
    if len(listed) < len(images):
        lines.append(f"| … {len(images) - len(listed)} more images (eval.md, records.csv) |" + " |" * (len(head) - 1))
    cells = ["**all**", ""]
    for m in shown:
        overall = summary["summary"][m]
        cells += ([_spread(overall, many), _fmt(overall["best_oracle_mean"]), _fmt(overall["best_residual_mean"])]
                  if runs else [_spread(overall, many)])
    cells += [_spread(summary["residual"], many), _spread(summary.get("residual_ratio") or _NONE, many)]
    lines.append("| " + " | ".join(cells) + " |")
    if not metric_names:
        legend = "residual: ‖A(x̂) − y‖ (no ground truth, so no image metrics)."
    elif runs and shown:
        legend = ("best (oracle): each image's best run by that metric against the ground truth (what the DAPS "
                  "tables report). best (residual): the run with the smallest ‖A(x̂) − y‖, chosen without ground "
                  "truth. residual: ‖A(x̂) − y‖.")
    else:
        legend = "residual: ‖A(x̂) − y‖."
    lines += ["", legend, f"residual/(σ√m): {RESIDUAL_RATIO_NOTE}; null without Gaussian noise."]
    lines += [f"{m}: {METRIC_DESCRIPTIONS[m]}." for m in shown if m in METRIC_DESCRIPTIONS]
    lines += [f"{m}: no value for any sample (null in metrics.json; for LPIPS: `bash download.sh lpips`)."
              for m in metric_names if m not in shown]
    if summary["failed"]:
        lines.append("")
        lines.append("Failed (diverged) samples: " + ", ".join(
            f"image {f['image_id']} run {f['run']} at step {f['step']}" for f in summary["failed"]))
    lines += _uncertainty_lines(summary.get("uncertainty"))
    lines += _set_metric_lines(summary.get("set_metrics"))
    lines += _provenance_lines(summary.get("protocol"))
    return "\n".join(lines) + "\n"


def _uncertainty_lines(u: dict[str, Any] | None) -> list[str]:
    if not u:
        return []
    psnr = u["psnr_of_mean"]
    lines = ["", f"## Posterior uncertainty ({u['images']} image(s), at least {u['runs']} runs each)", "",
             (f"Posterior mean PSNR: {_fmt(psnr['mean'])} ± {_fmt(psnr['std'])}. " if psnr["mean"] is not None else "")
             + f"Std heat maps (grid, uncertainty/): black 0 → white {u['heat_map_max']:.4f} (RMS over channels); "
             f"each rests on {u['runs']} runs, so its per-pixel values carry a relative sampling error of about "
             f"1/√(2(n − 1)) = {uncertainty.std_relative_error(u['runs']):.2f}."]
    if u["coverage_1std"] is not None:
        lines += ["", "| pixels with abs(x − mean) within | observed | exact sampler, n runs | Gaussian |",
                  "|---|---|---|---|"]
        for k in (1, 2):
            lines.append(f"| {k} std | {u[f'coverage_{k}std']:.3f} | {u[f'calibrated_{k}std']:.3f} | "
                         f"{u[f'gaussian_{k}std']:.3f} |")
        lines.append("")
        lines.append("Below the exact-sampler column: over-confident (too little spread); above: under-confident. "
                     "Figure: uncertainty/calibration.png.")
    return lines


def _set_metric_lines(values: dict[str, Any] | None) -> list[str]:
    if not values:
        return []
    names = [k for k in ("fid", "kid") if k in values]
    line = ", ".join(f"{n.upper()} {_fmt(values[n])}" for n in names)
    lines = ["", f"Set metrics over {values['num_samples']} samples against {values['num_references']} "
             f"ground-truth images: {line}."]
    if values["biased_small_set"]:
        lines.append(f"Warning: FID/KID on fewer than ~{FEW_IMAGES} images are biased; compare only runs of the "
                     f"same size.")
    if any(values[n] is None for n in names):
        lines.append("null: the Inception weights or the saved images are missing (`bash download.sh fid`).")
    return lines


def _provenance_lines(protocol: dict[str, Any] | None) -> list[str]:
    if not protocol:
        return []
    data = protocol.get("data", {})
    lines = ["", "## Provenance", ""]
    if data.get("dataset") == "image":
        check = (f"SHA-256 verified against {data['list_file']} (list {data['id_list']})" if data.get("verified")
                 else "not verified (no checksum list)")
        lines.append(f"Images: {data.get('root')}, {check}.")
    elif data.get("dataset") == "measurements":
        lines.append(f"Measurements: {data.get('root')} (no ground truth).")
    lines.append(f"Operator state: {protocol.get('operator_state')}.")
    lpips = (protocol.get("metrics") or {}).get("lpips")
    if lpips:
        lines.append(f"LPIPS: {lpips['implementation']}, backbone {lpips['backbone']}.")
    env = protocol.get("environment") or {}
    packages = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v)
    if packages:
        lines.append(f"Python {env.get('python')}; {packages}.")
    return lines
