"""commands/baselines.sh: the Table-1 baselines compose into valid jobs on the DAPS runs' images, and each sampler is
only asked for tasks its operator capabilities allow (so no job of the sweep is refused)."""
from __future__ import annotations

import functools
import os
import shlex
import subprocess

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common.config.validate import validate
from common.registry import OPERATORS, SAMPLERS
from tests.helpers.fixtures import REPO

BASELINES = {"ddrm", "ddnm", "pigdm", "mmps", "diffpir", "reddiff", "fps_smc", "dcdp", "hio"}
TASKS = {"down_sampling", "inpainting", "inpainting_rand", "gaussian_blur", "motion_blur", "nonlinear_blur", "hdr",
         "phase_retrieval"}


def test_dry_run_gives_every_supported_task_of_every_baseline(tmp_path):
    done = subprocess.run(["bash", str(REPO / "commands" / "baselines.sh"), "0", str(tmp_path), "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    seen = set()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        for line in done.stdout.splitlines():
            if "posterior_sample.py" not in line:
                continue
            words = [w for w in shlex.split(line)[4:] if not w.startswith("hydra")]
            tasks = next(w for w in words if w.startswith("task=")).split("=", 1)[1].split(",")
            job = [w for w in words if not w.startswith("task=")] + [f"task={tasks[0]}"]
            cfg = OmegaConf.to_container(compose("config", overrides=job), resolve=True)
            assert validate(cfg) == [], (job, validate(cfg))
            assert cfg["task_group"] == "pixel" and cfg["seed"] == 42
            name = cfg["sampler"]["name"]
            for task in tasks:
                assert SAMPLERS.get(name).requires <= OPERATORS.get(_operator(task)).capabilities, (name, task)
                seen.add((cfg["data"]["id_list"], name, task))
    # every baseline on every task it can run, on both data sets
    expected = {(f"test-{d}", s, t) for d in ("ffhq", "imagenet") for s in BASELINES for t in TASKS
                if SAMPLERS.get(s).requires <= OPERATORS.get(_operator(t)).capabilities}
    assert seen == expected


@functools.cache
def _operator(task: str) -> str:
    return yaml.safe_load((REPO / "configs" / "task" / f"{task}.yaml").read_text())["pixel"]["operator"]["name"]
