"""torchrun: results do not depend on the number of ranks (gloo on the CPU), and a killed run resumes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from common.run.distributed import Ranks
from tests.helpers.fixtures import REPO

TINY = ["data.resolution=16", "data.end_id=3", "num_runs=2", "batch_size=2",
        "sampler.annealing_scheduler_config.num_steps=3", "task.gaussian.mcmc_sampler_config.num_steps=2",
        "eval_fn_list=[psnr]", "show_progress=false", "save_traj=false"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def launch(tmp_path, name, nproc, extra=(), **popen):
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = [*prefix, "posterior_sample.py", *TINY, *extra, f"save_dir={tmp_path}", f"name={name}"]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=ENV, **popen)
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


def outputs(run_dir):
    samples = {p.name: p.read_bytes() for p in (run_dir / "samples").iterdir()}
    return samples, json.loads((run_dir / "metrics.json").read_text())["images"]


def test_shards_cover_every_image_once():
    for world in (1, 2, 3, 4):
        shards = [Ranks(r, world).shard(7) for r in range(world)]
        assert sorted(sum(shards, [])) == list(range(7))


@pytest.mark.slow
def test_two_and_three_ranks_equal_one_process(tmp_path):
    single = launch(tmp_path, "one", 1)
    assert single.returncode == 0, single.stderr
    reference = outputs(tmp_path / "one")
    for nproc in (2, 3):  # 3 images over 2 ranks is an uneven shard
        done = launch(tmp_path, f"ranks{nproc}", nproc)
        assert done.returncode == 0, done.stderr
        assert outputs(tmp_path / f"ranks{nproc}") == reference


@pytest.mark.slow
def test_killed_distributed_run_resumes_to_same_result(tmp_path):
    reference = launch(tmp_path, "one", 1, ["data.end_id=4", "sampler.annealing_scheduler_config.num_steps=30"])
    assert reference.returncode == 0, reference.stderr
    extra = ["data.end_id=4", "sampler.annealing_scheduler_config.num_steps=30", "batch_size=1"]
    proc = launch(tmp_path, "killed", 2, extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                  start_new_session=True)
    records = tmp_path / "killed" / "records"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(records.glob("*.json"))) < 1:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # a hard crash of every rank mid-run
    proc.wait(timeout=60)
    assert len(list(records.glob("*.json"))) < 8
    resumed = launch(tmp_path, "killed", 2, extra)
    assert resumed.returncode == 0, resumed.stderr
    assert outputs(tmp_path / "killed") == outputs(tmp_path / "one")
