"""commands/{pixel,ldm,sd,dps}.sh: the printed multiruns compose into valid jobs covering the paper's
tables (ldm.sh: LatentDAPS and, on the same images, PSLD and ReSample); missing checkpoints stop the script with the
download step; the launcher variable is honoured."""
from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from common.config.validate import validate
from tests.helpers.fixtures import REPO

ALL_TASKS = {"down_sampling", "inpainting", "inpainting_rand", "gaussian_blur", "motion_blur", "nonlinear_blur",
             "hdr", "phase_retrieval"}
LINEAR_TASKS = {"down_sampling", "inpainting", "inpainting_rand", "gaussian_blur", "motion_blur"}
SCRIPTS = {  # script -> (datasets, model per dataset, {sampler: its tasks}, task_group)
    "pixel": ({"ffhq": "ffhq256ddpm", "imagenet": "imagenet256ddpm"}, {"edm_daps": ALL_TASKS}, "pixel"),
    "ldm": ({"ffhq": "ffhq256ldm", "imagenet": "imagenet256ldm"},
            {"latent_edm_daps": ALL_TASKS, "psld": LINEAR_TASKS, "resample": ALL_TASKS, "dcdp": ALL_TASKS}, "ldm"),
    "sd": ({"ffhq": "stable-diffusion-v1.5", "imagenet": "stable-diffusion-v1.5"}, {"sd_edm_daps": ALL_TASKS}, "sd"),
    "dps": ({"ffhq": "ffhq256ddpm"}, {"dps": ALL_TASKS - {"hdr"}}, "pixel"),
}


def run_script(name: str, *args: str, root: Path = REPO, env: dict[str, str] | None = None):
    return subprocess.run(["bash", str(root / "commands" / f"{name}.sh"), *args], cwd=root, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def printed_commands(output: str) -> list[list[str]]:
    """The argument lists after ``posterior_sample.py -m`` of the printed command lines."""
    out = []
    for line in output.splitlines():
        if "posterior_sample.py" in line:
            words = shlex.split(line)
            assert words[0].startswith("CUDA_VISIBLE_DEVICES=") and words[2:4] == ["posterior_sample.py", "-m"]
            out.append(words[4:])
    return out


def jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs of one multirun: the sweep overrides expanded as Hydra's basic sweeper does."""
    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.product(*choices)]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_dry_run_composes_into_the_papers_jobs(script, tmp_path):
    result = run_script(script, "0,1", str(tmp_path / "out"), "--dry-run")
    assert result.returncode == 0, result.stderr
    models, samplers, task_group = SCRIPTS[script]
    commands = printed_commands(result.stdout)
    # per dataset and sampler: the one-sample tasks, then phase retrieval x 4 runs where the sampler runs it
    assert len(commands) == len(models) * sum(1 + ("phase_retrieval" in tasks) for tasks in samplers.values())
    seen = set()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        for command in commands:
            assert "hydra/launcher=basic" in command and "gpu=0" in command
            for job in jobs([o for o in command if not o.startswith("hydra")]):
                cfg = OmegaConf.to_container(compose("config", overrides=job), resolve=True)
                assert validate(cfg) == [], (job, validate(cfg))
                dataset = Path(cfg["data"]["root"]).name.removeprefix("test-")
                task = next(o.split("=", 1)[1] for o in job if o.startswith("task="))
                assert f"model={models[dataset]}" in job
                assert cfg["sampler"]["name"] in samplers and cfg["task_group"] == task_group
                assert cfg["num_runs"] == (4 if task == "phase_retrieval" else 1)
                assert cfg["save_dir"] == str(tmp_path / "out" / script)
                seen.add((dataset, cfg["sampler"]["name"], task))
    assert seen == {(d, s, t) for d in models for s, tasks in samplers.items() for t in tasks}
    needed = [line.split()[2] for line in result.stdout.splitlines() if line.startswith("# needs ")]
    assert "dataset/test-ffhq" in needed and any(p.endswith("lpips_weights.pt") for p in needed)


def test_local_gpus_launcher_declares_one_ray_gpu_per_listed_gpu(tmp_path):
    result = run_script("pixel", "0,1,2", str(tmp_path), "--dry-run", "data.end_id=10", env={"LAUNCHER": "local_gpus"})
    assert result.returncode == 0
    for command in printed_commands(result.stdout):
        assert command[:2] == ["hydra/launcher=local_gpus", "hydra.launcher.ray.init.num_gpus=3"]
        assert command[-1] == "data.end_id=10"  # extra overrides go to every job, last (they win)
    assert all(line.startswith("CUDA_VISIBLE_DEVICES=0,1,2 ") for line in result.stdout.splitlines()
               if "posterior_sample.py" in line)


def _sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "commands", root / "commands")
    return root


def test_missing_checkpoint_stops_with_the_download_step(tmp_path):
    root = _sandbox(tmp_path)
    (root / "dataset" / "test-ffhq").mkdir(parents=True)
    result = run_script("dps", "0", "out", root=root, env={"TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 1
    assert "error: missing checkpoints/ffhq256.pt: fetch it with `bash download.sh models`" in result.stderr
    assert f"error: missing {tmp_path}/torch/hub/checkpoints/lpips_weights.pt: fetch it with `bash download.sh lpips`" \
        in result.stderr
    assert "dataset/test-ffhq" not in result.stderr and "nothing was started" in result.stderr
    assert not (root / "out").exists()


def test_present_inputs_start_the_multiruns_on_the_listed_gpus(tmp_path):
    root = _sandbox(tmp_path)
    for path in ("checkpoints/ffhq256.pt", "checkpoints/GOPRO_wVAE.pth", "torch/hub/checkpoints/vgg16-397923af.pth",
                 "torch/hub/checkpoints/lpips_weights.pt"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).touch()
    (root / "dataset" / "test-ffhq").mkdir(parents=True)
    log = tmp_path / "calls.log"
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$CUDA_VISIBLE_DEVICES $PWD $*" >> {log}\n')
    fake.chmod(0o755)
    result = run_script("dps", "2,3", "out", root=root,
                        env={"TORCH_HOME": str(root / "torch"), "PYTHON": str(fake), "LAUNCHER": "basic"})
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    assert all(c.startswith(f"2,3 {root} posterior_sample.py -m hydra/launcher=basic gpu=0 ") for c in calls)
    assert f"save_dir={root}/out/dps" in calls[0] and "task=phase_retrieval" in calls[1]
    assert "one after another on GPU 2" in result.stderr


@pytest.mark.parametrize("args, env, message", [
    ((), {}, "usage: dps.sh GPUS OUT_ROOT"),
    (("cuda:0", "out"), {}, "GPUS must be a comma-separated list of GPU ids"),
    (("0", "out"), {"LAUNCHER": "kubernetes"}, "LAUNCHER='kubernetes' is not valid"),
])
def test_bad_arguments_are_refused(args, env, message):
    result = run_script("dps", *args, "--dry-run", env=env) if args else run_script("dps", env=env)
    assert result.returncode == 2 and message in result.stderr
