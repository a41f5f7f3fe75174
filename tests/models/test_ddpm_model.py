"""The registered "ddpm" model (common/models/ddpm.py): VP denoiser and DDPM view, safe strict loading."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import common.models.ddpm as ddpm_module
from common.models import build_model
from common.models.checkpoints import CheckpointError
from common.models.ddpm import DDPMModel
from common.models.precond import vp_c_in, vp_c_noise
from tests.helpers.fixtures import REPO, load_fixture


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("adm_small.pt")


@pytest.fixture(scope="module")
def model(fixture) -> DDPMModel:
    return DDPMModel.from_state_dict(fixture["config"]["create_model_kwargs"], fixture["state_dict"])


def _outputs(model: DDPMModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.ddpm_output(x, torch.tensor([10, 700]))[0]


def test_vp_denoiser_matches_fixture(fixture, model: DDPMModel) -> None:
    """D(x; σ) = x − σ ε̂: compared through ε̂ = (x − D)/σ, since D's error is σ times ε̂'s.

    The fixture's own float32 rounding puts its ε̂ 1.1e-5 (D: 2.2e-4 at σ = 20) away from a float64
    evaluation of the same network, so the suggested 1e-4 on D at σ = 20 cannot hold on another CPU.
    """
    x, ref = fixture["inputs"]["x"], fixture["outputs"]
    for key, sigma in (("vp_denoised", fixture["inputs"]["sigma"]),
                       ("vp_denoised_scalar_sigma", fixture["inputs"]["sigma_scalar"])):
        s = sigma.reshape(-1, 1, 1, 1) if sigma.ndim else sigma
        with torch.no_grad():
            denoised = model.tweedie(x, sigma)
        assert denoised.dtype == torch.float32 and denoised.shape == x.shape
        torch.testing.assert_close((x - denoised) / s, (x - ref[key]) / s, atol=3e-5, rtol=1e-5)
    torch.testing.assert_close((x - model.tweedie(x, fixture["inputs"]["sigma"]))[:1],
                               (x - ref["vp_denoised"])[:1], atol=1e-5, rtol=1e-5)  # σ = 0.5: plain 1e-5


def test_unet_receives_vp_scaled_input_and_fractional_timesteps(fixture, model: DDPMModel) -> None:
    seen = {}
    hook = model.unet.register_forward_pre_hook(lambda m, args: seen.update(x=args[0], t=args[1]))
    try:
        with torch.no_grad():
            model.tweedie(fixture["inputs"]["x"], fixture["inputs"]["sigma"])
    finally:
        hook.remove()
    ref = fixture["outputs"]
    # float32 c_noise at 770: one ulp is 6.1e-5, and ln() may round differently across CPUs
    torch.testing.assert_close(seen["t"], ref["vp_c_noise"], atol=1e-5, rtol=2e-7)
    torch.testing.assert_close(vp_c_in(fixture["inputs"]["sigma"]), ref["vp_c_in"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(seen["x"], ref["vp_c_in"].reshape(-1, 1, 1, 1) * fixture["inputs"]["x"])
    torch.testing.assert_close(vp_c_noise(fixture["inputs"]["sigma"]), ref["vp_c_noise"], atol=1e-5, rtol=2e-7)


def test_ddpm_output_is_the_raw_unet_split(fixture, model: DDPMModel) -> None:
    x, t = fixture["inputs"]["x"], torch.tensor([10, 700])
    with torch.no_grad():
        eps, var = model.ddpm_output(x, t)
        raw = model.unet(x, t)
    assert model.learn_sigma and var is not None
    assert torch.equal(eps, raw[:, :3]) and torch.equal(var, raw[:, 3:])
    # integer t is not rescaled: the fixture's float timesteps [10, 700] give the fixture's UNet output
    torch.testing.assert_close(torch.cat([eps, var], 1), fixture["outputs"]["out"], atol=1e-5, rtol=1e-5)


def test_frozen_weights_gradients_reach_input(model: DDPMModel) -> None:
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.zeros(1, 3, 32, 32, requires_grad=True)
    eps, _ = model.ddpm_output(x, torch.tensor([400]))
    eps.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_no_variance_channels_without_learn_sigma() -> None:
    config = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8")
    model = DDPMModel(16, None, config, allow_random_weights=True)
    eps, var = model.ddpm_output(torch.zeros(2, 3, 16, 16), torch.tensor([1, 2]))
    assert var is None and eps.shape == (2, 3, 16, 16) and not model.learn_sigma


@pytest.mark.parametrize("precision, max_rel", [("bf16", 0.1), ("fp16", 0.02)])
def test_reduced_precision_stays_close_and_returns_float32(fixture, model: DDPMModel, precision: str,
                                                           max_rel: float) -> None:
    low = DDPMModel.from_state_dict(fixture["config"]["create_model_kwargs"], fixture["state_dict"],
                                    precision=precision)
    assert all(p.dtype == torch.float32 for p in low.parameters())
    x = fixture["inputs"]["x"]
    ref, out = _outputs(model, x), _outputs(low, x)
    assert out.dtype == torch.float32 and not torch.equal(out, ref)  # autocast really ran
    assert (out - ref).norm() / ref.norm() < max_rel


def test_channels_last_gives_the_same_output(fixture, model: DDPMModel) -> None:
    cl = DDPMModel.from_state_dict(fixture["config"]["create_model_kwargs"], fixture["state_dict"],
                                   channels_last=True)
    assert cl.unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = fixture["inputs"]["x"]
    torch.testing.assert_close(_outputs(cl, x), _outputs(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_round_trip(tmp_path: Path, fixture, model: DDPMModel, suffix: str) -> None:
    state = {k: v.float().contiguous() for k, v in model.unet.state_dict().items()}
    path = tmp_path / f"small{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file
        save_file(state, str(path))
    config = fixture["config"]["create_model_kwargs"]
    loaded = build_model("ddpm", resolution=32, checkpoint=str(path), model_config=config)
    assert isinstance(loaded, DDPMModel)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    x = fixture["inputs"]["x"]
    assert torch.equal(_outputs(loaded, x), _outputs(model, x))


def test_missing_checkpoint_names_path_and_download_before_building(tmp_path: Path, monkeypatch) -> None:
    config = yaml.safe_load((REPO / "configs" / "model" / "imagenet256ddpm.yaml").read_text())
    assert config.pop("name") == "ddpm"
    missing = tmp_path / "imagenet256.pt"
    monkeypatch.setattr(ddpm_module, "create_adm_unet", lambda **_: pytest.fail("network built before the check"))
    with pytest.raises(CheckpointError) as err:
        build_model("ddpm", **{**config, "checkpoint": str(missing)})
    assert str(missing) in str(err.value) and "download.sh" in str(err.value) and "ddpm" in str(err.value)


def test_no_checkpoint_needs_explicit_random_weights(fixture) -> None:
    with pytest.raises(CheckpointError, match="allow_random_weights"):
        DDPMModel(32, None, fixture["config"]["create_model_kwargs"])


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoint_names_the_file(tmp_path: Path, model: DDPMModel, fixture, damage: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(model.unet.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="bad.pt"):
        DDPMModel(32, path, fixture["config"]["create_model_kwargs"])


def test_extra_or_missing_keys_fail_strict_loading(tmp_path: Path, model: DDPMModel, fixture) -> None:
    state = dict(model.unet.state_dict())
    path = tmp_path / "extra.pt"
    torch.save({**state, "label_emb.weight": torch.zeros(1000, 128)}, path)
    with pytest.raises(CheckpointError, match="unexpected keys.*label_emb.weight"):
        DDPMModel(32, path, fixture["config"]["create_model_kwargs"])
    state.pop("out.2.bias")
    with pytest.raises(CheckpointError, match="missing keys.*out.2.bias"):
        DDPMModel.from_state_dict(fixture["config"]["create_model_kwargs"], state)


def test_bad_configuration_values(fixture) -> None:
    config = fixture["config"]["create_model_kwargs"]
    with pytest.raises(ValueError, match="precision='fp8'"):
        DDPMModel(32, None, config, precision="fp8", allow_random_weights=True)
    with pytest.raises(ValueError, match="model_path"):
        DDPMModel(32, None, {**config, "model_path": "x.pt"}, allow_random_weights=True)
    with pytest.raises(ValueError, match="resolution 64"):
        DDPMModel(64, None, config, allow_random_weights=True)
    with pytest.raises(ValueError, match="class_cond"):
        DDPMModel(32, None, {**config, "class_cond": True}, allow_random_weights=True)
