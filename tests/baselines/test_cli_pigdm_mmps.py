"""ΠGDM and MMPS from the CLI on the offline demo (Gaussian prior, ×4 down-sampling, 16×16): a run writes its
samples and metrics, and a rerun resumes without recomputing finished samples."""
from __future__ import annotations

import json

import pytest

from common.run import job
from tests.helpers.cli import compose_config


@pytest.mark.parametrize("sampler", ["pigdm", "mmps"])
def test_demo_run_and_resume(tmp_path, capsys, sampler):
    overrides = [f"sampler={sampler}", "sampler.num_steps=3", "data.resolution=16", "data.end_id=2", "batch_size=2",
                 "num_runs=1", "eval_fn_list=[psnr]", "show_progress=false", "save_traj=false",
                 f"save_dir={tmp_path}", "name=run"]
    run_dir = tmp_path / "run"
    assert job.run(compose_config(overrides), run_dir) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["summary"]["psnr"]["mean"] > 10
    first = {p.name: p.stat().st_mtime_ns for p in (run_dir / "samples").iterdir()}
    assert sorted(first) == ["00000_run0000.png", "00001_run0000.png"]
    (run_dir / "records" / "00001_run0000.json").unlink()
    assert job.run(compose_config(overrides), run_dir) == 0
    assert "resuming: 1 of 2" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in (run_dir / "samples").iterdir()}
    assert after["00000_run0000.png"] == first["00000_run0000.png"]
    assert after["00001_run0000.png"] != first["00001_run0000.png"]
