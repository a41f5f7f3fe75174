"""Hydra multiruns of the tiny demo (basic and submitit_local launchers), the SLURM presets, the Ray preset.

A submitit_local job unpickles the task function and its config in a fresh process, as SLURM and Ray jobs
do, so a finished submitit_local sweep shows both pickle. (submitit_local starts every job at once with no
GPU assigned: for tests only.)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers.fixtures import REPO

TINY = ["data.resolution=16", "data.end_id=1", "num_runs=1", "sampler.annealing_scheduler_config.num_steps=2",
        "task.gaussian.mcmc_sampler_config.num_steps=2", "eval_fn_list=[psnr]", "show_progress=false",
        "save_traj=false"]


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
    summary = result.stdout[result.stdout.index("sweep summary: 2 of 2 job(s) ok"):].splitlines()
    assert [line.split() for line in summary[1:3]] == [["#0", "ok", "seed=1"], ["#1", "ok", "seed=2"]]


@pytest.mark.slow
def test_submitit_local_sweep_completes_both_jobs(tmp_path):
    result = hydra_run("posterior_sample.py", "-m", "hydra/launcher=submitit_local", *TINY,
                       f"save_dir={tmp_path}", "seed=1,2")
    job_logs = "".join(f"\n--- {p}\n{p.read_text()[-3000:]}" for p in (tmp_path / "demo").glob(".submitit/*/*.err"))
    assert result.returncode == 0, result.stderr[-6000:] + job_logs
    check_two_jobs(tmp_path)
    assert len(list((tmp_path / "demo" / ".submitit").glob("*/*_result.pkl"))) == 2


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


# ----------------------------------------------------------------------------------- summary, exit status, signals
@pytest.mark.slow
def test_sweep_ends_with_a_summary_and_fails_when_a_job_failed(tmp_path):
    """The README's sweep on the demo (all four jobs run), plus a job refused by validation: summary, exit 1."""
    result = hydra_run("posterior_sample.py", "-m", *TINY, f"save_dir={tmp_path}", "task=inpainting,down_sampling",
                       "seed=1", "batch_size=1,0")
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    head = lines.index(next(line for line in lines if line.startswith("sweep summary:")))
    assert lines[head].startswith("sweep summary: 2 of 4 job(s) ok, 2 failed")
    jobs = [line.split() for line in lines[head + 1:head + 5]]
    assert [job[0] for job in jobs] == ["#0", "#1", "#2", "#3"]
    for job, (task, batch) in zip(jobs, [("inpainting", 1), ("inpainting", 0), ("down_sampling", 1),
                                         ("down_sampling", 0)]):
        overrides = job[2] if batch else job[4]
        assert job[1] == ("ok" if batch else "failed") and overrides.rstrip(":") == f"task={task},batch_size={batch}"
    assert lines[head + 2].endswith("batch_size=0 is not valid: need a positive integer")
    assert len(list((tmp_path / "demo").glob("*/metrics.json"))) == 2


SLOW = ["data.resolution=16", "data.end_id=1", "num_runs=1", "sampler.annealing_scheduler_config.num_steps=400",
        "task.gaussian.mcmc_sampler_config.num_steps=50", "eval_fn_list=[psnr]", "show_progress=false",
        "save_traj=false"]


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2])
def test_a_signal_stops_the_whole_sweep(tmp_path, signals):
    """SIGTERM in job #0 stops the sweep (job #1 never starts), rc 130, with the summary and how to resume; a second
    signal while the results and the summary are written gives no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen([sys.executable, "posterior_sample.py", "-m", *SLOW, f"save_dir={tmp_path}", "seed=1,2"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "demo").glob("*seed=1*/config.yaml")):  # job #0 is about to sample
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    for _ in range(signals):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "interrupted: the sweep stopped in job #0" in err and "Run the same command again to resume" in err
    assert "#0 failed (exit 130)" in err and "interrupted" in err
    assert not list((tmp_path / "demo").glob("*seed=2*")), "job #1 started after the signal"


def test_jobs_are_named_by_their_swept_values(tmp_path):
    """W&B names a sweep's job by the keys the sweep varies, read from the launcher's multirun.yaml."""
    from common.run.sweep import brief_name, swept_keys
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": [
        "task=inpainting,down_sampling", "seed=range(1,3)", "data.end_id=1", "+foo=choice(a,b)"]}}}))
    assert swept_keys(tmp_path) == {"task", "seed", "foo"}
    job = ["task=down_sampling", "seed=2", "data.end_id=1", "+foo=b"]
    assert brief_name(job, swept_keys(tmp_path)) == "task=down_sampling,seed=2,+foo=b"
    assert swept_keys(tmp_path / "missing") == set() and brief_name(job, set()) == ",".join(job)


#: posterior_sample.py run as the command line does, with SIGTERM sent to itself while job #0 resolves its config
SIGNAL_DURING_SETUP = """
import os, runpy, signal, sys
import common.run.job as job
resolve = job.resolve_config
def resolve_after_a_signal(cfg):
    os.kill(os.getpid(), signal.SIGTERM)
    return resolve(cfg)
job.resolve_config = resolve_after_a_signal
sys.argv = ["posterior_sample.py", *sys.argv[1:]]
runpy.run_path("posterior_sample.py", run_name="__main__")
"""


def test_a_signal_while_a_job_resolves_its_config_stops_the_sweep_cleanly(tmp_path):
    result = hydra_run("-c", SIGNAL_DURING_SETUP, "-m", *TINY, f"save_dir={tmp_path}", "seed=1,2")
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "sweep summary: 0 of 1 job(s) ok, 1 failed" in result.stderr
    assert "#0 failed (exit 130)" in result.stderr and "interrupted: the sweep stopped in job #0" in result.stderr


def test_job_folders_stay_inside_the_sweep_folder_whatever_the_values(tmp_path):
    """A swept value holding ``../`` (or odd characters) names a folder inside the sweep folder, hashed so that values
    stay distinct, and the summary names that folder; plain values keep their readable names."""
    from common.config.resolvers import job_folder
    assert job_folder("seed=1,task=inpainting") == "seed=1,task=inpainting"
    escape = job_folder("data.root=../../../../elsewhere/imgs")
    assert "/" not in escape and escape.startswith("data.root=.._.._.._.._elsewhere_imgs-")
    assert job_folder("name=a/b") != job_folder("name=a_b") and len(job_folder("x=" + "y" * 500)) == 255
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "a.png")
    save_dir = tmp_path / "save" / "dir"
    result = hydra_run("posterior_sample.py", "-m", *TINY, f"save_dir={save_dir}", "data=demo-ffhq",
                       "data.id_list=null", f"data.root={os.path.relpath(images, REPO)}", "seed=1,2")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.rglob("metrics.json"))
    assert len(runs) == 2 and all(run.parent == save_dir / "demo" for run in runs), runs
    assert f"[folder {runs[0].name}]" in result.stdout or f"[folder {runs[0].name}]" in result.stderr


def test_a_sweep_goes_beside_an_earlier_single_run_of_the_same_name(tmp_path):
    single = hydra_run("posterior_sample.py", *TINY, f"save_dir={tmp_path}")
    assert single.returncode == 0, single.stderr[-3000:]
    before = sorted(p.name for p in (tmp_path / "demo").iterdir())
    result = hydra_run("posterior_sample.py", "-m", *TINY, f"save_dir={tmp_path}", "seed=1,2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"this sweep's job folders go beside it, under {tmp_path}/demo.sweep" in result.stdout
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == before
    assert len(list((tmp_path / "demo.sweep").glob("*/metrics.json"))) == 2
