"""``report.html`` of one run directory: a static page (no server, no network, every picture referenced by a
path relative to the page) built from the folder's files at the end of a run.

Sections: what ran (dataset, task, sampler, model) and the settings that differ from the defaults (the
command-line overrides recorded in ``provenance.json``, and the top-level settings that differ from
``configs/config.yaml``); the metrics table (per image: mean ± std over runs, the oracle best run and the
residual-selected best run; their averages over images; the PSNR of the posterior mean); the labelled grid;
one card per image (ground truth, measurement, every sample, posterior mean and std, trajectory); the
calibration of the posterior std (``num_runs`` ≥ 2); the provenance (``protocol.json``, ``provenance.json``).
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from common.evaluation import uncertainty
from common.evaluation.figures import METRIC_LABELS, metric_caption
from common.evaluation.metrics import METRIC_DESCRIPTIONS, RESIDUAL_RATIO_NOTE
from common.evaluation.summary import SCREENFUL

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "config.yaml"
STYLE = """
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td.left, th.left { text-align: left; }
img { max-width: 100%; height: auto; } img.pixel { image-rendering: pixelated; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 0.6em; }
.card figure { display: inline-block; margin: 0.2em; text-align: center; vertical-align: top; }
.card figcaption { font-size: 0.8em; color: #555; white-space: pre-line; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
code { background: #f5f5f5; padding: 0 3px; }
"""


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


#: registry name -> the method's name in the papers (headings show ``<config name> (<method>)``, e.g. ``demo (DAPS)``)
METHOD_NAMES = {"edm_daps": "DAPS", "latent_edm_daps": "LatentDAPS", "sd_edm_daps": "DAPS-SD", "dps": "DPS",
                "latent_dps": "LatentDPS", "psld": "PSLD", "resample": "ReSample", "ddrm": "DDRM", "ddnm": "DDNM",
                "pigdm": "ΠGDM", "mmps": "MMPS", "diffpir": "DiffPIR", "reddiff": "RED-diff", "fps_smc": "FPS-SMC",
                "dcdp": "DCDP", "hio": "HIO"}


def sampler_label(config: Mapping[str, Any], provenance: Mapping[str, Any] | None) -> str:
    """``<sampler config name> (<method>)``: the config name the last invocation chose (``provenance.json``;
    the registry name for folders that did not record it) and the method of the registry name."""
    registry = str((config.get("sampler") or {}).get("name", "?"))
    chosen = [i["choices"]["sampler"] for i in (provenance or {}).get("invocations", [])
              if isinstance(i.get("choices"), Mapping) and i["choices"].get("sampler")]
    return f"{chosen[-1] if chosen else registry} ({METHOD_NAMES.get(registry, registry)})"


def final_status(provenance: Mapping[str, Any] | None) -> str:
    """The last invocation's status (:func:`_status`), or '' when none is recorded."""
    invocations = (provenance or {}).get("invocations") or []
    return _status(invocations[-1]) if invocations else ""


def changed_settings(config: Mapping[str, Any], defaults_file: Path = DEFAULT_CONFIG
                     ) -> list[tuple[str, Any, Any]]:
    """(key, this run's value, default) for each top-level setting of ``config`` that differs from
    ``configs/config.yaml`` (group blocks and Hydra's own keys are not compared: see the overrides)."""
    if not defaults_file.is_file():
        return []
    defaults = yaml.safe_load(defaults_file.read_text()) or {}
    return [(key, config.get(key), value) for key, value in defaults.items()
            if key in config and key not in ("defaults", "hydra") and not isinstance(value, dict)
            and config[key] != value
            and not (isinstance(value, str) and "${" in value)]


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, metric: str = "") -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{value:.2f}" if metric in ("psnr", "fid") else f"{value:.4f}"


def _pm(stats: Mapping[str, Any] | None, metric: str, show_std: bool = True) -> str:
    if not stats or stats.get("mean") is None:
        return "–"
    text = _num(stats["mean"], metric)
    return text + (f" ± {_num(stats['std'], metric)}" if show_std and stats.get("std") is not None else "")


def _img(root: Path, relative: str, caption: str = "", width: int | None = None, lazy: bool = False) -> str:
    """A figure for ``relative`` (only when the file exists), shown at least ``width`` px wide; ``lazy``: the browser
    loads it only when it is scrolled near."""
    if not (root / relative).is_file():
        return ""
    size = f' width="{width}"' if width else ""
    loading = ' loading="lazy"' if lazy else ""
    return (f'<figure><img class="pixel" src="{_e(relative)}" alt="{_e(caption or relative)}"{size}{loading}>'
            f'<figcaption>{_e(caption)}</figcaption></figure>')


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _settings_section(root: Path, config: Mapping[str, Any], provenance: Mapping[str, Any] | None) -> str:
    what = describe(config)
    rows = "".join(f"<tr><th class=left>{_e(k)}</th><td class=left>{_e(v)}</td></tr>" for k, v in what.items())
    parts = ["<h2>What ran</h2>", f"<table>{rows}</table>"]
    overrides = []
    for invocation in (provenance or {}).get("invocations", []):
        overrides += [o for o in invocation.get("overrides", []) if o not in overrides]
    parts.append("<h3>Settings that differ from the defaults</h3>")
    if overrides:
        parts.append("<p>Command-line overrides: " + " ".join(f"<code>{_e(o)}</code>" for o in overrides) + "</p>")
    changed = changed_settings(config)
    if changed:
        body = "".join(f"<tr><td class=left>{_e(k)}</td><td class=left>{_e(v)}</td><td class=left>{_e(d)}</td></tr>"
                       for k, v, d in changed)
        parts.append("<table><tr><th class=left>setting</th><th class=left>this run</th>"
                     f"<th class=left>configs/config.yaml</th></tr>{body}</table>")
    if not overrides and not changed:
        parts.append("<p>None: the defaults of <code>configs/config.yaml</code>.</p>")
    return "\n".join(parts)


def _metrics_section(summary: Mapping[str, Any], metric_names: Sequence[str]) -> str:
    overall = summary.get("summary", {})
    empty = [m for m in metric_names if (overall.get(m) or {}).get("mean") is None]
    shown = [m for m in metric_names if m not in empty]  # no column of nulls
    posterior = summary.get("uncertainty") or {}
    has_mean = bool(posterior.get("psnr_of_mean", {}).get("mean") is not None)
    head = ("<tr><th class=left>image</th>"
            + "".join(f"<th>{_e(METRIC_LABELS.get(m, m))} mean ± std over runs</th><th>best (oracle)</th>"
                      f"<th>best (residual)</th>" for m in shown)
            + ("<th>PSNR of the posterior mean</th>" if has_mean else "")
            + "<th>residual ‖A(x̂) − y‖</th><th>residual / (σ√m), expected ≈ 1</th></tr>")
    body = []
    images = summary.get("images", {})
    for image_id, entry in list(images.items())[:SCREENFUL]:
        cells = "".join(f"<td>{_pm(entry.get(m), m)}</td><td>{_num(entry[m].get('best_oracle'), m)}</td>"
                        f"<td>{_num(entry[m].get('best_residual'), m)}</td>" for m in shown if m in entry)
        mean = (f"<td>{_num((entry.get('posterior') or {}).get('psnr_of_mean'), 'psnr')}</td>" if has_mean else "")
        body.append(f"<tr><td class=left>{_e(image_id)}: {_e(entry.get('name'))}</td>{cells}{mean}"
                    f"<td>{_pm(entry.get('residual'), '')}</td><td>{_pm(entry.get('residual_ratio'), '')}</td></tr>")
    if len(images) > SCREENFUL:
        body.append(f"<tr><td class=left colspan=99>… {len(images) - SCREENFUL} more images: <a href=\"eval.md\">"
                    "eval.md</a>, <a href=\"records.csv\">records.csv</a> and the cards below</td></tr>")
    cells = "".join(f"<td><b>{_pm(overall.get(m), m)}</b></td><td>{_num(overall.get(m, {}).get('best_oracle_mean'), m)}"
                    f"</td><td>{_num(overall.get(m, {}).get('best_residual_mean'), m)}</td>" for m in shown)
    mean = f"<td><b>{_pm(posterior.get('psnr_of_mean'), 'psnr')}</b></td>" if has_mean else ""
    body.append(f"<tr><th class=left>all images</th>{cells}{mean}<td>{_pm(summary.get('residual'), '')}</td>"
                f"<td><b>{_pm(summary.get('residual_ratio'), '')}</b></td></tr>")
    notes = [f"<b>{_e(METRIC_LABELS.get(m, m))}</b>: {_e(METRIC_DESCRIPTIONS.get(m, m))}" for m in shown]
    notes.append("<b>mean ± std over runs</b>: each sample is one draw from the posterior p(x | y); the row "
                 "averages the runs of one image, the last row averages the images (± std over images)")
    notes.append("<b>best (oracle)</b>: each image's best run by that metric against the ground truth (what the "
                 "DAPS tables report); <b>best (residual)</b>: the run with the smallest ‖A(x̂) − y‖, chosen "
                 "without the ground truth")
    notes.append(f"<b>residual / (σ√m)</b>: {_e(RESIDUAL_RATIO_NOTE)} (– without Gaussian noise)")
    if has_mean:
        notes.append("<b>PSNR of the posterior mean</b>: the pixel-wise mean of the runs, an estimate of E[x | y], "
                     "the minimum-mean-squared-error reconstruction. It is smoother and scores a higher PSNR than "
                     "any single sample, which carries the posterior's texture and grain by design")
    parts = ["<h2>Metrics</h2>"]
    if empty:
        parts.append(f"<p class=note>Not computed (null): {_e(', '.join(empty))}. LPIPS needs its weights "
                     "(<code>bash download.sh lpips</code>).</p>")
    if metric_names:
        parts.append(f"<table>{head}{''.join(body)}</table>")
    else:
        parts.append("<p>No ground truth, so no image metrics; the residual ‖A(x̂) − y‖ is in "
                     "<a href=\"metrics.json\">metrics.json</a>.</p>")
    parts.append("<ul class=note>" + "".join(f"<li>{n}</li>" for n in notes) + "</ul>")
    set_metrics = summary.get("set_metrics")
    if set_metrics:
        values = ", ".join(f"{n.upper()} {_num(set_metrics.get(n), n)}" for n in ("fid", "kid") if n in set_metrics)
        parts.append(f"<p>Set metrics over {set_metrics['num_samples']} samples against "
                     f"{set_metrics['num_references']} ground-truth images: {_e(values)}"
                     + (" (biased: small set; compare only runs of the same size)" if set_metrics.get(
                         "biased_small_set") else "") + ".</p>")
    if summary.get("failed"):
        parts.append("<p>Diverged samples: " + ", ".join(
            f"image {f['image_id']} run {f['run']} at step {f['step']}" for f in summary["failed"]) + ".</p>")
    return "\n".join(parts)


def _cards_section(root: Path, summary: Mapping[str, Any], metric_names: Sequence[str], width: int) -> str:
    cards = []
    for position, (image_id, entry) in enumerate(summary.get("images", {}).items()):
        i, lazy = int(image_id), position >= SCREENFUL  # beyond the first screenful: loaded when scrolled to

        def figure(relative: str, caption: str = "", size: int | None = width, lazy: bool = lazy) -> str:
            return _img(root, relative, caption, size, lazy)

        figures = [figure(f"inputs/{i:05d}_gt.png", "ground truth"),
                   figure(f"inputs/{i:05d}_measurement.png", "measurement y")]
        for run in entry.get("runs", []):
            r = run["run"]
            caption = "diverged" if run.get("failed_at_step") is not None else metric_caption(run, metric_names)
            figures.append(figure(f"samples/{i:05d}_run{r:04d}.png", f"sample, run {r}\n{caption}"))
        posterior = entry.get("posterior") or {}
        psnr = posterior.get("psnr_of_mean")
        figures.append(figure(f"uncertainty/{i:05d}_mean.png",
                              "posterior mean" + (f"\nPSNR {psnr:.2f}" if isinstance(psnr, float) else "")))
        figures.append(figure(f"uncertainty/{i:05d}_std.png", "posterior std (heat map)"))
        strips = sorted((root / "trajectory").glob(f"{i:05d}_run*.png"))
        trajectory = ""
        if strips:  # the first run's progress (and its animation, with save_traj_video)
            run = int(strips[0].stem.split("_run")[1])
            trajectory = (figure(f"trajectory/{strips[0].name}", f"trajectory of run {run}", None)
                          + figure(f"trajectory/{strips[0].stem}.gif", f"animation of run {run}", None))
        cards.append(f'<div class=card><h3>{_e(image_id)}: {_e(entry.get("name"))}</h3>{"".join(figures)}'
                     f'<div>{trajectory}</div></div>')
    return "<h2>Per image</h2>\n<div class=cards>" + "\n".join(cards) + "</div>"


def _uncertainty_section(root: Path, u: Mapping[str, Any] | None) -> str:
    if not u:
        return ""
    parts = [f"<h2>Posterior uncertainty</h2><p>{u['images']} image(s) with at least {u['runs']} runs each. The "
             "std maps show the per-pixel standard deviation of the samples (RMS over RGB, image units: images span "
             f"[−1, 1]; black 0 → white {u['heat_map_max']:.3g}). Each std map rests on {u['runs']} runs: its "
             f"per-pixel values carry a relative sampling error of about 1/√(2(n − 1)) = "
             f"{uncertainty.std_relative_error(u['runs']):.2f}, so fine structure in it is mostly estimation noise "
             "at small n.</p>"]
    if u.get("coverage_1std") is not None:
        rows = "".join(f"<tr><td>{k} std</td><td>{u[f'coverage_{k}std']:.3f}</td><td>{u[f'calibrated_{k}std']:.3f}"
                       f"</td><td>{u[f'gaussian_{k}std']:.3f}</td></tr>" for k in (1, 2))
        parts.append("<table><tr><th>pixels with |x − mean| within</th><th>observed</th>"
                     f"<th>exact sampler, n = {u['runs']}</th><th>Gaussian limit</th></tr>{rows}</table>")
        parts.append("<p class=note>Below the exact-sampler column the sampler is over-confident (too little "
                     "spread); above it, under-confident.</p>")
        parts.append(_img(root, "uncertainty/calibration.png", "calibration of the posterior std"))
    return "\n".join(parts)


def _files_line(root: Path) -> str:
    """Links to the run's text results that exist (the page is written before the current invocation ends)."""
    names = [n for n in ("config.yaml", "metrics.json", "eval.md", "records.csv", "protocol.json",
                         "provenance.json", "run.log") if (root / n).is_file()]
    return "<p class=note>Files: " + ", ".join(f'<a href="{n}">{n}</a>' for n in names) + ".</p>" if names else ""


def _status(invocation: Mapping[str, Any]) -> str:
    """'finished, exit code 0', 'stopped by an exception (see run.log)' or 'still running' (no end recorded)."""
    if not invocation.get("ended"):
        return "still running"
    code = invocation.get("exit_code")
    return "stopped by an exception (see run.log)" if code is None else f"finished, exit code {code}"


def _provenance_section(protocol: Mapping[str, Any] | None, provenance: Mapping[str, Any] | None) -> str:
    parts = ["<h2>Provenance</h2>"]
    if protocol:
        data = protocol.get("data") or {}
        items = [f"data: {_e(data.get('dataset'))} {_e(data.get('root') or data.get('name') or '')}"]
        if data.get("verified"):
            items.append(f"images verified by SHA-256 against {_e(data.get('list_file'))} "
                         f"(list {_e(data.get('id_list'))})")
        items.append(f"operator state: {_e(protocol.get('operator_state'))}")
        items.append(f"seed {_e(protocol.get('seed'))}, {_e(protocol.get('num_runs'))} run(s) per image")
        for name, how in (protocol.get("metrics") or {}).items():
            text = how if isinstance(how, str) else ", ".join(f"{k}: {v}" for k, v in how.items())
            items.append(f"{_e(name)}: {_e(text)}")
        env = protocol.get("environment") or {}
        packages = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v)
        items.append(f"Python {_e(env.get('python'))}; {_e(packages)}")
        parts.append("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
    for invocation in (provenance or {}).get("invocations", []):
        wall = invocation.get("wall_s")
        calls = invocation.get("model_calls_per_sample")
        parts.append("<p>" + _e(" ".join(invocation.get("command", []))) + "<br>"
                     f"git {_e(invocation.get('git_commit'))}{' (dirty tree)' if invocation.get('git_dirty') else ''}; "
                     f"started {_e(invocation.get('started'))}, {_status(invocation)}"
                     + (f", wall time {wall:.1f} s" if isinstance(wall, (int, float)) else "")
                     + (f", {calls:g} model calls per sample" if isinstance(calls, (int, float)) else "") + "</p>")
    return "\n".join(parts)


def report_html(root: Path, summary: Mapping[str, Any], metric_names: Sequence[str]) -> str:
    """The page for the run directory ``root`` whose ``metrics.json`` content is ``summary``."""
    root = Path(root)
    config = _read(root / "config.yaml") or {}
    provenance = _read(root / "provenance.json")
    what = describe(config) if config else {}
    if what:
        what["sampler"] = sampler_label(config, provenance)
    title = f"{root.name}: " + " · ".join(what[k] for k in ("task", "sampler", "model", "dataset") if k in what)
    status = final_status(provenance)
    images = len(summary.get("images") or {})
    grid_columns = f"the first {SCREENFUL} of {images} images" if images > SCREENFUL else "images"
    resolution = ((config.get("data") or {}).get("resolution")) if config else None
    width = max(128, int(resolution)) if isinstance(resolution, int) else 128
    sections = [
        f"<h1>{_e(title)}</h1>",
        f"<p class=status>Status: <b>{_e(status)}</b> (the last invocation; all of them under Provenance)</p>"
        if status else "",
        _settings_section(root, config, provenance) if config else "",
        _metrics_section(summary, metric_names),
        "<h2>Overview</h2>" + _img(root, "grid_results.png", f"columns: {grid_columns}; rows: ground truth, "
                                   "measurement, each run's sample, posterior mean and std (when num_runs ≥ 2)"),
        _cards_section(root, summary, metric_names, width),
        _uncertainty_section(root, summary.get("uncertainty")),
        _provenance_section(summary.get("protocol"), provenance),
        _files_line(root),
    ]
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(s for s in sections if s) + "\n</body></html>\n")
