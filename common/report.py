"""Result tables across run directories: ``python -m common.report results/ [more/] [--papers] [--csv t.csv]``.

Every folder under the given paths that holds a ``metrics.json`` (see :func:`common.run_dir.summarize`) and
the ``config.yaml`` beside it is one row: dataset × task × sampler × model, and for each metric m the mean
± standard deviation over the images of one per-image value, chosen by ``--stat`` (set metrics, FID and
KID, are one value over all samples):

- ``best_oracle`` (default): the best of the image's runs against the ground truth, as the DAPS tables
  (phase retrieval: best of 4 runs); equal to the run value when there is one run per image;
- ``mean``: the mean over the image's runs;
- ``best_residual``: the run with the smallest ‖A(x̂) − y‖ (no ground truth needed).

The standard deviation is the population one over images (as ``metrics.json``). ``--papers`` adds the
published numbers of the matching method (DAPS, LatentDAPS, DPS) below each group, read from
``common/paper_numbers.csv`` (a copy of the project's table of published results; another CSV with the same
columns can be given). Markdown goes to stdout (and ``--md``), the same table as CSV to ``--csv``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from common.metrics import METRIC_NAMES, SET_METRICS

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.csv")
STATISTICS = ("best_oracle", "mean", "best_residual")
#: our sampler -> the method name in the papers' tables
PAPER_METHOD = {"edm_daps": "DAPS", "latent_edm_daps": "LatentDAPS", "dps": "DPS"}
KEYS = ("dataset", "task", "sampler", "model", "task_group", "source", "images")
DECIMALS = {"psnr": 2, "fid": 2}


def task_label(operator: Mapping[str, Any]) -> str:
    """The task's config name from its operator block (the names the papers' tables use)."""
    name = operator.get("name", "?")
    if name == "inpainting" and operator.get("mask_type") == "random":
        return "inpainting_rand"
    return {"high_dynamic_range": "hdr"}.get(name, name)


def describe(config: Mapping[str, Any]) -> dict[str, str]:
    """dataset, task, sampler, model and task_group of a run from its resolved ``config.yaml``."""
    data, model = config.get("data") or {}, config.get("model") or {}
    group = config.get("task_group", "?")
    operator = ((config.get("task") or {}).get(group) or {}).get("operator") or {}
    dataset = Path(str(data["root"])).name if data.get("root") else str(data.get("name", "?"))
    if model.get("config_name"):
        model_label = str(model["config_name"])
    elif model.get("checkpoint"):
        model_label = Path(str(model["checkpoint"])).stem
    else:
        model_label = str(model.get("name", "?"))
    sampler = str((config.get("sampler") or {}).get("name", "?"))
    return {"dataset": dataset, "task": task_label(operator), "sampler": sampler, "model": model_label,
            "task_group": str(group)}


def find_runs(roots: Iterable[str | Path]) -> list[Path]:
    """Run directories (folders with a metrics.json) under ``roots``; hidden folders (.submitit) skipped."""
    found = set()
    for root in map(Path, roots):
        if not root.exists():
            raise ValueError(f"{root} does not exist; give run directories or folders that contain them")
        candidates = [root / "metrics.json"] if (root / "metrics.json").is_file() else root.rglob("metrics.json")
        for path in candidates:
            if not any(part.startswith(".") for part in path.relative_to(root).parts[:-1]):
                found.add(path.parent)
    return sorted(found)


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def run_row(run_dir: Path, stat: str = "best_oracle") -> dict[str, Any]:
    """One table row: the run's description and, per metric, mean/std over images of the per-image ``stat``."""
    if stat not in STATISTICS:
        raise ValueError(f"stat={stat!r} is not valid: {', '.join(STATISTICS)}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"{run_dir} has metrics.json but no config.yaml; cannot tell which task and model it ran")
    row: dict[str, Any] = {**describe(yaml.safe_load(config_path.read_text()) or {}), "source": str(run_dir),
                           "images": metrics.get("num_images")}
    for metric in metrics.get("summary", {}):
        per_image = [entry[metric][stat] for entry in metrics.get("images", {}).values()]
        row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(
            [v for v in per_image if isinstance(v, (int, float)) and math.isfinite(v)])
    for metric in SET_METRICS:  # one value over all samples (no per-image statistic)
        value = (metrics.get("set_metrics") or {}).get(metric)
        if isinstance(value, (int, float)):
            row[f"{metric}_mean"], row[f"{metric}_std"] = float(value), None
    return row


def _float(text: str) -> float | None:
    return float(text) if text.strip() else None


def paper_rows(row: Mapping[str, Any], table: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """Published rows for the method, dataset and task of one of our rows (possibly several sources)."""
    method = PAPER_METHOD.get(row["sampler"])
    dataset = next((d for d in ("ffhq", "imagenet") if d in row["dataset"].lower()), None)
    out = []
    for paper in table:
        if (paper["method"], paper["dataset"], paper["task"]) == (method, dataset, row["task"]):
            entry: dict[str, Any] = {"dataset": paper["dataset"], "task": paper["task"], "sampler": paper["method"],
                                     "model": paper["space"], "task_group": "", "source": paper["source"],
                                     "images": int(paper["images"]) if paper["images"] else None}
            for metric in ("psnr", "ssim", "lpips", "fid"):
                entry[f"{metric}_mean"] = _float(paper[metric])
                entry[f"{metric}_std"] = _float(paper.get(f"{metric}_std", ""))
            out.append(entry)
    return out


def collect(roots: Iterable[str | Path], stat: str = "best_oracle", papers: str | Path | None = None
            ) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, metric names): our runs sorted by dataset, task, sampler, model, each group followed by the
    published numbers when ``papers`` names a CSV."""
    rows = sorted((run_row(d, stat) for d in find_runs(roots)),
                  key=lambda r: (r["dataset"], r["task"], r["sampler"], r["model"], r["source"]))
    present = {k[:-5] for r in rows for k in r if k.endswith("_mean")}
    metrics = [m for m in METRIC_NAMES if m in present] + sorted(present - set(METRIC_NAMES))
    if papers is None:
        return rows, metrics
    with open(papers, newline="") as handle:
        table = list(csv.DictReader(handle))
    out: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        out.append(row)
        group = ("dataset", "task", "sampler")
        if i + 1 == len(rows) or any(rows[i + 1][k] != row[k] for k in group):
            out += paper_rows(row, table)
    return out, metrics


def _cell(mean: float | None, std: float | None, metric: str) -> str:
    if mean is None:
        return "-"
    digits = DECIMALS.get(metric, 3)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def to_markdown(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], stat: str) -> str:
    head = ["dataset", "task", "sampler", "model", "n", *(m.upper() for m in metrics), "source"]
    lines = [f"Per-image statistic: {stat}; mean ± std over images.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["dataset"], r["task"], r["sampler"], r["model"], "" if r["images"] is None else str(r["images"]),
                 *(_cell(r.get(f"{m}_mean"), r.get(f"{m}_std"), m) for m in metrics), r["source"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> str:
    columns = [*KEYS, *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories or folders that contain them")
    parser.add_argument("--stat", choices=STATISTICS, default="best_oracle", help="per-image value to average")
    parser.add_argument("--papers", nargs="?", const=str(PAPER_NUMBERS), default=None, metavar="CSV",
                        help=f"add published numbers (default table: {PAPER_NUMBERS.name})")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV here")
    parser.add_argument("--md", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    try:
        rows, metrics = collect(args.paths, args.stat, args.papers)
    except (ValueError, OSError, json.JSONDecodeError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: no metrics.json under {', '.join(args.paths)}", file=sys.stderr)
        return 2
    markdown = to_markdown(rows, metrics, args.stat)
    print(markdown, end="")
    if args.md:
        args.md.write_text(markdown)
    if args.csv:
        args.csv.write_text(to_csv(rows, metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
