"""Markdown, CSV and aligned-text tables: the one writer of the accuracy tool, the benchmark and the summaries."""
from __future__ import annotations

import csv
import io
from typing import Any, Mapping, Sequence


def markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A Markdown table (cells already formatted), ending with a newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def aligned(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A plain-text table for the terminal: columns left-aligned, two spaces apart."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *body)]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in [header, *body])


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV with a header line of ``columns``; keys of a row outside ``columns`` are left out, None is empty."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return out.getvalue()
