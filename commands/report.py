"""Compare samplers across run folders:
``python -m commands.report FOLDERS [--stat mean] [--papers [CSV]] [--csv t.csv] [--md t.md] [--html page.html]
[--png comparison.png] [--crop auto|none|X,Y,SIZE] [--wandb]``.

Every folder under the given paths (recursively, nested run folders included) that holds a ``metrics.json`` and the
``config.yaml`` beside it is one row, one sampler configuration, headed ``<sampler config name> (<method>)``
(``demo (DAPS)``); what was found and what was skipped, with the reason, is listed. The columns
(:mod:`common.evaluation.comparison`, the same as each run's W&B summary): for each metric the mean over images of
one per-image value chosen by ``--stat`` (:data:`~common.evaluation.comparison.STATISTICS`; default the mean over the
image's runs, which does not flatter samplers with more spread as the oracle best does), ± the std over images only
with ≥ 2 images; the PSNR/SSIM of the posterior mean (≥ 2 runs); the 1σ coverage against an exact sampler's with
the same runs; the normalised residual ‖A(x̂) − y‖ / (σ√m) (≈ 1 fits the noise, ≪ 1 overfits it); model calls
(forward + backward) and wall time per sample; diverged samples. The best value of each column is marked (bold).
Settings that differ between rows (dataset, task, model, images, runs, sampler steps, seed) get a column each; the
others are stated once above the table.

``--papers`` puts the published numbers (``commands/paper_numbers.csv``, or another CSV with the same columns)
of the same method below a group of our rows only when the protocols match (:func:`paper_mismatch`): the
papers' test list verified by checksum (``protocol.json``), the same number of images, the task's published
settings (operator block as in ``configs/task/``) and noise level σ_y, and a trained network of the paper's
kind (a toy prior such as the demo's Gaussian is never compared with a paper). A row without a match says why.
Published rows keep the papers' own statistic and say which (:func:`paper_statistic`).

Markdown goes to stdout (and ``--md``), CSV to ``--csv``; ``--html`` writes one page: the table, then per image
one row (ground truth | y | each sampler's sample, posterior mean and std on one shared colour scale, and a zoomed
crop where the samplers differ most, or as ``--crop`` says), its pictures in ``<page>_files/``; ``--png`` writes the
same as one labelled picture (table and the first :data:`PNG_IMAGES` images); ``--wandb`` logs that picture to W&B.
"""
from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

import common.config.resolvers  # noqa: F401  (${box_side_range:…} of the inpainting yaml)
from common.evaluation import uncertainty
from common.evaluation.comparison import STATISTICS, badness, comparison_values
from common.evaluation.figures import ColourBar, Tile, colour_bar_image, labelled_grid, stack, table_image
from common.evaluation.metrics import METRIC_NAMES, RESIDUAL_RATIO_NOTE, SET_METRICS
from common.evaluation.report_page import METHOD_NAMES, STYLE, describe, final_status, sampler_label
from common.evaluation.summary import SCREENFUL
from common.results.run_dir import png_bytes, to_pil

REPO = Path(__file__).resolve().parents[1]
PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.csv")
TASK_CONFIGS = REPO / "configs" / "task"
#: the papers' dataset -> the image list (configs/data/<name>.sha256) of their test set
PAPER_LISTS = {"ffhq": "test-ffhq", "imagenet": "test-imagenet"}
#: the papers' "space" column -> the model kinds (registry names) that are such a network
PAPER_MODELS = {"pixel": ("ddpm",), "latent": ("ldm",)}
#: operator keys that say where a state comes from, not what the task is
STATE_KEYS = ("state", "shared_state")
#: what a row is: shown as columns only where it differs between our rows, else stated once above the table
CONTEXT = {"dataset": "dataset", "task": "task", "model": "model", "images": "images", "runs": "runs",
           "steps": "sampler steps", "seed": "seed"}
#: images of the comparison PNG (the page shows a screenful, each run's own page every image)
PNG_IMAGES = 4
#: the table's number columns: key -> (heading, decimals)
NUMBERS = {"psnr_of_mean": ("PSNR of mean", 2), "ssim_of_mean": ("SSIM of mean", 3),
           "coverage_1std": ("1σ coverage", 3), "residual_ratio": ("residual / σ√m", 2),
           "model_calls": ("model calls / sample", 0), "wall_s_per_sample": ("wall s / sample", 2),
           "diverged": ("diverged", 0)}
METRIC_HEADINGS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "lpips_alex": "LPIPS-A", "lpips_vgg": "LPIPS-V",
                   "fid": "FID", "kid": "KID"}


def find_runs(roots: Iterable[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(run folders, skipped folders with the reason) under ``roots``, recursively: a run folder holds
    ``metrics.json`` and ``config.yaml`` (folders inside it are searched too: a sweep placed in a run folder);
    skipped are hidden folders (.submitit) and ``<name>.old-<time>`` folders moved aside by ``overwrite=true`` that
    hold results, folders with a config.yaml but no metrics.json (unfinished) and the reverse."""
    found, skipped = set(), {}
    for root in map(Path, roots):
        if not root.exists():
            raise ValueError(f"{root} does not exist; give run directories or folders that contain them")
        for folder in sorted({p.parent for name in ("metrics.json", "config.yaml") for p in root.rglob(name)}
                             | ({root} if (root / "metrics.json").is_file() else set())):
            parts = folder.relative_to(root).parts
            aside = next((p for p in parts if p.startswith(".") or ".old-" in p), None)
            if aside is not None:
                if (folder / "metrics.json").is_file():
                    skipped[folder] = (f"inside {aside}, a hidden folder" if aside.startswith(".")
                                       else f"inside {aside}, a run moved aside by overwrite=true")
            elif not (folder / "config.yaml").is_file():
                skipped[folder] = "metrics.json but no config.yaml: cannot tell which task and model it ran"
            elif not (folder / "metrics.json").is_file():
                skipped[folder] = "config.yaml but no metrics.json: not finished (or stopped before its first batch)"
            else:
                found.add(folder)
    return sorted(found), sorted(skipped.items())


def _steps(block: Any, prefix: str = "") -> list[str]:
    """'key=value' for every setting named like a step count in the sampler block (nested dicts included)."""
    if not isinstance(block, Mapping):
        return []
    out = []
    for key, value in block.items():
        if isinstance(value, Mapping):
            out += _steps(value, f"{prefix}{key}.")
        elif "steps" in str(key) and isinstance(value, int):
            out.append(f"{prefix}{key}={value}")
    return out


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_row(run_dir: Path, stat: str = "mean") -> dict[str, Any]:
    """One table row: what ran (:func:`~common.evaluation.report_page.describe`, the sampler's ``label``), the
    settings that may differ between rows, the comparison columns
    (:func:`~common.evaluation.comparison.comparison_values` with ``stat``), the last invocation's ``status``, and
    what the paper comparison and the image rows need (``_config``, ``_protocol``, ``_summary``)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    provenance = _read_json(run_dir / "provenance.json")
    protocol = metrics.get("protocol") or {}
    walls = [i["wall_s"] for i in provenance.get("invocations", []) if isinstance(i.get("wall_s"), (int, float))]
    row: dict[str, Any] = {
        **describe(config), "label": sampler_label(config, provenance), "source": str(run_dir),
        "images": metrics.get("num_images"), "runs": protocol.get("num_runs", config.get("num_runs")),
        "seed": protocol.get("seed", config.get("seed")), "steps": ", ".join(_steps(config.get("sampler"))) or None,
        "status": final_status(provenance), **comparison_values(metrics, sum(walls) if walls else None, stat),
        "_config": config, "_protocol": protocol, "_summary": metrics}
    for metric in SET_METRICS:  # one value over all samples (no per-image statistic)
        value = (metrics.get("set_metrics") or {}).get(metric)
        if isinstance(value, (int, float)):
            row[f"{metric}_mean"], row[f"{metric}_std"] = float(value), None
    return row


def _float(text: str | None) -> float | None:
    return float(text) if text and text.strip() else None


def paper_statistic(paper: Mapping[str, str]) -> str:
    """The statistic a published row reports, as the papers state it: phase retrieval the best of 4 runs against
    the ground truth, every other task one sample per image; the mean over the test images either way."""
    return "oracle best of 4 runs" if paper["task"] == "phase_retrieval" else "one sample per image"


def published_operator(task: str, group: str, resolution: int) -> dict[str, Any] | None:
    """The operator block of ``configs/task/<task>.yaml`` for ``group``, resolved at the run's data
    ``resolution`` (settings that follow the image size, e.g. the inpainting box, take their value there;
    None when there is no such block)."""
    path = TASK_CONFIGS / f"{task}.yaml"
    if not path.is_file():
        return None
    composed = OmegaConf.merge({"data": {"resolution": resolution}}, {"task": OmegaConf.load(path)})
    return OmegaConf.to_container(composed.task, resolve=True).get(group, {}).get("operator") or None


def paper_mismatch(row: Mapping[str, Any], paper: Mapping[str, str]) -> str | None:
    """Why our ``row`` may not be printed beside the published ``paper`` row (None: the protocols match).

    Checked: the method, task and dataset; a trained network of the paper's kind (never a toy prior); the
    paper's test list named and verified by checksum in protocol.json; the number of images; the noise level;
    every task setting of the published configuration (``configs/task/<task>.yaml``; the resolution where it
    follows the data)."""
    config, protocol = row["_config"], row["_protocol"]
    if (METHOD_NAMES.get(row["sampler"]), row["task"]) != (paper["method"], paper["task"]):
        return "another method or task"
    model = str((config.get("model") or {}).get("name"))
    if model not in PAPER_MODELS.get(paper["space"], ()):
        return f"model {model!r} is not a {paper['space']} diffusion network as in the paper"
    data = protocol.get("data") or {}
    expected = PAPER_LISTS.get(paper["dataset"])
    if data.get("id_list") != expected or not data.get("verified"):
        return (f"the images are not the paper's {paper['dataset']} test list verified by checksum (need "
                f"data.id_list={expected} with configs/data/{expected}.sha256; got id_list={data.get('id_list')}, "
                f"verified={bool(data.get('verified'))})")
    if paper.get("images") and row["images"] != int(paper["images"]):
        return f"{row['images']} images, the paper used {paper['images']}"
    operator = ((config.get("task") or {}).get(row["task_group"]) or {}).get("operator") or {}
    sigma_y = _float(paper.get("sigma_y"))
    if sigma_y is not None and not math.isclose(float(operator.get("sigma", math.nan)), sigma_y):
        return f"noise sigma={operator.get('sigma')}, the paper used {sigma_y}"
    published = published_operator(row["task"], row["task_group"], (config.get("data") or {}).get("resolution", 256))
    if published is None:
        return f"no published configuration configs/task/{row['task']}.yaml for group {row['task_group']}"
    for key, value in published.items():
        if key in STATE_KEYS or key == "resolution":  # the resolution follows the data
            continue
        if operator.get(key) != value:
            return f"task setting {key}={operator.get(key)!r}, the published configuration has {value!r}"
    return None


def paper_rows(row: Mapping[str, Any], table: Sequence[Mapping[str, str]]) -> tuple[list[dict[str, Any]], str | None]:
    """(published rows whose protocol matches our ``row``, why none matched when the method has some)."""
    out, reasons = [], []
    for paper in table:
        if (paper["method"], paper["task"]) != (METHOD_NAMES.get(row["sampler"]), row["task"]):
            continue
        reason = paper_mismatch(row, paper)
        if reason is not None:
            reasons.append(reason)
            continue
        entry: dict[str, Any] = {"dataset": paper["dataset"], "task": paper["task"], "sampler": paper["method"],
                                 "label": f"{paper['method']}, published ({paper_statistic(paper)})",
                                 "model": paper["space"], "task_group": "", "source": paper["source"],
                                 "images": int(paper["images"]) if paper["images"] else None, "paper": True}
        for metric in ("psnr", "ssim", "lpips", "fid"):
            entry[f"{metric}_mean"] = _float(paper[metric])
            entry[f"{metric}_std"] = _float(paper.get(f"{metric}_std", ""))
        out.append(entry)
    return out, (None if out or not reasons else reasons[0])


def collect(roots: Iterable[str | Path], stat: str = "mean", papers: str | Path | None = None
            ) -> tuple[list[dict[str, Any]], list[str], list[tuple[Path, str]]]:
    """(rows, metric names, skipped folders with the reason): our runs sorted by dataset, task, model, sampler, each
    (dataset, task, sampler) group followed by the published numbers whose protocol matches when ``papers`` names a
    CSV (rows without a match get ``paper_note``, the reason)."""
    found, skipped = find_runs(roots)
    rows = sorted((run_row(d, stat) for d in found),
                  key=lambda r: (r["dataset"], r["task"], r["model"], r["label"], r["source"]))
    present = {k[:-5] for r in rows for k, v in r.items()
               if k.endswith("_mean") and not k.endswith("_of_mean") and v is not None}  # no column of nulls
    metrics = [m for m in METRIC_NAMES if m in present] + sorted(present - set(METRIC_NAMES))
    if papers is None:
        return rows, metrics, skipped
    with open(papers, newline="") as handle:
        table = list(csv.DictReader(handle))
    out: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        out.append(row)
        matched, note = paper_rows(row, table)
        if note:
            row["paper_note"] = note
        pending += [p for p in matched if p not in pending]
        group = ("dataset", "task", "sampler")
        if i + 1 == len(rows) or any(rows[i + 1][k] != row[k] for k in group):
            out += pending
            pending = []
    return out, metrics, skipped


def varying(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys of :data:`CONTEXT` that take more than one value among our (non-paper) rows."""
    ours = [r for r in rows if not r.get("paper")]
    return [k for k in CONTEXT if len({json.dumps(r.get(k)) for r in ours}) > 1]


def context_line(rows: Sequence[Mapping[str, Any]]) -> str:
    """The settings all our rows share ('dataset demo, task down_sampling, …'), stated once above the table."""
    ours = [r for r in rows if not r.get("paper")]
    same = [k for k in CONTEXT if k not in varying(rows) and ours and ours[0].get(k) is not None]
    return "; ".join(f"{CONTEXT[k]} {ours[0][k]}" for k in same)


@dataclass
class Column:
    """One table column: its heading, the row key whose value is judged for the best mark (None: no mark), and
    how a row's cell reads."""

    heading: str
    key: str | None
    cell: Callable[[Mapping[str, Any]], str]


def _number(value: Any, decimals: int) -> str:
    return f"{value:.{decimals}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def _expected(rows: Sequence[Mapping[str, Any]]) -> set[float]:
    return {round(r["coverage_1std_expected"], 3) for r in rows if r.get("coverage_1std_expected") is not None}


def columns(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[Column]:
    """The table's columns: the sampler, the settings that differ, each metric (± std over images where there are
    several), then the comparison numbers that some row has (:data:`NUMBERS`)."""
    out = [Column("sampler", None, lambda r: r["label"])]
    out += [Column(CONTEXT[k], None, lambda r, k=k: "" if r.get(k) is None else str(r[k])) for k in varying(rows)]
    for m in metrics:
        digits = 2 if m in ("psnr", "fid") else 3
        out.append(Column(METRIC_HEADINGS.get(m, m.upper()), f"{m}_mean", lambda r, m=m, d=digits: _number(
            r.get(f"{m}_mean"), d) + (f" ± {r[f'{m}_std']:.{d}f}" if r.get(f"{m}_std") is not None else "")))
    expected = _expected(rows)
    for key, (heading, digits) in NUMBERS.items():
        if not any(r.get(key) not in (None, 0) or key == "diverged" and r.get("samples") for r in rows):
            continue
        if key == "coverage_1std":
            one = len(expected) == 1
            heading += f" (exact sampler {next(iter(expected)):.3f})" if one else " (exact sampler)"
            out.append(Column(heading, key, lambda r, one=one: _number(r.get("coverage_1std"), 3) + (
                "" if one or r.get("coverage_1std_expected") is None else f" ({r['coverage_1std_expected']:.3f})")))
        elif key == "model_calls":
            out.append(Column("model calls / sample (fwd + bwd)", key, lambda r: _number(r.get("model_calls"), 0) + (
                f" + {r['model_backward']:.0f}" if r.get("model_backward") else "")))
        elif key == "diverged":
            out.append(Column(heading, key, lambda r: f"{r['diverged']} / {r['samples']}" if r.get("samples") else ""))
        else:
            out.append(Column(heading, key, lambda r, key=key, d=digits: _number(r.get(key), d)))
    return out


def best_cells(rows: Sequence[Mapping[str, Any]], cols: Sequence[Column]) -> set[tuple[int, int]]:
    """(row, column) of the best value of each column among our rows of the same dataset and task (ties all marked;
    none where the values do not differ)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, row in enumerate(rows):
        if not row.get("paper"):
            groups.setdefault((row["dataset"], row["task"]), []).append(i)
    marked = set()
    for ours in groups.values():
        for c, column in enumerate(cols):
            scores = {i: badness(column.key, rows[i]) for i in ours} if column.key else {}
            scores = {i: s for i, s in scores.items() if s is not None}
            if len(scores) > 1 and len(set(scores.values())) > 1:
                low = min(scores.values())
                marked |= {(i, c) for i, s in scores.items() if math.isclose(s, low, rel_tol=1e-9, abs_tol=1e-12)}
    return marked


def statement(stat: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """What the numbers are, stated with the table."""
    images = {r.get("images") for r in rows if not r.get("paper")}
    spread = "; ± the std over images" if any((n or 0) > 1 for n in images) else " (one image: no spread shown)"
    return (f"Metric columns: the {STATISTICS[stat]}, averaged over images{spread}. PSNR/SSIM of mean: the posterior "
            "mean of ≥ 2 runs. 1σ coverage: pixels with |x − mean| ≤ 1 std, against what an exact sampler gives with "
            f"the same runs (0.683 for many runs). residual / σ√m: {RESIDUAL_RATIO_NOTE}. Best of each column in "
            "bold among the runs of one task (coverage: closest to the exact sampler's; residual: closest to 1).")


def _table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]
           ) -> tuple[list[Column], list[list[str]], set[tuple[int, int]]]:
    cols = columns(rows, metrics)
    return cols, [[c.cell(r) for c in cols] for r in rows], best_cells(rows, cols)


def _notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"{r['source']}: no paper row ({r['paper_note']})" for r in rows if r.get("paper_note")]


def to_markdown(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], stat: str) -> str:
    """The table as Markdown (best values in bold), with the statement of the statistic and a folder column."""
    cols, body, best = _table(rows, metrics)
    lines = [statement(stat, rows), "", f"All rows: {context_line(rows)}.", "",
             "| " + " | ".join([c.heading for c in cols] + ["folder"]) + " |", "|" + "---|" * (len(cols) + 1)]
    for i, (row, cells) in enumerate(zip(rows, body)):
        cells = [f"**{v}**" if (i, c) in best else v for c, v in enumerate(cells)]
        lines.append("| " + " | ".join([*cells, row["source"]]) + " |")
    notes = _notes(rows)
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> str:
    """Every row's values, unformatted: what ran, the settings, each metric's mean and std, the comparison columns."""
    keys = ["label", "dataset", "task", "sampler", "model", "task_group", "source", "images", "runs", "steps", "seed",
            "status", *(f"{m}_{s}" for m in metrics for s in ("mean", "std")), "psnr_of_mean", "ssim_of_mean",
            "coverage_1std", "coverage_1std_expected", "residual_ratio", "model_calls", "model_backward",
            "wall_s_per_sample", "diverged", "samples"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- per-image rows
@dataclass
class Crop:
    """A square region of the images: left, top and side in pixels."""

    x: int
    y: int
    size: int

    @classmethod
    def parse(cls, text: str) -> "Crop | str":
        """``auto``/``none`` as they are, or ``X,Y,SIZE``."""
        if text in ("auto", "none"):
            return text
        try:
            x, y, size = (int(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--crop {text!r}: need auto, none or X,Y,SIZE in pixels") from None
        if min(x, y) < 0 or size < 2:
            raise argparse.ArgumentTypeError(f"--crop {text!r}: need X, Y ≥ 0 and SIZE ≥ 2")
        return cls(x, y, size)

    def of(self, image: Image.Image) -> Image.Image:
        return image.crop((self.x, self.y, self.x + self.size, self.y + self.size))


def _open(path: Path) -> Image.Image | None:
    if not path.is_file():
        return None
    with Image.open(path) as image:
        return image.convert("RGB")


def _first_run(summary: Mapping[str, Any], image_id: str) -> int | None:
    runs = (summary.get("images") or {}).get(image_id, {}).get("runs") or []
    return next((r["run"] for r in runs if r.get("failed_at_step") is None), None)


def auto_crop(samples: Sequence[Image.Image]) -> Crop:
    """The square (a quarter of the side, at least 8 px) where the samplers' samples differ most: the largest
    window mean of the per-pixel std across samplers."""
    stacked = torch.tensor(np.stack([np.asarray(s, dtype=np.float32) / 255 for s in samples]))  # (S, H, W, 3)
    spread = stacked.std(0, unbiased=False).mean(-1) if len(samples) > 1 else stacked[0].mean(-1) * 0
    height, width = spread.shape
    size = min(height, width, max(8, min(height, width) // 4))
    windows = torch.nn.functional.avg_pool2d(spread[None, None], size, stride=1)[0, 0]
    y, x = divmod(int(windows.argmax()), windows.shape[1])
    return Crop(x, y, size)


@dataclass
class ImageRow:
    """One image across the runs of a group: the ground truth, y, and per run its sample, posterior mean and std
    heat map (on the group's shared scale); None where absent."""

    image_id: str
    name: str
    truth: Image.Image | None
    measurement: Image.Image | None
    samples: list[Image.Image | None]
    means: list[Image.Image | None]
    stds: list[Image.Image | None]
    captions: list[str]


def image_rows(runs: Sequence[Mapping[str, Any]], limit: int) -> tuple[list[ImageRow], float | None]:
    """(the first ``limit`` images that every run of ``runs`` has, the shared std scale: the largest RMS std of any
    run and image shown). The std maps are drawn again from each run's float std (``uncertainty/<id>.pt``) on that
    one scale, so uncertainty can be compared across samplers."""
    common = set.intersection(*(set((r["_summary"].get("images") or {})) for r in runs))
    ids = sorted(common, key=int)[:limit]
    stds: dict[tuple[int, str], torch.Tensor] = {}
    for k, run in enumerate(runs):
        for i in ids:
            path = Path(run["source"]) / "uncertainty" / f"{int(i):05d}.pt"
            if path.is_file():
                stds[k, i] = torch.load(path, weights_only=True)["std"]
    vmax = max((float(uncertainty.std_magnitude(s).max()) for s in stds.values()), default=None)
    out = []
    for i in ids:
        n, first = int(i), Path(runs[0]["source"])
        samples, means, heat, captions = [], [], [], []
        for k, run in enumerate(runs):
            folder, r = Path(run["source"]), _first_run(run["_summary"], i)
            samples.append(None if r is None else _open(folder / "samples" / f"{n:05d}_run{r:04d}.png"))
            means.append(_open(folder / "uncertainty" / f"{n:05d}_mean.png"))
            heat.append(to_pil(uncertainty.heat_map(stds[k, i], vmax)) if (k, i) in stds else None)
            values = next((e for e in run["_summary"]["images"][i]["runs"] if e["run"] == r), {}) if r is not None else {}
            captions.append(f"run {r}: PSNR {values['psnr']:.2f}" if isinstance(values.get("psnr"), float)
                            else ("diverged" if r is None else f"run {r}"))
        name = str(runs[0]["_summary"]["images"][i].get("name") or i)
        out.append(ImageRow(i, name, _open(first / "inputs" / f"{n:05d}_gt.png"),
                            _open(first / "inputs" / f"{n:05d}_measurement.png"), samples, means, heat, captions))
    return out, vmax


def _groups(rows: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Our rows by (dataset, task): the runs whose images can stand side by side."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        if not row.get("paper"):
            groups.setdefault((row["dataset"], row["task"]), []).append(row)
    return list(groups.values())


def _crop_for(row: ImageRow, crop: Crop | str) -> Crop | None:
    pictures = [s for s in row.samples if s is not None]
    if crop == "none" or not pictures:
        return None
    return auto_crop(pictures) if crop == "auto" else crop


def comparison_png(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], stat: str,
                   crop: Crop | str = "auto") -> Image.Image:
    """The comparison as one labelled picture: the table (best values bold) over, for each (dataset, task), a grid
    with columns ground truth | y | each sampler and rows sample, posterior mean, std (one colour bar) and crop,
    for the first :data:`PNG_IMAGES` images."""
    cols, body, best = _table(rows, metrics)
    parts = [table_image([c.heading for c in cols], body, best)]
    for group in _groups(rows):
        images, vmax = image_rows(group, PNG_IMAGES)
        images = [i for i in images if i.truth is not None or any(p is not None for p in i.samples)]
        grid_rows: list[tuple[str, list[Tile]]] = []
        for image in images:
            region = _crop_for(image, crop)
            grid_rows.append((f"{image.image_id}: sample", [Tile(image.truth), Tile(image.measurement)]
                              + [Tile(s, c) for s, c in zip(image.samples, image.captions)]))
            grid_rows += [(f"{image.image_id}: {what}", [Tile(None), Tile(None)] + [Tile(p) for p in pictures])
                          for what, pictures in (("posterior mean", image.means), ("posterior std", image.stds))
                          if any(p is not None for p in pictures)]
            if region is not None:
                grid_rows.append((f"{image.image_id}: crop", [Tile(region.of(image.truth)) if image.truth else Tile(None),
                                                              Tile(None)]
                                  + [Tile(region.of(s) if s else None) for s in image.samples]))
        if grid_rows:
            bar = ColourBar(vmax, "posterior std per pixel, one scale for every sampler (image units)") if vmax else None
            title = f"{group[0]['task']} · {group[0]['dataset']} · {STATISTICS[stat]}"
            parts.append(labelled_grid(["ground truth", "measurement y", *(r["label"] for r in group)], grid_rows,
                                       colour_bar=bar, title=title, label_size=12))
    return stack(parts)


COMPARE_STYLE = """
table.cmp { table-layout: fixed; width: 100%; }
table.cmp td, table.cmp th { padding: 2px; text-align: center; vertical-align: top; overflow-wrap: anywhere;
                             font-size: 0.85em; }
table.cmp th.rowname { width: 7em; text-align: right; }
table.cmp img { width: 100%; image-rendering: pixelated; display: block; }
table.results td { white-space: nowrap; } table.results th { overflow-wrap: anywhere; }
table.results td.text { white-space: normal; overflow-wrap: anywhere; text-align: left; min-width: 8em; }
td.best { font-weight: bold; background: #e6f4e6; }
"""


def _html_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], page: Path) -> str:
    cols, body, best = _table(rows, metrics)
    e = html.escape
    lines = []
    for i, (row, cells) in enumerate(zip(rows, body)):
        shade = ' style="background:#eef3fb"' if row.get("paper") else ""
        out = []
        for c, text in enumerate(cells):
            css = (" class=left" if c == 0 else " class=text" if cols[c].key is None else "") \
                if (i, c) not in best else " class=best"
            if c == 0 and not row.get("paper"):
                link = e(os.path.relpath(Path(row["source"]) / "report.html", page.parent))
                text = f'<a href="{link}" title="{e(row["source"])}">{e(text)}</a>'
            elif c == 0:
                text = f'<span title="{e(row["source"])}">{e(text)}</span>'
            else:
                text = e(text)
            out.append(f"<td{css}>{text}</td>")
        lines.append(f"<tr{shade}>" + "".join(out) + "</tr>")
    head = "".join(f"<th class=left>{e(c.heading)}</th>" for c in cols)
    return f"<table class=results><tr>{head}</tr>\n" + "\n".join(lines) + "</table>"


def _write_png(image: Image.Image | None, folder: Path, name: str) -> str | None:
    """Save ``image`` as ``folder/name`` (its path relative to the page) when there is one."""
    if image is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(png_bytes(image))
    return f"{folder.name}/{name}"


def _image_sections(rows: Sequence[Mapping[str, Any]], page: Path, crop: Crop | str) -> str:
    """Per (dataset, task): one block per image (the first :data:`SCREENFUL`), columns ground truth | y | each
    sampler, rows sample, posterior mean, std on one shared scale (its colour bar above), crop; beyond the first
    two blocks the pictures load lazily."""
    e = html.escape
    files = page.with_name(page.stem + "_files")
    parts = []
    for g, group in enumerate(_groups(rows)):
        images, vmax = image_rows(group, SCREENFUL)
        images = [i for i in images if i.truth is not None or any(p is not None for p in i.samples)]
        if not images:
            continue
        total = len(set.intersection(*(set(r["_summary"].get("images") or {}) for r in group)))
        heading = f"<h2>Per image: {e(group[0]['task'])} · {e(group[0]['dataset'])}</h2>"
        more = (f" The first {len(images)} of {total} images; every image is on each run's own page."
                if total > len(images) else "")
        bar = _write_png(colour_bar_image(ColourBar(vmax, "posterior std per pixel (RMS over RGB), one scale for "
                                                          "every sampler, in image units (images span [−1, 1])")),
                         files, f"g{g}_colour_bar.png") if vmax else None
        parts.append(heading + f"<p class=note>Sample: each sampler's first run (its PSNR below); posterior mean and "
                     f"std of all runs (with ≥ 2 runs).{more}</p>"
                     + (f'<img src="{e(bar)}" alt="std colour scale" style="width:auto">' if bar else ""))
        head = ("<tr><th class=rowname></th><th>ground truth</th><th>measurement y</th>"
                + "".join(f"<th>{e(r['label'])}</th>" for r in group) + "</tr>")
        for position, image in enumerate(images):
            lazy = ' loading="lazy"' if position >= 2 else ""
            region = _crop_for(image, crop)

            def cell(picture: Image.Image | None, name: str, caption: str = "") -> str:
                src = _write_png(picture, files, name)  # noqa: B023  (used within this iteration)
                if src is None:
                    return "<td></td>"
                text = f"<div>{e(caption)}</div>" if caption else ""
                return f'<td><img src="{e(src)}" alt="{e(name)}"{lazy}>{text}</td>'  # noqa: B023

            key = f"g{g}_{image.image_id}"
            table_rows = [("sample", cell(image.truth, f"{key}_gt.png") + cell(image.measurement, f"{key}_y.png")
                           + "".join(cell(s, f"{key}_s{k}.png", c)
                                     for k, (s, c) in enumerate(zip(image.samples, image.captions))))]
            for what, pictures in (("posterior mean", image.means), ("posterior std", image.stds)):
                if any(p is not None for p in pictures):
                    table_rows.append((what, "<td></td><td></td>" + "".join(
                        cell(p, f"{key}_{what.split()[1]}{k}.png") for k, p in enumerate(pictures))))
            if region is not None:
                where = f"crop x {region.x}–{region.x + region.size}, y {region.y}–{region.y + region.size}"
                table_rows.append((where, cell(region.of(image.truth) if image.truth else None, f"{key}_crop_gt.png")
                                   + "<td></td>" + "".join(cell(region.of(s) if s else None, f"{key}_crop{k}.png")
                                                           for k, s in enumerate(image.samples))))
            body = "".join(f"<tr><th class=rowname>{e(name)}</th>{cells}</tr>" for name, cells in table_rows)
            parts.append(f"<h3>{e(image.image_id)}: {e(image.name)}</h3><table class=cmp>{head}{body}</table>")
    return "\n".join(parts)


def to_html(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], stat: str, page: Path,
            skipped: Sequence[tuple[Path, str]] = (), crop: Crop | str = "auto") -> str:
    """One page: what was found and skipped, the table (best values marked, paper rows shaded), then per image one
    row of every sampler's reconstructions (:func:`_image_sections`); pictures and links relative to ``page``."""
    e = html.escape
    ours = [r for r in rows if not r.get("paper")]
    found = "".join(f"<li>{e(r['label'])}: {e(r['source'])} ({e(r['status'] or 'no provenance')})</li>" for r in ours)
    skips = "".join(f"<li>{e(str(path))}: {e(reason)}</li>" for path, reason in skipped)
    notes = "".join(f"<li>{e(n)}</li>" for n in _notes(rows))
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>Sampler comparison</title>"
            f"<style>{STYLE}{COMPARE_STYLE}</style></head><body>\n<h1>Sampler comparison</h1>\n"
            f"<p>{e(context_line(rows))}.</p>\n<p class=note>{e(statement(stat, rows))}"
            + (" Shaded rows: published numbers whose protocol (image list, task settings, noise, model kind) matches "
               "the run above, with the paper's own statistic." if any(r.get("paper") for r in rows) else "")
            + "</p>\n" + _html_table(rows, metrics, page) + "\n"
            + (f"<ul class=note>{notes}</ul>\n" if notes else "")
            + f"<details><summary>{len(ours)} run folder(s) found, {len(skipped)} skipped</summary>"
            f"<ul class=note>{found}</ul>" + (f"<p class=note>Skipped:</p><ul class=note>{skips}</ul>" if skips else "")
            + "</details>\n" + _image_sections(rows, page, crop) + "\n</body></html>\n")


def _log_to_wandb(png: Path, args: argparse.Namespace) -> None:
    """The comparison picture as one W&B run (``job_type`` report); W&B failures are a warning, as for runs."""
    from common.run.tracking import Tracker

    tracker = Tracker.start({"paths": [str(p) for p in args.paths], "stat": args.stat}, png.parent, enabled=True,
                            project=args.wandb_project, mode=args.wandb_mode, name=f"comparison {png.stem}")
    tracker.log_image("comparison", png, caption=", ".join(map(str, args.paths)))
    tracker.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories or folders that contain them (searched recursively)")
    parser.add_argument("--stat", choices=tuple(STATISTICS), default="mean",
                        help="per-image value the metric columns average: " + "; ".join(
                            f"{k}: {v}" for k, v in STATISTICS.items()))
    parser.add_argument("--papers", nargs="?", const=str(PAPER_NUMBERS), default=None, metavar="CSV",
                        help=f"add published numbers whose protocol matches (default table: {PAPER_NUMBERS.name})")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV here")
    parser.add_argument("--md", type=Path, help="also write the markdown table here")
    parser.add_argument("--html", type=Path, help="also write the comparison page here (pictures in <page>_files/)")
    parser.add_argument("--png", type=Path, help="also write the comparison as one labelled picture here")
    parser.add_argument("--crop", type=Crop.parse, default="auto", metavar="auto|none|X,Y,SIZE",
                        help="zoomed region of the image rows: where the samplers differ most (auto), none, or given")
    parser.add_argument("--wandb", action="store_true", help="log the comparison picture to W&B (--png, default "
                                                             "comparison.png)")
    parser.add_argument("--wandb-project", default="DAPS")
    parser.add_argument("--wandb-mode", default="online", choices=("online", "offline", "disabled"))
    args = parser.parse_args(argv)
    try:
        rows, metrics, skipped = collect(args.paths, args.stat, args.papers)
    except (ValueError, OSError, json.JSONDecodeError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not rows:
        print(f"error: no run folder (metrics.json with config.yaml) under {', '.join(args.paths)}", file=sys.stderr)
        return 2
    print(f"found {sum(not r.get('paper') for r in rows)} run folder(s), skipped {len(skipped)}", file=sys.stderr)
    markdown = to_markdown(rows, metrics, args.stat)
    print(markdown, end="")
    if args.md:
        args.md.write_text(markdown)
    if args.csv:
        args.csv.write_text(to_csv(rows, metrics))
    if args.html:
        args.html.write_text(to_html(rows, metrics, args.stat, args.html.resolve(), skipped, args.crop))
    png = args.png or (Path("comparison.png") if args.wandb else None)
    if png is not None:
        png.write_bytes(png_bytes(comparison_png(rows, metrics, args.stat, args.crop)))
    if args.wandb:
        _log_to_wandb(png, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
