"""configs/task/*.yaml: every group composes with a data resolution, builds through build_operator, and the
pixel group carries the DAPS reference values (tests/fixtures/schedules.json ``pixel_task_configs``)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import common.config.resolvers  # noqa: F401  (${box_side_range:…} of the inpainting yaml)
from common.models.checkpoints import CheckpointError
from common.operators import build_operator
from tests.helpers.fixtures import REPO, load_fixture

TASK_DIR = REPO / "configs" / "task"
TASKS = ["down_sampling", "inpainting", "inpainting_rand", "gaussian_blur", "motion_blur", "phase_retrieval",
         "nonlinear_blur", "hdr"]
GROUPS = ["pixel", "pixel_hmc", "ldm", "sd", "gaussian"]


def compose(task: str, resolution: int = 256) -> dict:
    cfg = OmegaConf.merge({"data": {"resolution": resolution}}, {"task": OmegaConf.load(TASK_DIR / f"{task}.yaml")})
    return OmegaConf.to_container(cfg.task, resolve=True)


def test_every_task_has_a_config():
    assert sorted(p.stem for p in TASK_DIR.glob("*.yaml")) == sorted(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_groups_compose_and_build(task):
    cfg = compose(task)
    assert cfg["name"] == task and sorted(set(cfg) - {"name"}) == sorted(GROUPS)
    for group in GROUPS:
        block = cfg[group]
        assert block["operator"]["resolution"] == 256
        assert block["operator"]["sigma"] == (0.01 if group == "sd" else 0.05)
        mcmc = block["mcmc_sampler_config"]
        assert mcmc["mc_algo"] == ("langevin" if group in ("pixel", "gaussian") else "hmc")
        assert ("momentum" in mcmc) == (mcmc["mc_algo"] == "hmc")
        assert mcmc["tau"] == 0.01 and isinstance(mcmc["lr"], float)
        assert block["dps"]["method"] == "ps" and block["dps"]["scale"] > 0
        if task == "nonlinear_blur" and not Path(block["operator"]["checkpoint"]).is_file():
            with pytest.raises(CheckpointError, match="download.sh"):
                build_operator(**block["operator"])
            continue
        op = build_operator(**block["operator"])
        assert op.noise.sigma == block["operator"]["sigma"]


@pytest.mark.parametrize("task", TASKS)
def test_pixel_group_matches_reference(task):
    reference = load_fixture("schedules.json")["pixel_task_configs"][task]
    ours = compose(task)["pixel"]
    assert ours["mcmc_sampler_config"] == reference["mcmc_sampler_config"]
    # plus our two keys for where the masks/kernels come from (drawn per image unless set)
    expected = {**reference["operator"], "resolution": 256, "state": None, "shared_state": False}
    if task in ("gaussian_blur", "motion_blur"):   # and how the blur is computed (tests/operators/test_blur_methods.py)
        expected["method"] = "fast"
    if task == "nonlinear_blur":   # the reference names a bkse options yml; we name the checkpoint it points to
        del expected["opt_yml_path"]
        expected["checkpoint"] = "checkpoints/GOPRO_wVAE.pth"
    assert ours["operator"] == expected


def test_dps_step_sizes_are_the_public_dps_values():
    expected = {"down_sampling": 0.3, "inpainting": 0.5, "inpainting_rand": 0.5, "gaussian_blur": 0.3,
                "motion_blur": 0.3, "phase_retrieval": 1.0, "nonlinear_blur": 0.3, "hdr": 0.3}
    assert {task: compose(task)["pixel"]["dps"]["scale"] for task in TASKS} == expected


@pytest.mark.parametrize("task", TASKS)
def test_gaussian_group_is_the_pixel_group_with_its_own_dps_step(task):
    """The analytic priors' group: the pixel operator and DAPS settings (the demo's DAPS samples are unchanged),
    a DPS step size of its own."""
    cfg = compose(task, resolution=64)
    gaussian, pixel = cfg["gaussian"], cfg["pixel"]
    assert gaussian["operator"] == pixel["operator"]
    assert gaussian["mcmc_sampler_config"] == pixel["mcmc_sampler_config"]
    assert gaussian["dps"]["method"] == pixel["dps"]["method"] and gaussian["dps"]["scale"] > pixel["dps"]["scale"]


def test_shared_blocks_are_stated_once():
    """Each task yaml writes its operator block and the common HMC keys once (anchors), not once per group."""
    for path in TASK_DIR.glob("*.yaml"):
        text = path.read_text()
        assert text.count("\n    name: ") == 1 and text.count("mc_algo: hmc") == 1, path.name
        assert text.count("<<: *operator") == 1 and text.count("operator: *operator") == 3, path.name


@pytest.mark.parametrize("resolution, side", [(256, 128), (64, 32), (16, 8)])
def test_box_inpainting_is_half_the_image_side(resolution, side):
    """mask_len_range follows data.resolution: the papers' [128, 129] at 256 px, a box of half the side elsewhere."""
    cfg = compose("inpainting", resolution=resolution)
    assert {tuple(cfg[g]["operator"]["mask_len_range"]) for g in GROUPS} == {(side, side + 1)}
    op = build_operator(**cfg["pixel"]["operator"])
    mask = op.draw_state(torch.Generator().manual_seed(0))["mask"][0]
    rows, cols = torch.nonzero(~mask, as_tuple=True)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (side, side)


def test_resolution_follows_the_data_config():
    cfg = compose("down_sampling", resolution=64)
    op = build_operator(**cfg["pixel"]["operator"])
    assert op.resolution == 64 and op.matrix.shape == (16, 64)
    with pytest.raises(ValueError, match="too large for resolution 16"):
        build_operator(**compose("gaussian_blur", resolution=16)["pixel"]["operator"])
