"""The run directory ``save_dir/name/``: the only code that writes results.

Layout::

    config.yaml                       resolved config
    protocol.json                     data list and checksums, operator-state source, metric implementations,
                                      package versions (copied into metrics.json)
    samples/{id:05d}_run{r:04d}.png   reconstructions
    inputs/{id:05d}_gt.png            ground truth;  inputs/{id:05d}_measurement.png: y resized for viewing
    measurements/{id:05d}.pt          raw y and the operator state (mask, kernel) to rerun on the same data
    records/{id:05d}_run{r:04d}.json  per-sample metrics (what resume and multi-process runs read back)
    raw/{id:05d}_run{r:04d}.pt        float16 sample (num_runs >= 2: the uncertainty maps); raw/{id:05d}_gt.pt
    trajectory/{id:05d}_run{r:04d}.png  progress strip (rows x0hat, x0y, x_t); .gif with save_traj_video
    uncertainty/{id:05d}_mean.png, _std.png (heat map), {id:05d}.pt (float mean/std); calibration.png
    metrics.json, eval.md, records.csv, grid_results.png   built by :meth:`RunDirectory.finish` from the records

Every file is written atomically (temporary file + rename), so a crash never leaves a half-written result
and ``metrics.json`` is always valid JSON.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from common import uncertainty
from common.metrics import FEW_IMAGES, HIGHER_IS_BETTER, Metrics, set_metrics, to_unit

SET_BATCH = 16  # images per Inception batch for FID/KID


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> 8-bit RGB (NaN shown black)."""
    array = (to_unit(torch.nan_to_num(image.detach().cpu())) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_png(path: Path) -> torch.Tensor:
    """An 8-bit RGB file -> (3, H, W) in [-1, 1]."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB")).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1


def torch_bytes(payload: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def view_measurement(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A measurement shown as an image of ``size``: resized bilinearly; non-image-range data (e.g. Fourier
    magnitudes) is standardised first so it is visible."""
    y = y.detach().float().cpu()
    if y.ndim != 3 or y.shape[0] != 3:
        y = y.reshape(1, *y.shape[-2:]).expand(3, -1, -1) if y.ndim >= 2 else torch.zeros(3, *size)
    if y.abs().max() > 1.5:
        y = ((y - y.mean()) / (y.std() + 1e-8)).clamp(-1.5, 1.5) / 1.5
    return F.interpolate(y[None], size=size, mode="bilinear", align_corners=False)[0]


class RunDirectory:
    """Writes and reads back the results of one experiment (see module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ names
    def sample_path(self, image_id: int, run: int) -> Path:
        return self.root / "samples" / f"{image_id:05d}_run{run:04d}.png"

    def record_path(self, image_id: int, run: int) -> Path:
        return self.root / "records" / f"{image_id:05d}_run{run:04d}.json"

    def raw_path(self, image_id: int, run: int | None) -> Path:
        """The float sample of (image, run); ``run=None``: the ground truth."""
        return self.root / "raw" / (f"{image_id:05d}_gt.pt" if run is None else f"{image_id:05d}_run{run:04d}.pt")

    # ------------------------------------------------------------------ writers
    def write_text(self, relative: str, text: str) -> None:
        atomic_write_bytes(self.root / relative, text.encode())

    def write_image(self, relative: str, image: torch.Tensor) -> None:
        atomic_write_bytes(self.root / relative, png_bytes(to_pil(image)))

    def write_json(self, relative: str, payload: Any) -> None:
        self.write_text(relative, json.dumps(payload, indent=1, allow_nan=False))

    def write_inputs(self, image_id: int, gt: torch.Tensor | None, y: torch.Tensor,
                     state: dict[str, torch.Tensor], image_size: tuple[int, int], raw: bool = False) -> None:
        """Ground truth, a viewable measurement, and the raw y with the operator state (``raw``: also the
        float ground truth, for the uncertainty maps)."""
        if gt is not None:
            self.write_image(f"inputs/{image_id:05d}_gt.png", gt)
            if raw:
                atomic_write_bytes(self.raw_path(image_id, None), torch_bytes(gt.detach().float().cpu()))
        self.write_image(f"inputs/{image_id:05d}_measurement.png", view_measurement(y, image_size))
        payload = {"y": y.detach().cpu(), "state": {k: v.detach().cpu() for k, v in state.items()}}
        atomic_write_bytes(self.root / "measurements" / f"{image_id:05d}.pt", torch_bytes(payload))

    def write_sample(self, image_id: int, run: int, sample: torch.Tensor, record: dict[str, Any],
                     save_image: bool = True, raw: bool = False) -> None:
        """One reconstruction and its metrics record (the record last: it marks the sample as finished);
        ``raw``: also the sample as float16 (for the posterior mean/std maps)."""
        if save_image:
            atomic_write_bytes(self.sample_path(image_id, run), png_bytes(to_pil(sample)))
        if raw:
            atomic_write_bytes(self.raw_path(image_id, run), torch_bytes(sample.detach().cpu().half()))
        payload = {"image_id": image_id, "run": run, **record}
        atomic_write_bytes(self.record_path(image_id, run), json.dumps(payload, indent=1).encode())

    def write_trajectory(self, image_id: int, run: int, frames: dict[str, list[torch.Tensor]],
                         video: bool = False) -> None:
        """Progress strip: one row per quantity (x0hat, x0y, x_t), one column per recorded step."""
        rows = [torch.stack(frames[k]) for k in ("x0hat", "x0y", "x_t") if frames.get(k)]
        if not rows:
            return
        columns = rows[0].shape[0]
        strip = make_grid(to_unit(torch.nan_to_num(torch.cat(rows))), nrow=columns, padding=2, pad_value=1.0)
        atomic_write_bytes(self.root / "trajectory" / f"{image_id:05d}_run{run:04d}.png",
                           png_bytes(to_pil(strip * 2 - 1)))
        if video:
            pictures = [to_pil(make_grid(torch.stack([r[c] for r in rows]) * 0.5 + 0.5, nrow=len(rows)) * 2 - 1)
                        for c in range(columns)]
            buffer = io.BytesIO()
            pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=200, loop=0)
            atomic_write_bytes(self.root / "trajectory" / f"{image_id:05d}_run{run:04d}.gif", buffer.getvalue())

    # ------------------------------------------------------------------ readers
    def finished(self) -> set[tuple[int, int]]:
        """(image_id, run) pairs whose record is on disk."""
        done = set()
        for path in (self.root / "records").glob("*_run*.json"):
            image, run = path.stem.split("_run")
            done.add((int(image), int(run)))
        return done

    def records(self) -> list[dict[str, Any]]:
        paths = sorted((self.root / "records").glob("*_run*.json"))
        return [json.loads(p.read_text()) for p in paths]

    # ------------------------------------------------------------------ summary
    def finish(self, metric_names: Sequence[str], image_names: dict[int, str] | None = None, *,
               set_metric_names: Sequence[str] = (), device: torch.device | str = "cpu") -> dict[str, Any]:
        """metrics.json, eval.md, records.csv, the uncertainty maps and grid_results.png from the files on
        disk; returns the metrics dict. ``set_metric_names`` (fid, kid) are computed over all samples."""
        records = self.records()
        summary = summarize(records, metric_names, image_names or {})
        summary["uncertainty"] = self.write_uncertainty(records, summary)
        if set_metric_names:
            summary["set_metrics"] = self.set_metrics(records, set_metric_names, device)
        protocol = self.root / "protocol.json"
        if protocol.is_file():
            summary["protocol"] = json.loads(protocol.read_text())
        self.write_text("metrics.json", json.dumps(summary, indent=2, allow_nan=False))
        self.write_text("eval.md", markdown_table(summary, metric_names))
        self.write_text("records.csv", records_csv(records, metric_names, summary))
        grid = self.grid()
        if grid is not None:
            self.write_image("grid_results.png", grid)
        return summary

    def _runs_by_image(self, records: list[dict[str, Any]]) -> dict[int, list[int]]:
        """Finished, non-diverged runs per image whose float sample is on disk."""
        runs: dict[int, list[int]] = {}
        for rec in records:
            if rec.get("failed_at_step") is None and self.raw_path(rec["image_id"], rec["run"]).is_file():
                runs.setdefault(rec["image_id"], []).append(rec["run"])
        return {i: sorted(r) for i, r in sorted(runs.items()) if len(r) >= 2}

    def write_uncertainty(self, records: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any] | None:
        """Per image with ≥ 2 runs: posterior mean and std (images, heat map, float .pt), PSNR of the mean
        and coverage (see :mod:`common.uncertainty`); adds ``posterior`` to each image of ``summary`` and
        returns the pooled numbers (None when no image has two runs)."""
        by_image = self._runs_by_image(records)
        if not by_image:
            return None
        maps = {}
        for image_id, runs in by_image.items():
            samples = torch.stack([torch.load(self.raw_path(image_id, r), weights_only=True).float() for r in runs])
            maps[image_id] = uncertainty.moments(samples)
        vmax = max(float(uncertainty.std_magnitude(std).max()) for _, std in maps.values())
        psnr = Metrics(["psnr"])
        curves, counts = [], []
        for image_id, (mean, std) in maps.items():
            self.write_image(f"uncertainty/{image_id:05d}_mean.png", mean.float())
            self.write_image(f"uncertainty/{image_id:05d}_std.png", uncertainty.heat_map(std, vmax))
            atomic_write_bytes(self.root / "uncertainty" / f"{image_id:05d}.pt",
                               torch_bytes({"mean": mean.float(), "std": std.float(), "runs": by_image[image_id]}))
            entry: dict[str, Any] = {"runs": len(by_image[image_id]),
                                     "std_rms": float(uncertainty.std_magnitude(std).pow(2).mean().sqrt()),
                                     "psnr_of_mean": None, "coverage_1std": None, "coverage_2std": None}
            gt_path = self.raw_path(image_id, None)
            if gt_path.is_file():
                gt = torch.load(gt_path, weights_only=True).float()
                value = psnr(mean.float()[None], gt[None])["psnr"]
                entry["psnr_of_mean"] = _clean(float(value[0]))
                curve = uncertainty.coverage(gt, mean, std, uncertainty.FIGURE_LEVELS)
                entry["coverage_1std"], entry["coverage_2std"] = uncertainty.coverage(gt, mean, std)
                curves.append(curve)
                counts.append(gt.numel())
            summary["images"].setdefault(str(image_id), {})["posterior"] = entry
        runs = min(len(r) for r in by_image.values())
        out: dict[str, Any] = {
            "images": len(maps), "runs": runs, "heat_map_max": vmax,
            "psnr_of_mean": _stats(_finite(summary["images"][str(i)]["posterior"]["psnr_of_mean"] for i in maps)),
            "coverage_1std": None, "coverage_2std": None,
            "gaussian_1std": uncertainty.gaussian_coverage()[0], "gaussian_2std": uncertainty.gaussian_coverage()[1],
            "calibrated_1std": uncertainty.calibrated_coverage(runs)[0],
            "calibrated_2std": uncertainty.calibrated_coverage(runs)[1]}
        if curves:
            weights = torch.tensor(counts, dtype=torch.float64)
            pooled = (torch.tensor(curves, dtype=torch.float64) * weights[:, None]).sum(0) / weights.sum()
            levels = list(uncertainty.FIGURE_LEVELS)
            out["coverage_1std"], out["coverage_2std"] = (float(pooled[levels.index(k)]) for k in uncertainty.LEVELS)
            atomic_write_bytes(self.root / "uncertainty" / "calibration.png",
                               png_bytes(uncertainty.calibration_figure(pooled.tolist(), runs)))
        return out

    def set_metrics(self, records: list[dict[str, Any]], names: Sequence[str],
                    device: torch.device | str) -> dict[str, Any]:
        """FID/KID over every finished sample image against every ground-truth image (None, with one
        warning, when either set is missing)."""
        # run by run, images in id order (the references' order): what KID's per-run chunks need
        ok = sorted((r["run"], r["image_id"]) for r in records if r.get("failed_at_step") is None)
        samples = [self.sample_path(i, r) for r, i in ok if self.sample_path(i, r).is_file()]
        references = sorted((self.root / "inputs").glob("*_gt.png"))
        out: dict[str, Any] = {"num_samples": len(samples), "num_references": len(references),
                               "biased_small_set": min(len(samples), len(references)) < FEW_IMAGES}
        if len(samples) < 2 or len(references) < 2:
            warnings.warn(f"{'/'.join(names)} need at least two saved sample images (save_samples=true) and two "
                          f"ground-truth images; found {len(samples)} and {len(references)}: reported as null",
                          stacklevel=2)
            return {**out, **{n: None for n in names}}
        values = set_metrics(names, _png_batches(samples), _png_batches(references), device=device)
        return {**out, **{n: _clean(v) for n, v in values.items()}}

    def grid(self) -> torch.Tensor | None:
        """Columns = images; rows = ground truth (when known), measurement, one row per run, then the
        posterior mean and the std heat map (when computed)."""
        done = sorted(self.finished())
        if not done:
            return None
        ids = sorted({i for i, _ in done})
        runs = sorted({r for _, r in done})
        rows = [[self.root / "inputs" / f"{i:05d}_gt.png" for i in ids],
                [self.root / "inputs" / f"{i:05d}_measurement.png" for i in ids]]
        rows += [[self.sample_path(i, r) for i in ids] for r in runs]
        rows += [[self.root / "uncertainty" / f"{i:05d}_{kind}.png" for i in ids] for kind in ("mean", "std")]
        rows = [row for row in rows if any(p.is_file() for p in row)]
        tiles = [load_png(p) if p.is_file() else None for row in rows for p in row]
        shape = next((t.shape for t in tiles if t is not None), None)
        if shape is None:
            return None
        tiles = [t if t is not None and t.shape == shape else torch.ones(shape) for t in tiles]
        return make_grid(torch.stack(tiles) * 0.5 + 0.5, nrow=len(ids), padding=2, pad_value=1.0) * 2 - 1


def _png_batches(paths: Sequence[Path], size: int = SET_BATCH) -> Iterator[torch.Tensor]:
    for first in range(0, len(paths), size):
        yield torch.stack([load_png(p) for p in paths[first:first + size]])


def _clean(value: float | None) -> float | None:
    """None for None/NaN/inf (metrics.json stays valid JSON)."""
    return value if value is not None and math.isfinite(value) else None


def _finite(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _stats(values: list[float]) -> dict[str, float | None]:
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
    ``residual``: mean/std over images of the per-image run-mean residual."""
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
                                 "runs": [{k: r.get(k) for k in ("run", *metric_names, "residual", "failed_at_step")}
                                          for r in recs]}
        residuals = _finite(r.get("residual") for r in ok)
        by_residual = min((r for r in ok if _finite([r.get("residual")])), key=lambda r: r["residual"], default=None)
        entry["residual"] = {**_stats(residuals), "min": min(residuals) if residuals else None,
                             "best_run": by_residual["run"] if by_residual else None}
        for m in metric_names:
            values = _finite(r.get(m) for r in ok)
            pick = max if HIGHER_IS_BETTER[m] else min
            entry[m] = {**_stats(values), "best_oracle": pick(values) if values else None,
                        "best_residual": _clean(by_residual.get(m)) if by_residual else None}
        images[str(image_id)] = entry
    overall = {}
    for m in metric_names:
        per_image = [images[k][m] for k in images]
        overall[m] = {**_stats(_finite(e["mean"] for e in per_image)),
                      "best_oracle_mean": _stats(_finite(e["best_oracle"] for e in per_image))["mean"],
                      "best_residual_mean": _stats(_finite(e["best_residual"] for e in per_image))["mean"]}
    return {"summary": overall, "residual": _stats(_finite(images[k]["residual"]["mean"] for k in images)),
            "images": images, "failed": failed, "num_images": len(images), "num_samples": len(records)}


def records_csv(records: list[dict[str, Any]], metric_names: Sequence[str], summary: dict[str, Any]) -> str:
    """records.csv: one row per (image, run) with every metric, the residual, and which runs the two
    best-of-runs selections chose (oracle by the first metric; residual)."""
    columns = ["image_id", "name", "run", *metric_names, "residual", "failed_at_step", "best_residual",
               *(f"best_oracle_{m}" for m in metric_names)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for rec in sorted(records, key=lambda r: (r["image_id"], r["run"])):
        entry = summary["images"].get(str(rec["image_id"]), {})
        row = {k: rec.get(k) for k in ("image_id", "name", "run", *metric_names, "residual", "failed_at_step")}
        row["name"] = entry.get("name", row["name"])
        row["best_residual"] = int(entry.get("residual", {}).get("best_run") == rec["run"])
        for m in metric_names:
            best = entry.get(m, {}).get("best_oracle")
            row[f"best_oracle_{m}"] = int(best is not None and rec.get(m) == best)
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{value:.4f}"


def markdown_table(summary: dict[str, Any], metric_names: Sequence[str]) -> str:
    """eval.md: one row per image (mean ± std over runs, oracle and residual-selected best, residual), the
    average, then the posterior uncertainty, set metrics (FID/KID) and what produced the numbers."""
    head = "| image | name | " + "".join(f"{m} mean ± std | {m} best (oracle) | {m} best (residual) | "
                                         for m in metric_names) + "residual mean ± std |"
    sep = "|" + "---|" * (3 + 3 * len(metric_names))
    lines = [head, sep]
    for image_id, entry in summary["images"].items():
        cells = [f"{_fmt(entry[m]['mean'])} ± {_fmt(entry[m]['std'])} | {_fmt(entry[m]['best_oracle'])} | "
                 f"{_fmt(entry[m]['best_residual'])}" for m in metric_names]
        residual = entry["residual"]
        lines.append(f"| {image_id} | {entry['name']} | " + "".join(c + " | " for c in cells)
                     + f"{_fmt(residual['mean'])} ± {_fmt(residual['std'])} |")
    cells = [f"{_fmt(summary['summary'][m]['mean'])} ± {_fmt(summary['summary'][m]['std'])} | "
             f"{_fmt(summary['summary'][m]['best_oracle_mean'])} | {_fmt(summary['summary'][m]['best_residual_mean'])}"
             for m in metric_names]
    lines.append("| **all** | | " + "".join(c + " | " for c in cells)
                 + f"{_fmt(summary['residual']['mean'])} ± {_fmt(summary['residual']['std'])} |")
    lines += ["", "best (oracle): each image's best run by that metric against the ground truth (what the DAPS "
              "tables report). best (residual): the run with the smallest ‖A(x̂) − y‖, chosen without ground "
              "truth. residual: ‖A(x̂) − y‖." if metric_names else
              "residual: ‖A(x̂) − y‖ (no ground truth, so no image metrics)."]
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
             + f"Std heat maps (grid, uncertainty/): black 0 → white {u['heat_map_max']:.4f} (RMS over channels)."]
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
