"""Reliability: interrupted runs resume to identical results, bad config values and files are refused."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from PIL import Image

from common.config.validate import validate
from common.data.datasets import build_dataset
from common.errors import ConfigError
from tests.helpers.cli import compose_config, run_cli
from tests.helpers.fixtures import REPO

SLOW_RUN = ["+data=demo", "data.resolution=16", "data.end_id=4", "batch_size=1", "num_runs=1",
            "sampler.annealing_scheduler_config.num_steps=40", "task.gaussian.mcmc_sampler_config.num_steps=20",
            "eval_fn_list=[psnr]", "show_progress=false", "save_traj=false"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "posterior_sample.py", *SLOW_RUN, f"save_dir={tmp_path}"]
    subprocess.run([*cmd, "name=straight"], cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen([*cmd, "name=killed"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    records = tmp_path / "killed" / "records"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(records.glob("*.json"))) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again to resume" in err
    assert 1 <= len(list(records.glob("*.json"))) < 4
    json.loads((tmp_path / "killed" / "metrics.json").read_text())  # a valid partial summary
    resumed = subprocess.run([*cmd, "name=killed"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "resuming:" in resumed.stdout
    for png in sorted((tmp_path / "straight" / "samples").iterdir()):
        assert png.read_bytes() == (tmp_path / "killed" / "samples" / png.name).read_bytes()
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text())["summary"] for n in ("straight", "killed"))
    assert a == b


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/../../b"])
def test_run_name_cannot_leave_save_dir(tmp_path, name):
    with pytest.raises(ConfigError, match="not valid: need a relative folder name"):
        run_cli(tmp_path, [f"name={name}"], name="x")


BASE = OmegaConf.to_container(compose_config([]), resolve=True)
values = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8),
                   st.lists(st.text(max_size=5), max_size=3))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["batch_size", "num_runs", "seed", "gpu", "eval_fn_list", "name", "task_group",
                                        "wandb_mode"]), values, max_size=4),
       st.dictionaries(st.sampled_from(["start_id", "end_id", "resolution", "name"]), values, max_size=2))
def test_validation_never_crashes_and_names_each_bad_key(top, data):
    cfg = json.loads(json.dumps(BASE))
    cfg.update(top)
    cfg["data"].update(data)
    problems = validate(cfg)
    assert all(isinstance(p, str) for p in problems)
    for key, value in top.items():
        if key in ("batch_size", "num_runs") and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            assert any(p.startswith(f"{key}=") for p in problems)


def test_unusual_image_files_are_read_or_refused_clearly(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((20, 30), 128, np.uint8), "L").save(folder / "a_gray.png")
    Image.fromarray(np.zeros((24, 24, 4), np.uint8), "RGBA").save(folder / "b_rgba.png")
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(folder / "c_16bit.png")
    (folder / "d_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match=r"1 of 4 image files cannot be used .*\n  d_corrupt.png: not an image"):
        build_dataset("image", root=str(folder), resolution=8)  # checked before any image is read
    data = build_dataset("image", root=str(folder), resolution=8, end_id=3)
    gray = data[0][1]
    assert gray.shape == (3, 8, 8) and abs(float(gray.mean()) - (128 / 255 * 2 - 1)) < 1e-3
    assert data[1][1].shape == (3, 8, 8)
    assert float(data[2][1].min()) == pytest.approx(1.0)
