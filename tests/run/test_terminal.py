"""What a demo run prints: a notice about missing LPIPS weights is one line, without a source line, once."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.fixtures import REPO

TINY = ["data.resolution=16", "data.end_id=2", "num_runs=1", "batch_size=1", "save_traj=false",
        "sampler.annealing_scheduler_config.num_steps=2", "task.gaussian.mcmc_sampler_config.num_steps=2"]


@pytest.mark.slow
def test_missing_lpips_weights_give_one_line(tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "posterior_sample.py", *TINY, "eval_fn_list=[psnr,lpips]",
                             f"save_dir={tmp_path}", "name=run"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    notices = [line for line in result.stderr.splitlines() if "LPIPS" in line]
    assert len(notices) == 1 and notices[0].startswith("warning: LPIPS weights not found"), result.stderr
    assert "metrics.py" not in result.stderr and "UserWarning" not in result.stderr
    table = result.stdout[result.stdout.index("| image |"):]
    assert "null" not in table.split("\n\n")[0] and "± 0.0000" not in table  # no lpips column, one run
