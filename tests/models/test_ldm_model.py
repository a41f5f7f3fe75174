"""The registered "ldm" prior: the full CompVis LatentDiffusion state-dict layout (``ldm_*256.tsv``), the DAPS
VP-preconditioned denoiser and first-stage paths of the small reference LDM (``ldm_unet_small.pt``,
``vq_f4_small.pt``), the DDPM view, conditioning and the construction errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from common.models import MODELS, build_model
from common.models import ldm as ldm_module
from common.models.checkpoints import CheckpointError
from common.models.ldm import SCHEDULE_KEYS, TRAINING_ONLY_PREFIXES, LatentDiffusion, ldm_schedule
from tests.helpers.fixtures import REPO, load_fixture
from tests.helpers.ldm_tiny import small_ldm_config, small_ldm_state

TOL = dict(atol=1e-5, rtol=1e-5)
VP_TOL_SIGMA_20 = dict(atol=1e-4, rtol=1e-5)  # ε̂ is multiplied by σ = 20
DECODER_TOL = dict(atol=3e-5, rtol=1e-5)  # see test_vq_autoencoder.DECODER_TOL


@pytest.fixture(scope="module")
def small_ldm() -> LatentDiffusion:
    return LatentDiffusion.from_state_dict(small_ldm_state(), **small_ldm_config())


def model_config(name: str) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text())
    assert cfg.pop("name") == "ldm"
    return cfg


# ---------------------------------------------------------------- full-size layout
@pytest.mark.parametrize("config, listing", [("ffhq256ldm", "ldm_ffhq256.tsv"),
                                             ("imagenet256ldm", "ldm_imagenet256.tsv")])
def test_state_dict_equals_reference_listing_minus_training_only_keys(config, listing):
    with torch.device("meta"):
        model = build_model("ldm", **{**model_config(config), "checkpoint": None, "allow_random_weights": True})
    reference = load_fixture(listing)
    expected = [(k, s) for k, s in reference if not k.startswith(TRAINING_ONLY_PREFIXES)]
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected
    assert [k for k, _ in expected[:12]] == list(SCHEDULE_KEYS)
    dropped = [k for k, _ in reference if k.startswith(TRAINING_ONLY_PREFIXES)]
    assert len(dropped) == (370 if config == "ffhq256ldm" else 0)
    assert model.sample_shape == (3, 64, 64) and model.image_shape == (3, 256, 256) and model.latent


def test_ffhq_unet_and_autoencoder_sizes():
    with torch.device("meta"):
        model = build_model("ldm", **{**model_config("ffhq256ldm"), "checkpoint": None,
                                      "allow_random_weights": True})
    assert sum(p.numel() for p in model.unet.parameters()) == 274_056_163
    assert sum(p.numel() for p in model.first_stage_model.parameters()) == 55_322_782
    assert model.first_stage_model.quantize.embedding.weight.shape == (8192, 3)


def test_imagenet_config_conditions_on_the_unconditional_class():
    cfg = model_config("imagenet256ldm")
    assert cfg["class_label"] == 1000 and cfg["cond_stage_config"]["n_classes"] == 1001


# ---------------------------------------------------------------- small reference LDM
def test_vp_denoiser_matches_reference(small_ldm):
    d = load_fixture("ldm_unet_small.pt")
    inp, out = d["inputs"], d["outputs"]
    fed = []
    hook = small_ldm.unet.register_forward_pre_hook(lambda m, args: fed.append(args[1].clone()))
    with torch.no_grad():
        denoised = small_ldm.tweedie(inp["x"], inp["sigma"])
        denoised_scalar = small_ldm.tweedie(inp["x"], inp["sigma_scalar"])
    hook.remove()
    torch.testing.assert_close(denoised[0], out["vp_denoised"][0], **TOL)  # σ = 0.5
    torch.testing.assert_close(denoised[1], out["vp_denoised"][1], **VP_TOL_SIGMA_20)  # σ = 20
    torch.testing.assert_close(denoised_scalar, out["vp_denoised_scalar_sigma"], **TOL)
    torch.testing.assert_close(fed[0], out["vp_c_noise"], **TOL)
    assert fed[1].shape == (1,)  # a 0-dim σ gives one timestep for the whole batch
    assert denoised.dtype == torch.float32


def test_encode_and_decode_match_reference(small_ldm):
    d = load_fixture("vq_f4_small.pt")
    with torch.no_grad():
        z = small_ldm.encode(d["inputs"]["x"])
        x = small_ldm.decode(d["outputs"]["z"])
    torch.testing.assert_close(z, d["outputs"]["encode_first_stage"], **TOL)
    torch.testing.assert_close(x, d["outputs"]["decoded_from_latent"], **DECODER_TOL)


def test_decode_of_encode_keeps_shape_and_range(small_ldm):
    x = torch.rand((2, *small_ldm.image_shape), generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        z = small_ldm.encode(x)
        x_hat = small_ldm.decode(z)
    assert z.shape == (2, *small_ldm.sample_shape) == (2, 3, 8, 8)
    assert x_hat.shape == x.shape and x_hat.dtype == torch.float32
    # the random-weight reference decoder's outputs span about ±2 (vq_f4_small 'decoded'); finite and bounded
    assert torch.isfinite(x_hat).all() and x_hat.abs().max() < 10


def test_decode_is_differentiable(small_ldm):
    z = load_fixture("vq_f4_small.pt")["outputs"]["z"].clone().requires_grad_(True)
    small_ldm.decode(z).square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_scale_factor_scales_latents():
    d = load_fixture("vq_f4_small.pt")
    model = LatentDiffusion.from_state_dict(small_ldm_state(), **small_ldm_config(), scale_factor=2.0)
    with torch.no_grad():
        z = model.encode(d["inputs"]["x"])
        x = model.decode(2.0 * d["outputs"]["z"])
    torch.testing.assert_close(z, 2.0 * d["outputs"]["encode_first_stage"], **TOL)
    torch.testing.assert_close(x, d["outputs"]["decoded_from_latent"], **DECODER_TOL)


def test_ddpm_output_is_the_unet_at_integer_timesteps(small_ldm):
    x = load_fixture("ldm_unet_small.pt")["inputs"]["x"]
    t = torch.tensor([10, 700])
    with torch.no_grad():
        eps, var = small_ldm.ddpm_output(x, t)
        direct = small_ldm.unet(x, t)
    assert var is None and not small_ldm.learn_sigma
    torch.testing.assert_close(eps, direct, atol=0, rtol=0)
    torch.testing.assert_close(eps, load_fixture("ldm_unet_small.pt")["outputs"]["out_int_timesteps"], **TOL)


def test_schedule_buffers_are_the_ldm_scaled_linear_schedule(small_ldm):
    ref = load_fixture("schedules.json")["ldm_ddpm_schedule"]
    betas, abar = small_ldm.betas, small_ldm.alphas_cumprod
    assert abar is small_ldm.get_buffer("alphas_cumprod")
    for t, value in [(0, ref["beta_first"]), (500, ref["beta_500"]), (999, ref["beta_last"])]:
        assert betas[t].item() == pytest.approx(value, rel=1e-6)
    for t, value in ref["alphas_cumprod"].items():
        assert abar[int(t)].item() == pytest.approx(value, rel=1e-5)
    s = ldm_schedule(betas)
    torch.testing.assert_close(small_ldm.posterior_variance.double(), s["posterior_variance"], rtol=1e-6, atol=0)


def test_model_is_frozen_and_in_eval_mode(small_ldm):
    assert not small_ldm.training
    assert not any(p.requires_grad for p in small_ldm.parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_outputs_are_float32_and_close(small_ldm, precision):
    d = load_fixture("ldm_unet_small.pt")
    model = LatentDiffusion.from_state_dict(small_ldm_state(), **small_ldm_config(), precision=precision)
    x, sigma = d["inputs"]["x"], d["inputs"]["sigma_scalar"]
    with torch.no_grad():
        low, full = model.tweedie(x, sigma), small_ldm.tweedie(x, sigma)
        decoded = model.decode(load_fixture("vq_f4_small.pt")["outputs"]["z"])
    assert low.dtype == decoded.dtype == torch.float32
    assert (low - full).abs().max() < 0.03 * full.abs().max()  # measured: bf16 0.020, fp16 0.003
    assert (decoded - load_fixture("vq_f4_small.pt")["outputs"]["decoded"]).abs().max() < 0.15  # bf16 0.074


# ---------------------------------------------------------------- class conditioning
def conditional_config(class_label: int | None = 7) -> dict:
    cfg = small_ldm_config()
    cfg["unet_config"] = {**{k: v for k, v in cfg["unet_config"].items() if k != "num_head_channels"},
                          "num_heads": 1, "use_spatial_transformer": True, "context_dim": 16}
    return {**cfg, "cond_stage_config": {"n_classes": 11, "embed_dim": 16}, "class_label": class_label}


def test_class_label_selects_the_cross_attention_context():
    torch.manual_seed(0)  # test-only: random initial weights
    model = LatentDiffusion(checkpoint=None, allow_random_weights=True, **conditional_config(7))
    for p in model.parameters():  # the reference zero-initialises output convs; make every layer matter
        torch.nn.init.normal_(p, std=0.05)
    context = model.context(2, torch.device("cpu"))
    assert context.shape == (2, 1, 16)
    torch.testing.assert_close(context[1, 0], model.cond_stage_model.embedding.weight[7])
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        a = model.tweedie(x, 1.0)
        model.class_label = 3
        b = model.tweedie(x, 1.0)
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("change, match", [
    ({"class_label": 11}, "out of range"),
    ({"class_label": None}, "class_label"),
    ({"precision": "fp8"}, "precision"),
])
def test_invalid_model_settings_are_rejected(change, match):
    with pytest.raises(ValueError, match=match):
        LatentDiffusion(checkpoint=None, allow_random_weights=True, **{**conditional_config(), **change})


def test_class_label_without_conditioning_is_rejected():
    with pytest.raises(ValueError, match="class_label"):
        LatentDiffusion(checkpoint=None, allow_random_weights=True, **small_ldm_config(), class_label=1000)


# ---------------------------------------------------------------- checkpoints
def test_missing_checkpoint_fails_before_building_the_networks(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the UNet was built before the checkpoint was checked")

    monkeypatch.setattr(ldm_module, "LDMUNet", refuse)
    path = tmp_path / "ldm_ffhq256.pt"
    cfg = {**model_config("ffhq256ldm"), "checkpoint": str(path)}
    with pytest.raises(CheckpointError) as err:
        build_model("ldm", **cfg)
    message = str(err.value)
    assert str(path) in message and "'ldm'" in message and "bash download.sh models" in message


def test_no_checkpoint_requires_the_random_weights_flag():
    with pytest.raises(CheckpointError, match="allow_random_weights"):
        LatentDiffusion(checkpoint=None, **small_ldm_config())


def test_registered_and_configs_name_the_checkpoints():
    assert "ldm" in MODELS
    assert model_config("ffhq256ldm")["checkpoint"] == "checkpoints/ldm_ffhq256.pt"
    assert model_config("imagenet256ldm")["checkpoint"] == "checkpoints/ldm_imagenet256.pt"
    assert Path(model_config("ffhq256ldm")["checkpoint"]).suffix == ".pt"
