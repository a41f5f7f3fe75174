"""Aggregation over runs: mean ± std, oracle vs residual-selected best, the per-run CSV, what is recorded."""
import csv
import io
import json
import math

import pytest
import torch

from common.evaluation.finish import finish_run
from common.evaluation.metrics import describe_metrics
from common.evaluation.summary import summarize
from common.results.run_dir import RunDirectory
from tests.helpers.evaluation import FixedMask, TensorImages, exact_daps, prior_images, run, small_prior

pytestmark = pytest.mark.usefixtures("one_thread")


def records():
    """Image 0: run 1 has the best PSNR, run 2 the smallest residual; image 1: run 1 diverged."""
    rows = [(0, 0, 20.0, 0.30), (0, 1, 26.0, 0.50), (0, 2, 23.0, 0.10), (1, 0, 30.0, 0.20), (1, 1, None, None)]
    return [{"image_id": i, "run": r, "name": f"im{i}", "psnr": p, "residual": res,
             "failed_at_step": None if p is not None else 7} for i, r, p, res in rows]


def test_oracle_and_residual_selections_differ_on_a_constructed_case():
    summary = summarize(records(), ["psnr"], {})
    image = summary["images"]["0"]["psnr"]
    assert image["best_oracle"] == 26.0 and image["best_residual"] == 23.0  # not the same run
    assert image["mean"] == pytest.approx(23.0) and image["std"] == pytest.approx(math.sqrt(6.0))
    assert summary["images"]["0"]["residual"]["best_run"] == 2 and summary["images"]["0"]["residual"]["min"] == 0.1
    assert summary["images"]["1"]["psnr"]["best_oracle"] == summary["images"]["1"]["psnr"]["best_residual"] == 30.0
    overall = summary["summary"]["psnr"]
    assert overall["best_oracle_mean"] == 28.0 and overall["best_residual_mean"] == 26.5
    assert overall["mean"] == pytest.approx((23.0 + 30.0) / 2)
    assert summary["failed"] == [{"image_id": 1, "run": 1, "step": 7}]
    assert summary["residual"]["mean"] == pytest.approx(((0.3 + 0.5 + 0.1) / 3 + 0.2) / 2)


def test_run_directory_writes_csv_table_and_valid_json(tmp_path):
    directory = RunDirectory(tmp_path / "run")
    for rec in records():
        directory.write_sample(rec["image_id"], rec["run"], torch.zeros(3, 4, 4), dict(rec), save_image=False)
    summary = finish_run(directory, ["psnr"], {0: "first", 1: "second"})
    json.loads((directory.root / "metrics.json").read_text())  # valid JSON despite the diverged sample
    rows = list(csv.DictReader(io.StringIO((directory.root / "records.csv").read_text())))
    assert [(r["image_id"], r["run"]) for r in rows] == [("0", "0"), ("0", "1"), ("0", "2"), ("1", "0"), ("1", "1")]
    assert [r["best_oracle_psnr"] for r in rows[:3]] == ["0", "1", "0"]
    assert [r["best_residual"] for r in rows[:3]] == ["0", "0", "1"]
    assert rows[4]["psnr"] == "" and rows[4]["failed_at_step"] == "7" and rows[0]["name"] == "first"
    table = (directory.root / "eval.md").read_text()
    assert "psnr best (oracle) | psnr best (residual)" in table
    assert "| 0 | first | 23.0000 ± 2.4495 | 26.0000 | 23.0000 |" in table
    assert "image 1 run 1 at step 7" in table
    assert summary["uncertainty"] is None  # one-run data has no float samples


def test_a_run_records_protocol_metric_backbone_and_versions(tmp_path):
    import importlib.metadata
    mask = torch.ones(1, 3, 8, 8)
    directory, summary = run(TensorImages(prior_images(2)), FixedMask(mask, 0.05), small_prior(),
                             exact_daps(0.05, num_steps=3, mcmc_steps=2), tmp_path / "run", num_runs=3,
                             metrics=("psnr", "lpips"))
    saved = json.loads((directory.root / "metrics.json").read_text())
    recorded = saved["protocol"]
    assert recorded == json.loads((directory.root / "protocol.json").read_text())
    assert recorded["environment"]["packages"]["torch"] == importlib.metadata.version("torch")
    assert recorded["metrics"]["lpips"] == describe_metrics(["lpips"])["lpips"]
    assert "vgg16" in recorded["metrics"]["lpips"]["backbone"] and recorded["seed"] == 3
    assert recorded["data"]["images"] == {"0": "image0", "1": "image1"}
    table = (directory.root / "eval.md").read_text()
    assert "LPIPS: piq.ContentLoss" in table and f"torch {importlib.metadata.version('torch')}" in table
    # three runs per image: every run in the CSV, and the posterior maps in the grid (2 extra rows)
    assert len((directory.root / "records.csv").read_text().splitlines()) == 1 + 2 * 3
    assert summary["uncertainty"]["runs"] == 3
    from PIL import Image
    with Image.open(directory.root / "grid_results.png") as grid:
        assert 7 * 128 < grid.height < 8 * 128 + 300  # gt, measurement, 3 runs, mean, std: tiles enlarged to 128 px
