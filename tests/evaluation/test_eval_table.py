"""eval.md's table leaves out what says nothing: ± std over one run or one image, best-of-one-run columns, a
metric with no value (LPIPS without its weights) as a column of nulls."""
from __future__ import annotations

from common.evaluation.summary import markdown_table, summarize


def rec(image_id: int, run: int, psnr: float, residual: float) -> dict:
    return {"image_id": image_id, "run": run, "name": f"im{image_id}", "psnr": psnr, "lpips": None,
            "residual": residual, "residual_ratio": 2 * residual, "failed_at_step": None}


def table(records: list[dict]) -> list[str]:
    summary = summarize(records, ["psnr", "lpips"], {})
    return markdown_table(summary, ["psnr", "lpips"]).splitlines()


def test_one_run_per_image_shows_values_and_the_spread_over_images():
    lines = table([rec(0, 0, 20.0, 0.5), rec(1, 0, 24.0, 0.25)])
    assert lines[:5] == ["| image | name | psnr | residual | residual/(σ√m) |", "|---|---|---|---|---|",
                         "| 0 | im0 | 20.0000 | 0.5000 | 1.0000 |", "| 1 | im1 | 24.0000 | 0.2500 | 0.5000 |",
                         "| **all** |  | 22.0000 ± 2.0000 | 0.3750 ± 0.1250 | 0.7500 ± 0.2500 |"]
    text = "\n".join(lines)
    assert "± 0.0000" not in text and "null ±" not in text and "best (oracle)" not in text
    assert "lpips: no value for any sample (null in metrics.json; for LPIPS: `bash download.sh lpips`)." in lines


def test_one_image_one_run_has_no_plus_minus():
    lines = table([rec(0, 0, 20.0, 0.5)])
    assert lines[2:4] == ["| 0 | im0 | 20.0000 | 0.5000 | 1.0000 |", "| **all** |  | 20.0000 | 0.5000 | 1.0000 |"]
    assert any(line.startswith("residual/(σ√m): normalised residual") and "≈ 1 fits" in line for line in lines)


def test_several_runs_keep_the_statistics_over_runs():
    lines = table([rec(0, 0, 20.0, 0.5), rec(0, 1, 22.0, 0.25)])
    assert lines[0] == ("| image | name | psnr mean ± std | psnr best (oracle) | psnr best (residual) | "
                        "residual mean ± std | residual/(σ√m) mean ± std |")
    assert lines[2] == "| 0 | im0 | 21.0000 ± 1.0000 | 22.0000 | 22.0000 | 0.3750 ± 0.1250 | 0.7500 ± 0.2500 |"
    # one image: no spread over images
    assert lines[3] == "| **all** |  | 21.0000 | 22.0000 | 22.0000 | 0.3750 | 0.7500 |"
    assert any(line.startswith("best (oracle):") for line in lines)


def test_the_terminal_copy_lists_a_screenful_and_averages_every_image():
    records = [rec(i, 0, 20.0 + i, 0.5) for i in range(40)]
    summary = summarize(records, ["psnr"], {})
    lines = markdown_table(summary, ["psnr"], max_images=16).splitlines()
    rows = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 16 and "| … 24 more images (eval.md, records.csv) |" in lines[18]
    assert lines[19].startswith("| **all** |  | 39.5000 ± ")  # the mean of all 40 images
    assert len(markdown_table(summary, ["psnr"]).splitlines()) > 40
