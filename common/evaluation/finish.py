"""Finishing a run folder: everything that is computed from the stored samples once sampling stops.

:func:`finish_run` reads the folder's records and files (storage: :class:`~common.results.run_dir.RunDirectory`)
and writes ``metrics.json``, ``eval.md``, ``records.csv``, the uncertainty maps, ``grid_results.png`` and
``report.html``; :func:`refresh_report` rewrites the page once the invocation has ended. The experiment loop calls
:func:`finish_run` at the end of a run and when a run stops early, so that a failing run keeps every finished result.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from common.evaluation.figures import run_grid
from common.evaluation.posterior_maps import compute_set_metrics, write_uncertainty
from common.evaluation.report_page import report_html
from common.evaluation.summary import markdown_table, records_csv, summarize
from common.results.run_dir import RunDirectory, atomic_write_bytes, png_bytes


def finish_run(directory: RunDirectory, metric_names: Sequence[str], image_names: dict[int, str] | None = None, *,
               set_metric_names: Sequence[str] = (), device: torch.device | str = "cpu") -> dict[str, Any]:
    """metrics.json, eval.md, records.csv, the uncertainty maps, grid_results.png and report.html from the files on
    disk; returns the metrics dict. ``set_metric_names`` (fid, kid) are computed over all samples."""
    records = directory.records()
    summary = summarize(records, metric_names, image_names or {})
    summary["uncertainty"] = write_uncertainty(directory, records, summary)
    if set_metric_names:
        summary["set_metrics"] = compute_set_metrics(directory, records, set_metric_names, device)
    protocol = directory.read_json("protocol.json")
    if protocol is not None:
        summary["protocol"] = protocol
    directory.write_json("metrics.json", summary, indent=2)
    directory.write_text("eval.md", markdown_table(summary, metric_names))
    directory.write_text("records.csv", records_csv(records, metric_names, summary))
    grid = run_grid(directory.root, summary, metric_names)
    if grid is not None:
        atomic_write_bytes(directory.root / "grid_results.png", png_bytes(grid))
    directory.write_text("report.html", report_html(directory.root, summary, metric_names))
    return summary


def refresh_report(directory: RunDirectory) -> None:
    """Rewrite ``report.html`` from the folder's ``metrics.json`` and ``provenance.json`` as they are now (after the
    invocation has recorded its end, so the page shows the final status and exit code); nothing without metrics.json."""
    summary = directory.read_json("metrics.json")
    if summary is not None:
        directory.write_text("report.html", report_html(directory.root, summary, list(summary.get("summary", {}))))
