"""Measurements without ground truth (``data=measurements``): files in, samples, residual and uncertainty out."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from common.config.compose import check_task_group_overrides
from common.data.datasets import build_dataset
from common.data.operator_state import StatePlan
from common.operators import build_operator, stack_states
from common.random import make_generator
from common.results.run_dir import to_pil
from common.run import job
from tests.helpers.cli import compose_config, run_cli
from tests.helpers.evaluation import TensorImages, exact_daps, prior_images, run, small_prior
from tests.helpers.fixtures import REPO

pytestmark = pytest.mark.usefixtures("one_thread")
SIGMA = 0.05


def blur():
    return build_operator("motion_blur", sigma=SIGMA, resolution=8, kernel_size=5, intensity=0.5)


def sampler():
    return exact_daps(SIGMA, num_steps=3, mcmc_steps=2)


def test_measurement_only_run_reproduces_the_ground_truth_run(tmp_path):
    truth, _ = run(TensorImages(prior_images(2)), blur(), small_prior(), sampler(), tmp_path / "truth")
    data = build_dataset("measurements", root=str(truth.root / "measurements"), resolution=8)
    assert not data.ground_truth and data.ids() == [0, 1] and data.state(1)["kernel"].shape == (5, 5)
    blind, summary = run(data, blur(), small_prior(), sampler(), tmp_path / "blind")
    for image_id in (0, 1):
        for r in (0, 1):
            a, b = (torch.load(d.raw_path(image_id, r), weights_only=True) for d in (truth, blind))
            assert torch.equal(a, b)
            assert (truth.sample_path(image_id, r).read_bytes() == blind.sample_path(image_id, r).read_bytes())
    records = {(r["image_id"], r["run"]): r for r in blind.records()}
    assert all(r["residual"] == records[(r["image_id"], r["run"])]["residual"] for r in truth.records())
    assert "psnr" not in records[(0, 0)] and summary["summary"] == {} and summary["residual"]["mean"] > 0
    assert summary["uncertainty"]["coverage_1std"] is None and (blind.root / "uncertainty" / "00001_std.png").is_file()
    assert not list((blind.root / "inputs").glob("*_gt.png"))
    with Image.open(blind.root / "grid_results.png") as grid:  # measurement | 2 samples | mean | std
        assert 5 * 128 < grid.height < 6 * 128 + 300  # tiles enlarged to 128 px, labelled
    assert "Posterior uncertainty" in (blind.root / "eval.md").read_text()


def test_a_blurred_image_file_is_restored_with_its_saved_kernel(tmp_path):
    """The README's worked example: blur with a saved kernel, then restore from the blurred file alone."""
    operator = blur()
    state = operator.draw_state(make_generator(0, "my kernel"))
    torch.save(state, tmp_path / "kernel.pt")  # {"kernel": (5, 5)}
    image = prior_images(1)
    operator.set_state(stack_states([state]))
    y = operator.measure(image, [make_generator(0, "noise")])[0]
    (tmp_path / "blurred").mkdir()
    to_pil(y).save(tmp_path / "blurred" / "photo.png")
    np.save(tmp_path / "blurred" / "array.npy", y.numpy())
    data = build_dataset("measurements", root=str(tmp_path / "blurred"), resolution=8)
    assert data.names() == ["array.npy", "photo.png"] and data.ids() == [0, 1]
    assert torch.equal(data[0][1], y) and (data[1][1] - y.clamp(-1, 1)).abs().max() <= 1 / 255 + 1e-6
    directory, summary = run(data, blur(), small_prior(), sampler(), tmp_path / "restored",
                             plan=StatePlan(str(tmp_path / "kernel.pt")))
    saved = torch.load(directory.root / "measurements" / "00001.pt", weights_only=True)
    assert torch.equal(saved["state"]["kernel"], state["kernel"])
    assert all(r["residual"] is not None and r["residual"] < 10 for r in directory.records())
    assert json.loads((directory.root / "metrics.json").read_text())["protocol"]["data"]["ground_truth"] is False


def test_bad_measurements_stop_before_sampling(tmp_path):
    (tmp_path / "y").mkdir()
    torch.save(torch.zeros(3, 4, 4), tmp_path / "y" / "00000.pt")
    data = build_dataset("measurements", root=str(tmp_path / "y"), resolution=8)
    message = r"00000.pt has shape \(3, 4, 4\), but MotionBlur maps 8x8 images to \(3, 8, 8\)"
    with pytest.raises(ValueError, match=message):
        run(data, blur(), small_prior(), sampler(), tmp_path / "run")
    assert not (tmp_path / "run" / "samples").exists()
    with pytest.raises(ValueError, match="data.root is required"):
        build_dataset("measurements", root=None)
    with pytest.raises(ValueError, match="select no measurements"):
        build_dataset("measurements", root=str(tmp_path / "y"), start_id=1)


def test_cli_measurement_run_on_a_ground_truth_run(tmp_path):
    code, truth = run_cli(tmp_path, ["save_traj=false", "task=motion_blur", "task.gaussian.operator.kernel_size=5"],
                          name="truth")
    assert code == 0
    code, blind = run_cli(tmp_path, ["save_traj=false", "task=motion_blur", "task.gaussian.operator.kernel_size=5",
                                     "data=measurements", f"data.root={truth / 'measurements'}",
                                     "data.resolution=16"], name="blind")
    assert code == 0
    for path in sorted((truth / "samples").iterdir()):
        assert path.read_bytes() == (blind / "samples" / path.name).read_bytes()
    assert json.loads((blind / "metrics.json").read_text())["summary"] == {}


class ReachedSampling(Exception):
    """Raised in place of the experiment loop: the run was accepted."""


def stop_at_sampling(*args, **kwargs) -> None:
    raise ReachedSampling


def readme_example() -> str:
    """The README's worked example of restoring from measurements alone (the fenced block that ends in name=restore)."""
    text = (REPO / "README.md").read_text()
    return next(block for block in text.split("```bash\n")[1:] if "name=restore" in block.split("```")[0]) \
        .split("```")[0]


def test_the_readme_restore_example_runs_as_written(tmp_path, monkeypatch):
    """Each command of the README block, as written, on the default demo model (only save_dir and fewer steps
    added; the restore command is checked up to sampling): its operator-state key fits the demo's task group."""
    block = readme_example()
    commands = [line.replace("\\\n", " ") for line in block.replace("\\\n    ", " ").splitlines()
                if line.startswith("python posterior_sample.py")]
    fast = ["sampler.annealing_scheduler_config.num_steps=2", "task.gaussian.mcmc_sampler_config.num_steps=2",
            "show_progress=false", "save_traj=false", "eval_fn_list=[psnr]"]
    blur_args = commands[0].split("#")[0].split()[2:]
    blur_cfg = compose_config([*blur_args, *fast, f"save_dir={tmp_path / 'results'}"])
    assert job.run(blur_cfg, tmp_path / "results" / "blur") == 0
    script = block.split("<<'PY'\n")[1].split("\nPY\n")[0]
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(job, "run_experiment", stop_at_sampling)
    restore_args = commands[1].split("#")[0].split()[2:]
    restore_cfg = compose_config([*restore_args, *fast, f"save_dir={tmp_path / 'results'}"])
    # the command line's overrides are checked against the selected task group (Hydra passes them to the job)
    check_task_group_overrides(restore_args, restore_cfg.task_group, OmegaConf.to_container(restore_cfg.task))
    with pytest.raises(ReachedSampling):  # validated, built, dry-stepped and handed to the loop
        job.run(restore_cfg, tmp_path / "results" / "restore")
