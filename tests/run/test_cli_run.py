"""The experiment CLI end to end on tiny images: run directory, determinism, resume, bad input."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from common.config import compose
from common.errors import ConfigError
from tests.helpers.cli import compose_config, run_cli
from tests.helpers.fixtures import REPO


def test_readme_spelling_with_plus_is_normalised():
    argv = ["posterior_sample.py", "+data=demo-ffhq", "++model=ffhq256ddpm", "+task=phase_retrieval",
            "+sampler=edm_daps", "task_group=pixel", "+foo=1", "num_runs=4"]
    assert compose.normalize_group_overrides(argv) == [
        "posterior_sample.py", "data=demo-ffhq", "model=ffhq256ddpm", "task=phase_retrieval", "sampler=edm_daps",
        "task_group=pixel", "+foo=1", "num_runs=4"]


def test_daps_readme_command_composes():
    cfg = compose_config(["+data=demo-ffhq", "+model=ffhq256ddpm", "+task=phase_retrieval", "+sampler=edm_daps",
                          "task_group=pixel", "save_dir=results", "num_runs=4",
                          "sampler.diffusion_scheduler_config.num_steps=5",
                          "sampler.annealing_scheduler_config.num_steps=200", "batch_size=10", "data.start_id=0",
                          "data.end_id=10", "name=phase_retrieval_demo", "gpu=0"])
    assert cfg.task.pixel.operator.name == "phase_retrieval" and cfg.model.name == "ddpm"
    assert cfg.sampler.annealing_scheduler_config.num_steps == 200 and cfg.data.end_id == 10


def test_run_directory_layout_and_metrics(tmp_path):
    code, run_dir = run_cli(tmp_path, [])
    assert code == 0
    for name in ("config.yaml", "metrics.json", "eval.md", "grid_results.png"):
        assert (run_dir / name).is_file(), name
    samples = sorted(p.name for p in (run_dir / "samples").iterdir())
    assert samples == ["00000_run0000.png", "00000_run0001.png", "00001_run0000.png", "00001_run0001.png"]
    assert len(list((run_dir / "trajectory").glob("*.png"))) == 4
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["num_samples"] == 4 and not metrics["failed"]
    for image in metrics["images"].values():
        assert len(image["runs"]) == 2
        assert image["psnr"]["best_oracle"] == max(r["psnr"] for r in image["runs"])
    assert metrics["summary"]["psnr"]["mean"] > 5
    assert "| **all** |" in (run_dir / "eval.md").read_text()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["resolution"] == 16 and saved["task"]["gaussian"]["operator"]["resolution"] == 16
    # the normalised residual ‖A(x̂) − y‖ / (σ√m), and the page written after the invocation closed
    assert 0 < metrics["residual_ratio"]["mean"] < 10 and "residual_ratio" in metrics["images"]["0"]
    page = (run_dir / "report.html").read_text()
    assert "Status: <b>finished, exit code 0</b>" in page and "still running" not in page
    assert "residual / (σ√m), expected ≈ 1" in page and "relative sampling error" in page


def test_trajectories_only_for_the_first_images(tmp_path):
    code, run_dir = run_cli(tmp_path, ["trajectory_images=1", "data.end_id=3", "num_runs=1"])
    assert code == 0
    assert sorted(p.name for p in (run_dir / "trajectory").glob("*.png")) == ["00000_run0000.png"]


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    _, a = run_cli(tmp_path, ["save_traj=false"], name="a")
    _, b = run_cli(tmp_path, ["save_traj=false"], name="b")
    _, c = run_cli(tmp_path, ["save_traj=false", "seed=7"], name="c")
    for p in sorted((a / "samples").iterdir()):
        assert p.read_bytes() == (b / "samples" / p.name).read_bytes()
    assert any(p.read_bytes() != (c / "samples" / p.name).read_bytes() for p in (a / "samples").iterdir())


def test_batch_size_does_not_change_results(tmp_path):
    _, a = run_cli(tmp_path, ["save_traj=false", "batch_size=1"], name="a")
    _, b = run_cli(tmp_path, ["save_traj=false", "batch_size=4"], name="b")
    ma, mb = (json.loads((d / "metrics.json").read_text())["summary"]["psnr"]["mean"] for d in (a, b))
    assert ma == pytest.approx(mb, abs=1e-4)


def test_resume_skips_finished_samples_and_refuses_other_config(tmp_path, capsys):
    code, run_dir = run_cli(tmp_path, ["save_traj=false"])
    first = {p.name: p.stat().st_mtime_ns for p in (run_dir / "samples").iterdir()}
    (run_dir / "records" / "00001_run0001.json").unlink()
    code, _ = run_cli(tmp_path, ["save_traj=false"])
    assert code == 0 and "resuming: 3 of 4" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in (run_dir / "samples").iterdir()}
    assert after["00000_run0000.png"] == first["00000_run0000.png"]
    assert after["00001_run0001.png"] != first["00001_run0001.png"]
    with pytest.raises(ConfigError, match="different config.*seed"):
        run_cli(tmp_path, ["save_traj=false", "seed=3"])


@pytest.mark.parametrize("overrides, message", [
    (["data=demo-ffhq", "data.root=/nonexistent/folder", "data.resolution=16"],
     r"data.root='/nonexistent/folder' is not a folder.*download.sh data"),
    (["data.start_id=3", "data.end_id=3"], r"data.start_id=3, data.end_id=3 select no images"),
    (["data.end_id=99"], r"need 0 <= start_id < end_id <= 4"),
    (["model=ffhq256ddpm", "model.checkpoint=/nowhere/ffhq256.pt", "data.resolution=256"],
     r"/nowhere/ffhq256.pt.*download.sh"),
    (["task_group=ldm"], r"task_group='ldm' does not fit model"),
    (["batch_size=0"], r"batch_size=0 is not valid"),
    (["eval_fn_list=[psnr,fid2]"], r"eval_fn_list=.*fid2.*psnr, ssim, lpips"),
    (["task.gaussian.mcmc_sampler_config.mc_algo=gibbs"],
     r"sampler\.mcmc_sampler_config\.mc_algo='gibbs' is not valid: choose one of langevin, hmc, mh"),
])
def test_bad_input_stops_before_sampling(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_cli(tmp_path, overrides)
    assert not (tmp_path / "run" / "samples").exists()


def test_unknown_group_option_lists_valid_ones():
    from hydra.errors import MissingConfigException
    with pytest.raises(MissingConfigException, match="inpainting"):
        compose_config(["task=inpaintin"])


@pytest.mark.slow
def test_subprocess_readme_spelling_and_multirun(tmp_path):
    args = [sys.executable, "posterior_sample.py", "+data=demo", "+task=down_sampling", "+sampler=edm_daps",
            "+model=demo", "data.resolution=16", "data.end_id=1", "sampler.annealing_scheduler_config.num_steps=2",
            "task.gaussian.mcmc_sampler_config.num_steps=2", "eval_fn_list=[psnr]", "show_progress=false",
            f"save_dir={tmp_path}", "name=sub"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| **all** |" in done.stdout and (tmp_path / "sub" / "metrics.json").is_file()
    sweep = subprocess.run([*args[:2], "-m", *args[2:-1], "name=sweep", "seed=1,2"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert sweep.returncode == 0, sweep.stderr
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())  # named from the overrides
    assert len(jobs) == 2 and "seed=1" in jobs[0].name and "seed=2" in jobs[1].name
    assert all((job / "metrics.json").is_file() for job in jobs)
    bad = subprocess.run([*args[:-1], "name=bad", "data.end_id=0"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "data.start_id=0, data.end_id=0" in bad.stderr
