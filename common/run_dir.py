"""The run directory ``save_dir/name/``: the only code that writes results.

Layout::

    config.yaml                       resolved config
    samples/{id:05d}_run{r:04d}.png   reconstructions
    inputs/{id:05d}_gt.png            ground truth;  inputs/{id:05d}_measurement.png: y resized for viewing
    measurements/{id:05d}.pt          raw y and the operator state (mask, kernel) to rerun on the same data
    records/{id:05d}_run{r:04d}.json  per-sample metrics (what resume and multi-process runs read back)
    trajectory/{id:05d}_run{r:04d}.png  progress strip (rows x0hat, x0y, x_t); .gif with save_traj_video
    metrics.json, eval.md, grid_results.png   built by :meth:`RunDirectory.finish` from the records

Every file is written atomically (temporary file + rename), so a crash never leaves a half-written result
and ``metrics.json`` is always valid JSON.
"""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from common.metrics import HIGHER_IS_BETTER, to_unit


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

    # ------------------------------------------------------------------ writers
    def write_text(self, relative: str, text: str) -> None:
        atomic_write_bytes(self.root / relative, text.encode())

    def write_image(self, relative: str, image: torch.Tensor) -> None:
        atomic_write_bytes(self.root / relative, png_bytes(to_pil(image)))

    def write_inputs(self, image_id: int, gt: torch.Tensor | None, y: torch.Tensor,
                     state: dict[str, torch.Tensor], image_size: tuple[int, int]) -> None:
        """Ground truth, a viewable measurement, and the raw y with the operator state."""
        if gt is not None:
            self.write_image(f"inputs/{image_id:05d}_gt.png", gt)
        self.write_image(f"inputs/{image_id:05d}_measurement.png", view_measurement(y, image_size))
        buffer = io.BytesIO()
        torch.save({"y": y.detach().cpu(), "state": {k: v.detach().cpu() for k, v in state.items()}}, buffer)
        atomic_write_bytes(self.root / "measurements" / f"{image_id:05d}.pt", buffer.getvalue())

    def write_sample(self, image_id: int, run: int, sample: torch.Tensor, record: dict[str, Any],
                     save_image: bool = True) -> None:
        """One reconstruction and its metrics record (the record last: it marks the sample as finished)."""
        if save_image:
            atomic_write_bytes(self.sample_path(image_id, run), png_bytes(to_pil(sample)))
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
    def finish(self, metric_names: Sequence[str], image_names: dict[int, str] | None = None) -> dict[str, Any]:
        """metrics.json, eval.md and grid_results.png from the records on disk; returns the metrics dict."""
        summary = summarize(self.records(), metric_names, image_names or {})
        self.write_text("metrics.json", json.dumps(summary, indent=2, allow_nan=False))
        self.write_text("eval.md", markdown_table(summary, metric_names))
        grid = self.grid()
        if grid is not None:
            self.write_image("grid_results.png", grid)
        return summary

    def grid(self) -> torch.Tensor | None:
        """Columns = images; rows = ground truth, measurement, then one row per run."""
        import numpy as np

        done = sorted(self.finished())
        if not done:
            return None
        ids = sorted({i for i, _ in done})
        runs = sorted({r for _, r in done})

        def load(path: Path) -> torch.Tensor | None:
            if not path.is_file():
                return None
            return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).float() / 127.5 - 1

        tiles: list[torch.Tensor] = []
        rows = [[self.root / "inputs" / f"{i:05d}_gt.png" for i in ids],
                [self.root / "inputs" / f"{i:05d}_measurement.png" for i in ids]]
        rows += [[self.sample_path(i, r) for i in ids] for r in runs]
        shape = None
        for row in rows:
            for path in row:
                tile = load(path)
                shape = shape or (tile.shape if tile is not None else None)
                tiles.append(tile)
        tiles = [t if t is not None else torch.ones(shape) for t in tiles]
        return make_grid(torch.stack(tiles) * 0.5 + 0.5, nrow=len(ids), padding=2, pad_value=1.0) * 2 - 1


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
    the ground truth, what the DAPS tables report) and the residual-best run (smallest ‖A(x̂) − y‖, no oracle).
    Overall: for each metric, mean/std over images of the per-image run-mean, and the means of both bests."""
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
        by_residual = min(ok, key=lambda r: r.get("residual", math.inf), default=None)
        for m in metric_names:
            values = _finite(r.get(m) for r in ok)
            pick = max if HIGHER_IS_BETTER[m] else min
            entry[m] = {**_stats(values), "best_oracle": pick(values) if values else None,
                        "best_residual": by_residual.get(m) if by_residual else None}
        images[str(image_id)] = entry
    overall = {}
    for m in metric_names:
        per_image = [images[k][m] for k in images]
        overall[m] = {**_stats(_finite(e["mean"] for e in per_image)),
                      "best_oracle_mean": _stats(_finite(e["best_oracle"] for e in per_image))["mean"],
                      "best_residual_mean": _stats(_finite(e["best_residual"] for e in per_image))["mean"]}
    return {"summary": overall, "images": images, "failed": failed,
            "num_images": len(images), "num_samples": len(records)}


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{value:.4f}"


def markdown_table(summary: dict[str, Any], metric_names: Sequence[str]) -> str:
    """eval.md: one row per image (mean ± std over runs, oracle best), then the average."""
    head = "| image | name | " + " | ".join(f"{m} mean ± std | {m} best (oracle)" for m in metric_names) + " |"
    sep = "|" + "---|" * (2 + 2 * len(metric_names))
    lines = [head, sep]
    for image_id, entry in summary["images"].items():
        cells = [f"{_fmt(entry[m]['mean'])} ± {_fmt(entry[m]['std'])} | {_fmt(entry[m]['best_oracle'])}"
                 for m in metric_names]
        lines.append(f"| {image_id} | {entry['name']} | " + " | ".join(cells) + " |")
    cells = [f"{_fmt(summary['summary'][m]['mean'])} ± {_fmt(summary['summary'][m]['std'])} | "
             f"{_fmt(summary['summary'][m]['best_oracle_mean'])}" for m in metric_names]
    lines.append("| **all** | | " + " | ".join(cells) + " |")
    if summary["failed"]:
        lines.append("")
        lines.append("Failed (diverged) samples: " + ", ".join(
            f"image {f['image_id']} run {f['run']} at step {f['step']}" for f in summary["failed"]))
    return "\n".join(lines) + "\n"
