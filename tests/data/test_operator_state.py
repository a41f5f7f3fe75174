"""Operator state (masks, kernels): drawn per (seed, image id), saved, loaded back, or shared by all images."""
import pytest
import torch

from common.data.operator_state import StatePlan, split_operator_config
from common.operators import build_operator
from common.random import make_generator
from tests.helpers.evaluation import TensorImages, exact_daps, prior_images, run, small_prior

pytestmark = pytest.mark.usefixtures("one_thread")
SIGMA = 0.05


def inpainting():
    return build_operator("inpainting", sigma=SIGMA, resolution=8, mask_type="random", mask_prob_range=[0.3, 0.7])


def measurement(root, image_id):
    return torch.load(root / "measurements" / f"{image_id:05d}.pt", weights_only=True)


def sample_run(root, images, **kwargs):
    return run(images, inpainting(), small_prior(), exact_daps(SIGMA, num_steps=3, mcmc_steps=2), root, **kwargs)


def test_split_operator_config_pops_the_state_options(tmp_path):
    block = {"name": "inpainting", "sigma": 0.05, "resolution": 8}
    assert split_operator_config(block) == (block, StatePlan())
    params, plan = split_operator_config({**block, "shared_state": True})
    assert params == block and plan == StatePlan(None, True)
    params, plan = split_operator_config({**block, "state": str(tmp_path)})
    assert params == block and plan.path == str(tmp_path) and not plan.shared
    with pytest.raises(ValueError, match="excludes operator.shared_state=true"):
        split_operator_config({**block, "state": str(tmp_path), "shared_state": True})
    with pytest.raises(ValueError, match=r"operator.state='/nowhere/x.pt' is not valid: does not exist"):
        split_operator_config({**block, "state": "/nowhere/x.pt"})


def test_state_depends_on_seed_and_image_id_only(tmp_path):
    images = prior_images(3)
    whole, _ = sample_run(tmp_path / "all", TensorImages(images), num_runs=1, batch_size=1)
    alone, _ = sample_run(tmp_path / "alone", TensorImages(images[2:], ids=[2]), num_runs=1, batch_size=3)
    a, b = measurement(whole.root, 2), measurement(alone.root, 2)
    assert torch.equal(a["state"]["mask"], b["state"]["mask"]) and torch.equal(a["y"], b["y"])
    expected = inpainting().draw_state(make_generator(3, 2, "operator"))["mask"]
    assert torch.equal(a["state"]["mask"], expected)
    assert not torch.equal(a["state"]["mask"], measurement(whole.root, 1)["state"]["mask"])


def test_saved_states_load_back_with_another_seed(tmp_path):
    images = TensorImages(prior_images(2))
    first, _ = sample_run(tmp_path / "first", images, num_runs=1)
    again, summary = sample_run(tmp_path / "again", images, num_runs=1, seed=4,
                                plan=StatePlan(str(first.root / "measurements")))
    for image_id in (0, 1):
        a, b = measurement(first.root, image_id), measurement(again.root, image_id)
        assert torch.equal(a["state"]["mask"], b["state"]["mask"])  # the same masks ...
        assert not torch.equal(a["y"], b["y"])  # ... under another seed's noise
    assert "loaded from" in summary["protocol"]["operator_state"]


def test_one_state_file_or_shared_state_serves_every_image(tmp_path):
    images = TensorImages(prior_images(3))
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, ::2] = True
    torch.save({"mask": mask}, tmp_path / "mask.pt")
    loaded, _ = sample_run(tmp_path / "file", images, num_runs=1, plan=StatePlan(str(tmp_path / "mask.pt")))
    assert all(torch.equal(measurement(loaded.root, i)["state"]["mask"], mask) for i in range(3))
    shared, summary = sample_run(tmp_path / "shared", images, num_runs=1, plan=StatePlan(shared=True))
    one = inpainting().draw_state(make_generator(3, "operator"))["mask"]
    assert all(torch.equal(measurement(shared.root, i)["state"]["mask"], one) for i in range(3))
    assert summary["protocol"]["operator_state"].startswith("shared")


def test_wrong_or_missing_state_stops_before_sampling(tmp_path):
    images = TensorImages(prior_images(2))
    torch.save({"kernel": torch.ones(5, 5) / 25}, tmp_path / "kernel.pt")
    message = r"\{'kernel': \(5, 5\)\} does not fit Inpainting, which needs \{'mask': \(1, 8, 8\)\}"
    with pytest.raises(ValueError, match=message):
        sample_run(tmp_path / "bad", images, plan=StatePlan(str(tmp_path / "kernel.pt")))
    (tmp_path / "folder").mkdir()
    torch.save({"y": torch.zeros(3, 8, 8), "state": {"mask": torch.ones(1, 8, 8, dtype=torch.bool)}},
               tmp_path / "folder" / "00000.pt")
    with pytest.raises(ValueError, match=r"no state for image 1 .*00001.pt is missing"):
        sample_run(tmp_path / "missing", images, plan=StatePlan(str(tmp_path / "folder")))
    assert not (tmp_path / "bad" / "samples").exists() and not (tmp_path / "missing" / "samples").exists()
