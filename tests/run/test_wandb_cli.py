"""`posterior_sample.py wandb=true` end to end in W&B offline mode: what the run folder holds, and that a
W&B failure leaves a complete local run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.fixtures import REPO

pytest.importorskip("wandb")
from tests.helpers.wandb_log import decode  # noqa: E402

TINY = ["data.resolution=16", "data.end_id=2", "num_runs=1", "sampler.annealing_scheduler_config.num_steps=3",
        "task.gaussian.mcmc_sampler_config.num_steps=2", "eval_fn_list=[psnr]", "show_progress=false", "batch_size=1"]


def run_cli(tmp_path: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    environ.update(WANDB_DIR=str(tmp_path), WANDB_SILENT="true", **env)
    return subprocess.run([sys.executable, "posterior_sample.py", *TINY, f"save_dir={tmp_path / 'results'}",
                           *overrides], cwd=REPO, capture_output=True, text=True, timeout=240, env=environ)


def test_offline_run_logs_config_curves_metrics_and_media(tmp_path):
    result = run_cli(tmp_path, "wandb=true", "wandb_mode=offline", "project_name=daps-cli")
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    logged = decode(folder)
    run_dir = tmp_path / "results" / "demo"
    assert logged["project"] == "daps-cli" and logged["config"]["task_group"] == "gaussian"
    assert {t.split(":")[0] for t in logged["tags"]} >= {"task", "model", "sampler", "task_group"}
    steps = [h for h in logged["history"] if "sampling/step" in h]
    assert [h["sampling/step"] for h in steps] == list(range(6))  # 2 batches x 3 annealing steps
    assert all(h["sampling/sigma"] > 0 and h["sampling/residual"] >= 0 for h in steps)
    assert sorted(h["sample/image_id"] for h in logged["history"] if "sample/index" in h) == [0, 1]
    # each batch's samples are logged when the batch is written, before the next batch samples
    order = [("sample" if "sample/index" in h else h.get("sampling/step")) for h in logged["history"]]
    assert order.index("sample") < order.index(3)
    assert "gaussian" in logged["config"]["task"] and "pixel" not in logged["config"]["task"]  # the selected group
    saved_log = (folder / "files" / "run.log").read_text()  # the terminal log, as far as it got at the end
    assert saved_log and (run_dir / "run.log").read_text().startswith(saved_log)
    summary = json.loads((run_dir / "metrics.json").read_text())["summary"]["psnr"]
    assert logged["summary"]["psnr_mean"] == pytest.approx(summary["mean"])
    assert logged["summary"]["run_dir"] == str(run_dir.resolve())
    assert list((folder / "files" / "media" / "images").glob("grid_results_*.png"))


def test_wandb_failure_degrades_to_a_local_run(tmp_path):
    # online mode without an API key: wandb.init fails; the run must finish with all its results
    result = run_cli(tmp_path, "wandb=true", "wandb_mode=online", WANDB_API_KEY="", HOME=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "W&B tracking is off for this run" in result.stderr
    assert json.loads((tmp_path / "results" / "demo" / "metrics.json").read_text())["num_samples"] == 2
