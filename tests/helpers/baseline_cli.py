"""One end-to-end run of posterior_sample.py with a baseline sampler on the demo, and its resume."""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from common.run import job
from common.sampling import build_sampler
from tests.helpers.cli import compose_config
from tests.helpers.fixtures import REPO


def run_and_resume(tmp_path: Path, sampler: str, task: str, steps: int, capsys) -> dict:
    """``sampler=<sampler> task=<task>`` at 16×16, 2 images × 2 runs, ``steps`` steps; then one record is deleted
    and the run resumed (only that sample is redone). Returns the resolved sampler block of the saved config."""
    overrides = [f"sampler={sampler}", f"task={task}", "data.resolution=16", "data.end_id=2", "batch_size=3",
                 "num_runs=2", f"sampler.num_steps={steps}", "eval_fn_list=[psnr]", "show_progress=false",
                 "save_traj=false", f"save_dir={tmp_path}", "name=run"]
    run_dir = tmp_path / "run"
    assert job.run(compose_config(overrides), run_dir) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_samples"] == 4 and not metrics["failed"]
    (run_dir / "records" / "00001_run0001.json").unlink()
    assert job.run(compose_config(overrides), run_dir) == 0
    assert "resuming: 3 of 4" in capsys.readouterr().out
    return OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml").sampler)


def per_task(sampler: str, task: str) -> dict:
    """The sampler yaml's per_task entry for ``task``."""
    return OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "sampler" / f"{sampler}.yaml").per_task[task])


TASK_NAMES = ("down_sampling", "inpainting", "inpainting_rand", "gaussian_blur", "motion_blur", "phase_retrieval",
              "nonlinear_blur", "hdr")


def built_for_task(sampler: str, task: str) -> tuple[dict, object]:
    """The sampler yaml resolved for ``task`` (its per_task values selected by ${task.name}) and the sampler built
    from it."""
    cfg = OmegaConf.create({"sampler": OmegaConf.load(REPO / "configs" / "sampler" / f"{sampler}.yaml"),
                            "task": {"name": task}})
    block = OmegaConf.to_container(cfg.sampler, resolve=True)
    return block, build_sampler(block)
