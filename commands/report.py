"""Result tables across run directories:
``python -m commands.report results/ [more/] [--papers [CSV]] [--csv t.csv] [--md t.md] [--html page.html]``.

Every folder under the given paths that holds a ``metrics.json`` (see :func:`common.summary.summarize`) and
the ``config.yaml`` beside it is one row: dataset × task × sampler × model, and for each metric m the mean
± standard deviation over the images of one per-image value, chosen by ``--stat`` (set metrics, FID and
KID, are one value over all samples):

- ``best_oracle`` (default): the best of the image's runs against the ground truth, as the DAPS tables
  (phase retrieval: best of 4 runs); equal to the run value when there is one run per image;
- ``mean``: the mean over the image's runs;
- ``best_residual``: the run with the smallest ‖A(x̂) − y‖ (no ground truth needed).

The standard deviation is the population one over images (as ``metrics.json``). Settings that differ between
the rows get a column each: sampler steps, runs per image, seed, model calls per sample and wall time (from
``provenance.json``, when recorded).

``--papers`` puts the published numbers (``commands/paper_numbers.csv``, or another CSV with the same columns)
of the same method below a group of our rows only when the protocols match (:func:`paper_mismatch`): the
papers' test list verified by checksum (``protocol.json``), the same number of images, the task's published
settings (operator block as in ``configs/task/``) and noise level σ_y, and a trained network of the paper's
kind (a toy prior such as the demo's Gaussian is never compared with a paper). A row without a match says why.

Markdown goes to stdout (and ``--md``), the same table as CSV to ``--csv``; ``--html`` writes one page with the
table and each run's labelled grid side by side, linking every run's own ``report.html``.
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
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml
from omegaconf import OmegaConf

import common.config_resolvers  # noqa: F401  (${box_side_range:…} of the inpainting yaml)
from common.metrics import METRIC_NAMES, SET_METRICS
from common.report_page import STYLE, describe

REPO = Path(__file__).resolve().parents[1]
PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.csv")
TASK_CONFIGS = REPO / "configs" / "task"
STATISTICS = ("best_oracle", "mean", "best_residual")
#: our sampler -> the method name in the papers' tables
PAPER_METHOD = {"edm_daps": "DAPS", "latent_edm_daps": "LatentDAPS", "dps": "DPS", "psld": "PSLD",
                "resample": "ReSample", "ddrm": "DDRM", "ddnm": "DDNM", "diffpir": "DiffPIR", "reddiff": "RED-diff",
                "fps_smc": "FPS-SMC", "dcdp": "DCDP", "hio": "HIO"}
#: the papers' dataset -> the image list (configs/data/<name>.sha256) of their test set
PAPER_LISTS = {"ffhq": "test-ffhq", "imagenet": "test-imagenet"}
#: the papers' "space" column -> the model kinds (registry names) that are such a network
PAPER_MODELS = {"pixel": ("ddpm",), "latent": ("ldm",)}
#: operator keys that say where a state comes from, not what the task is
STATE_KEYS = ("state", "shared_state")
KEYS = ("dataset", "task", "sampler", "model", "task_group", "source", "images")
#: settings shown as columns when they differ between our rows
VARYING = {"steps": "sampler steps", "runs": "runs", "seed": "seed", "model_calls": "model calls / sample",
           "wall_s": "wall time (s)"}
DECIMALS = {"psnr": 2, "fid": 2}


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


def _settings(config: Mapping[str, Any], metrics: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """The settings that may differ between rows: sampler steps, runs, seed, model calls, wall time."""
    protocol = metrics.get("protocol") or {}
    provenance_path = run_dir / "provenance.json"
    invocations = json.loads(provenance_path.read_text()).get("invocations", []) if provenance_path.is_file() else []
    walls = [i["wall_s"] for i in invocations if isinstance(i.get("wall_s"), (int, float))]
    calls = [i["model_calls_per_sample"] for i in invocations
             if isinstance(i.get("model_calls_per_sample"), (int, float))]
    return {"steps": ", ".join(_steps(config.get("sampler"))) or None,
            "runs": protocol.get("num_runs", config.get("num_runs")), "seed": protocol.get("seed", config.get("seed")),
            "model_calls": calls[-1] if calls else None, "wall_s": round(sum(walls), 1) if walls else None}


def run_row(run_dir: Path, stat: str = "best_oracle") -> dict[str, Any]:
    """One table row: the run's description, the settings that may differ between rows, what the paper
    comparison needs (``_config``, ``_protocol``) and, per metric, mean/std over images of the per-image ``stat``."""
    if stat not in STATISTICS:
        raise ValueError(f"stat={stat!r} is not valid: {', '.join(STATISTICS)}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"{run_dir} has metrics.json but no config.yaml; cannot tell which task and model it ran")
    config = yaml.safe_load(config_path.read_text()) or {}
    row: dict[str, Any] = {**describe(config), "source": str(run_dir), "images": metrics.get("num_images"),
                           **_settings(config, metrics, run_dir), "_config": config,
                           "_protocol": metrics.get("protocol") or {}}
    for metric in metrics.get("summary", {}):
        per_image = [entry[metric][stat] for entry in metrics.get("images", {}).values()]
        row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(
            [v for v in per_image if isinstance(v, (int, float)) and math.isfinite(v)])
    for metric in SET_METRICS:  # one value over all samples (no per-image statistic)
        value = (metrics.get("set_metrics") or {}).get(metric)
        if isinstance(value, (int, float)):
            row[f"{metric}_mean"], row[f"{metric}_std"] = float(value), None
    return row


def _float(text: str | None) -> float | None:
    return float(text) if text and text.strip() else None


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
    if (PAPER_METHOD.get(row["sampler"]), row["task"]) != (paper["method"], paper["task"]):
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
        if (paper["method"], paper["task"]) != (PAPER_METHOD.get(row["sampler"]), row["task"]):
            continue
        reason = paper_mismatch(row, paper)
        if reason is not None:
            reasons.append(reason)
            continue
        entry: dict[str, Any] = {"dataset": paper["dataset"], "task": paper["task"], "sampler": paper["method"],
                                 "model": paper["space"], "task_group": "", "source": paper["source"],
                                 "images": int(paper["images"]) if paper["images"] else None, "paper": True}
        for metric in ("psnr", "ssim", "lpips", "fid"):
            entry[f"{metric}_mean"] = _float(paper[metric])
            entry[f"{metric}_std"] = _float(paper.get(f"{metric}_std", ""))
        out.append(entry)
    return out, (None if out or not reasons else reasons[0])


def collect(roots: Iterable[str | Path], stat: str = "best_oracle", papers: str | Path | None = None
            ) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, metric names): our runs sorted by dataset, task, sampler, model, each group followed by the
    published numbers whose protocol matches when ``papers`` names a CSV (rows without a match get
    ``paper_note``, the reason)."""
    rows = sorted((run_row(d, stat) for d in find_runs(roots)),
                  key=lambda r: (r["dataset"], r["task"], r["sampler"], r["model"], r["source"]))
    present = {k[:-5] for r in rows for k, v in r.items() if k.endswith("_mean") and v is not None}  # no null column
    metrics = [m for m in METRIC_NAMES if m in present] + sorted(present - set(METRIC_NAMES))
    if papers is None:
        return rows, metrics
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
    return out, metrics


def varying(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The settings of :data:`VARYING` that take more than one value among our (non-paper) rows."""
    ours = [r for r in rows if not r.get("paper")]
    return [k for k in VARYING if len({json.dumps(r.get(k)) for r in ours}) > 1]


def _cell(mean: float | None, std: float | None, metric: str) -> str:
    if mean is None:
        return "-"
    digits = DECIMALS.get(metric, 3)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _setting(value: Any) -> str:
    return "" if value is None else str(value)


def _table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    extra = varying(rows)
    head = ["dataset", "task", "sampler", "model", "n", *(VARYING[k] for k in extra),
            *(m.upper() for m in metrics), "source"]
    body = [[r["dataset"], r["task"], r["sampler"], r["model"], "" if r["images"] is None else str(r["images"]),
             *(_setting(r.get(k)) for k in extra),
             *(_cell(r.get(f"{m}_mean"), r.get(f"{m}_std"), m) for m in metrics), r["source"]] for r in rows]
    return head, body


def _notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"{r['source']}: no paper row ({r['paper_note']})" for r in rows if r.get("paper_note")]


def to_markdown(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], stat: str) -> str:
    head, body = _table(rows, metrics)
    lines = [f"Per-image statistic: {stat}; mean ± std over images.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    notes = _notes(rows)
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> str:
    columns = [*KEYS, *VARYING, *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_html(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], stat: str, page: Path) -> str:
    """One page: the table (paper rows shaded) and each run's labelled grid side by side, every picture and
    link relative to ``page``'s folder."""
    head, body = _table(rows, metrics)
    e = html.escape

    def link(row: Mapping[str, Any], relative: str) -> str:
        return e(os.path.relpath(Path(row["source"]) / relative, page.parent))

    lines = []
    for row, cells in zip(rows, body):
        shade = ' style="background:#eef3fb"' if row.get("paper") else ""
        cells = [e(c) for c in cells]
        if not row.get("paper"):
            cells[-1] = f'<a href="{link(row, "report.html")}">{cells[-1]}</a>'
        lines.append(f"<tr{shade}>" + "".join(f"<td class=left>{c}</td>" for c in cells) + "</tr>")
    grids = "".join(
        f'<figure style="display:inline-block;vertical-align:top;margin:0.5em">'
        f'<a href="{link(r, "report.html")}"><img src="{link(r, "grid_results.png")}" alt="{e(r["source"])}" '
        f'style="max-width:600px"></a><figcaption>{e(r["task"])} · {e(r["sampler"])} · {e(r["model"])}<br>'
        f'{e(r["source"])}</figcaption></figure>'
        for r in rows if not r.get("paper") and (Path(r["source"]) / "grid_results.png").is_file())
    notes = "".join(f"<li>{e(n)}</li>" for n in _notes(rows))
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>Run comparison</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>Run comparison</h1>\n"
            f"<p class=note>Per-image statistic: {e(stat)}; mean ± std over images. Shaded rows: published "
            "numbers whose protocol (image list, task settings, noise, model kind) matches the run above.</p>\n"
            "<table><tr>" + "".join(f"<th class=left>{e(h)}</th>" for h in head) + "</tr>\n"
            + "\n".join(lines) + "</table>\n" + (f"<ul class=note>{notes}</ul>\n" if notes else "")
            + f"<h2>Grids</h2>\n<div>{grids}</div>\n</body></html>\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories or folders that contain them")
    parser.add_argument("--stat", choices=STATISTICS, default="best_oracle", help="per-image value to average")
    parser.add_argument("--papers", nargs="?", const=str(PAPER_NUMBERS), default=None, metavar="CSV",
                        help=f"add published numbers whose protocol matches (default table: {PAPER_NUMBERS.name})")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV here")
    parser.add_argument("--md", type=Path, help="also write the markdown table here")
    parser.add_argument("--html", type=Path, help="also write a page with the table and the runs' grids here")
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
    if args.html:
        args.html.write_text(to_html(rows, metrics, args.stat, args.html.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
