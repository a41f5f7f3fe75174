"""Hydra multiruns of the tiny demo (basic and submitit_local launchers), the SLURM presets, the Ray preset.

A submitit_local job unpickles the task function and its config in a fresh process, as SLURM and Ray jobs
do, so a finished submitit_local sweep shows both pickle. (submitit_local starts every job at once with no
GPU assigned: for tests only.)
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import REPO

TINY = ["data.resolution=16", "data.end_id=1", "sampler.annealing_scheduler_config.num_steps=2",
        "task.pixel.mcmc_sampler_config.num_steps=2", "eval_fn_list=[psnr]", "show_progress=false",
        "save_traj=false"]


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def hydra_run(*args: str, timeout: int = 240, cwd: Path = REPO, python: str = sys.executable):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run([python, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def check_two_jobs(save_dir: Path) -> None:
    """Both jobs finished, each in its own run directory named from its overrides."""
    sweep = save_dir / "demo"
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 2, sorted(os.listdir(sweep))
    for seed, run in zip((1, 2), runs):
        parts = run.name.split(",")
        assert f"seed={seed}" in parts and "data.resolution=16" in parts and "eval_fn_list=[psnr]" in parts
        assert not any(p.startswith(("show_progress=", "save_dir=")) for p in parts)  # excluded keys
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == seed
        summary = json.loads((run / "metrics.json").read_text())
        assert summary["num_samples"] == 1 and summary["summary"]["psnr"]["mean"] > 0
    assert (sweep / "multirun.yaml").is_file()


@pytest.mark.slow
def test_basic_launcher_sweep_gives_each_job_its_run_directory(tmp_path):
    result = hydra_run("posterior_sample.py", "-m", *TINY, f"save_dir={tmp_path}", "seed=1,2")
    assert result.returncode == 0, result.stderr[-3000:]
    check_two_jobs(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not has("hydra_plugins.hydra_submitit_launcher"),
                    reason="hydra-submitit-launcher not installed (pip install -r requirements-launchers.txt)")
def test_submitit_local_sweep_completes_both_jobs(tmp_path):
    result = hydra_run("posterior_sample.py", "-m", "hydra/launcher=submitit_local", *TINY,
                       f"save_dir={tmp_path}", "seed=1,2")
    job_logs = "".join(f"\n--- {p}\n{p.read_text()[-3000:]}" for p in (tmp_path / "demo").glob(".submitit/*/*.err"))
    assert result.returncode == 0, result.stderr[-6000:] + job_logs
    check_two_jobs(tmp_path)
    assert len(list((tmp_path / "demo" / ".submitit").glob("*/*_result.pkl"))) == 2


@pytest.mark.skipif(not has("hydra_plugins.hydra_submitit_launcher"),
                    reason="hydra-submitit-launcher not installed (pip install -r requirements-launchers.txt)")
def test_slurm_presets_compose():
    launchers = {}
    for preset in ("slurm", "slurm_dp"):
        result = hydra_run("posterior_sample.py", f"hydra/launcher={preset}", "--cfg", "hydra", timeout=60)
        assert result.returncode == 0, result.stderr[-3000:]
        launchers[preset] = yaml.safe_load(result.stdout)["hydra"]["launcher"]
    slurm, dp = launchers["slurm"], launchers["slurm_dp"]
    assert slurm["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (slurm["gpus_per_node"], slurm["tasks_per_node"], slurm["max_num_timeout"]) == (1, 1, 3)
    assert slurm["partition"] == "${oc.env:SLURM_PARTITION,null}" and slurm["array_parallelism"] > 1
    assert dp["_target_"] == slurm["_target_"] and dp["max_num_timeout"] == 3  # inherits the slurm preset
    assert (dp["tasks_per_node"], dp["gpus_per_task"], dp["gpus_per_node"]) == (4, 1, None)


RAY_APP = """
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path=".", config_name="app")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "visible.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))


if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
@pytest.mark.skipif(not has("hydra_plugins.hydra_ray_launcher"),
                    reason="hydra-ray-launcher not installed (pip install -r requirements-launchers.txt)")
def test_local_gpus_preset_gives_each_job_its_own_gpu(tmp_path):
    (tmp_path / "app.py").write_text(RAY_APP)
    (tmp_path / "app.yaml").write_text(textwrap.dedent(f"""
        x: 0
        hydra:
          searchpath: [file://{REPO / 'configs'}]
          sweep: {{dir: {tmp_path / 'sweep'}, subdir: "${{hydra.job.override_dirname}}"}}
        """))
    # two logical GPUs declared on a machine that may have none; Ray sets CUDA_VISIBLE_DEVICES per job
    result = hydra_run("app.py", "-m", "hydra/launcher=local_gpus", "hydra.launcher.ray.init.num_gpus=2",
                       "+hydra.launcher.ray.init.num_cpus=2", "x=1,2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = {p.parent.name: p.read_text() for p in (tmp_path / "sweep").glob("*/visible.txt")}
    assert set(seen) == {"x=1", "x=2"}
    assert sorted(seen.values()) == ["0", "1"]
