"""Safe checkpoint loading for the latent diffusion prior: Lightning ``.ckpt`` files through the explicit allow-list,
``.pt`` and ``.safetensors``, strict keys after the training-only drop, and refusal of anything else."""
from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
import torch
import yaml

from common.models.checkpoints import (
    LIGHTNING_SAFE_GLOBALS,
    CheckpointError,
    LightningCallbackState,
    load_state_dict,
    load_strict,
)
from common.models.ldm import TRAINING_ONLY_PREFIXES, LatentDiffusion
from tests.helpers.fixtures import REPO, load_fixture
from tests.helpers.ldm_tiny import small_ldm_config, small_ldm_state

DOWNLOAD = "bash download.sh models"


@pytest.fixture
def lightning_module(monkeypatch):
    """A stand-in ``pytorch_lightning.callbacks.model_checkpoint`` module, so that the test can pickle a class under
    the name real Lightning checkpoints use for their ``callbacks`` keys."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    modules = [types.ModuleType(n) for n in names]
    for name, module in zip(names, modules):
        monkeypatch.setitem(sys.modules, name, module)
    model_checkpoint = type("ModelCheckpoint", (), {"__module__": names[-1]})
    modules[-1].ModelCheckpoint = model_checkpoint
    return model_checkpoint


def lightning_checkpoint(state: dict[str, torch.Tensor], callback_class: type) -> dict:
    """What a PyTorch-Lightning trainer saves: weights under "state_dict" plus training bookkeeping."""
    return {"state_dict": state, "global_step": 1, "epoch": 0, "pytorch-lightning_version": "1.4.2",
            "hyper_parameters": {"unet_config": {"params": {"model_channels": 32, "channel_mult": [1, 2, 2]}},
                                 "linear_start": 0.0015},
            "callbacks": {callback_class: {"monitor": "val/loss_simple_ema", "best_model_score": np.float64(0.25),
                                           "best_model_path": "logs/last.ckpt"}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 2e-6, "params": [0, 1]}]}],
            "lr_schedulers": []}


def with_ema(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state plus the training-only EMA entries of a CompVis FFHQ checkpoint (decay, num_updates, shadows)."""
    ema = {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1, dtype=torch.int32)}
    ema.update({"model_ema." + k[len("model."):].replace(".", ""): v
                for k, v in state.items() if k.startswith("model.diffusion_model.")})
    return {**state, **ema}


def assert_holds(model: LatentDiffusion, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith(TRAINING_ONLY_PREFIXES):
            torch.testing.assert_close(own[key], value.to(own[key].dtype), atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("filename", ["model.ckpt", "ldm_ffhq256.pt"])  # DAPS stores the .ckpt renamed to .pt
def test_lightning_checkpoint_round_trip_reproduces_the_reference(tmp_path, lightning_module, filename):
    state = small_ldm_state()
    path = tmp_path / filename
    torch.save(lightning_checkpoint(with_ema(state), lightning_module), path)
    model = LatentDiffusion(checkpoint=path, **small_ldm_config())
    assert_holds(model, state)
    assert not any(k.startswith(TRAINING_ONLY_PREFIXES) for k in model.state_dict())
    d = load_fixture("ldm_unet_small.pt")
    with torch.no_grad():
        denoised = model.tweedie(d["inputs"]["x"], d["inputs"]["sigma_scalar"])
    torch.testing.assert_close(denoised, d["outputs"]["vp_denoised_scalar_sigma"], atol=1e-5, rtol=1e-5)


def test_lightning_callback_classes_become_inert_stand_ins(tmp_path, lightning_module):
    path = tmp_path / "model.ckpt"
    torch.save(lightning_checkpoint({"w": torch.ones(1)}, lightning_module), path)
    # the nested dict is selected; reading the whole file shows what the callback key turned into
    assert load_state_dict(path, "test", DOWNLOAD, key="state_dict").keys() == {"w"}
    with torch.serialization.safe_globals(LIGHTNING_SAFE_GLOBALS):
        raw = torch.load(path, weights_only=True)
    assert list(raw["callbacks"]) == [LightningCallbackState]
    assert raw["callbacks"][LightningCallbackState]["best_model_score"] == 0.25


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_flat_state_dict_files_load(tmp_path, suffix):
    state = small_ldm_state()
    path = tmp_path / f"ldm{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    assert_holds(LatentDiffusion(checkpoint=path, **small_ldm_config()), state)


def test_reference_listing_loads_strictly_after_dropping_training_only_keys():
    """A checkpoint with exactly the FFHQ listing's keys and shapes (incl. 370 model_ema.* entries) fits."""
    cfg = yaml.safe_load((REPO / "configs/model/ffhq256ldm.yaml").read_text())
    cfg.pop("name")
    with torch.device("meta"):
        model = LatentDiffusion(**{**cfg, "checkpoint": None, "allow_random_weights": True})
        state = {k: torch.empty(shape) for k, shape in load_fixture("ldm_ffhq256.tsv")}
    load_strict(model, state, "ffhq ldm", drop_prefixes=TRAINING_ONLY_PREFIXES)
    with pytest.raises(CheckpointError, match="370 unexpected keys"):
        load_strict(model, state, "ffhq ldm")
    state.pop("first_stage_model.quantize.embedding.weight")
    with pytest.raises(CheckpointError, match="1 missing keys"):
        load_strict(model, state, "ffhq ldm", drop_prefixes=TRAINING_ONLY_PREFIXES)


def test_keys_outside_the_training_only_list_are_not_ignored(tmp_path):
    state = small_ldm_state()
    state["cond_stage_model.embedding.weight"] = torch.zeros(3, 3)
    torch.save({"state_dict": state}, tmp_path / "extra.ckpt")
    with pytest.raises(CheckpointError, match="unexpected keys.*cond_stage_model"):
        LatentDiffusion(checkpoint=tmp_path / "extra.ckpt", **small_ldm_config())


def test_wrong_shape_is_reported(tmp_path):
    state = small_ldm_state()
    state["first_stage_model.quantize.embedding.weight"] = torch.zeros(65, 3)
    torch.save({"state_dict": state}, tmp_path / "shape.ckpt")
    with pytest.raises(CheckpointError, match="shape mismatches.*quantize.embedding.weight"):
        LatentDiffusion(checkpoint=tmp_path / "shape.ckpt", **small_ldm_config())


class Arbitrary:
    """A class that is not on the allow-list."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


class RunsACommand:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("intruder", ["instance", "os.system"])
def test_checkpoint_with_a_forbidden_global_is_refused(tmp_path, intruder):
    marker = tmp_path / "executed"
    extra = Arbitrary() if intruder == "instance" else RunsACommand(str(marker))
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": small_ldm_state(), "global_step": 1, "extra": extra}, path)
    with pytest.raises(CheckpointError, match="(?i)unsupported global") as err:
        LatentDiffusion(checkpoint=path, **small_ldm_config())
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_truncated_checkpoint_is_an_error(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": small_ldm_state(), "global_step": 1}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as err:
        LatentDiffusion(checkpoint=path, **small_ldm_config())
    assert "bash download.sh models" in str(err.value)
