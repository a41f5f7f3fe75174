"""Run the real entry point in-process through Hydra's compose API (tiny images, few steps)."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from common.config.compose import normalize_group_overrides
from common.run import job
from tests.helpers.fixtures import REPO

TINY = [
    "data.resolution=16", "data.end_id=2", "batch_size=3", "num_runs=2",
    "sampler.annealing_scheduler_config.num_steps=4", "sampler.diffusion_scheduler_config.num_steps=2",
    "task.gaussian.mcmc_sampler_config.num_steps=3", "eval_fn_list=[psnr,ssim]", "show_progress=false",
    "trajectory_points=3",
]


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("config", overrides=normalize_group_overrides(overrides))


def run_cli(tmp_path: Path, overrides: list[str], name: str = "run") -> tuple[int, Path]:
    cfg = compose_config([*TINY, f"save_dir={tmp_path}", f"name={name}", *overrides])
    run_dir = Path(tmp_path) / name
    return job.run(cfg, run_dir), run_dir
