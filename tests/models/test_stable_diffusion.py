"""Stable Diffusion wrapper on a tiny local pipeline with random weights (sd_tiny.py); no hub access.

The wrapper's outputs are checked against the closed forms of the module doc, evaluated here from direct
calls of the tiny UNet / VAE: VP preconditioning with SD's continuous scaled-linear timestep, classifier-free
guidance, the v → ε conversion, and the resize + scaling-factor plumbing of encode/decode.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from common.models import build_model
from common.models.checkpoints import CheckpointError
from common.models.stable_diffusion import StableDiffusion, sd_sigma_to_t
from tests.helpers.fixtures import REPO
from tests.helpers.sd_tiny import SD_BETA_END, SD_BETA_START, build_tiny_sd

INNER, RES, LATENT = 16, 8, 8  # tiny VAE factor 2: latents (4, 8, 8), images resized 16 -> 8
B_SD = math.sqrt(1000 * SD_BETA_START)
A_SD = math.sqrt(1000 * SD_BETA_END) - B_SD


def load(folder, **overrides) -> nn.Module:
    params = dict(model_id=str(folder), resolution=RES, inner_resolution=INNER, precision="fp32",
                  local_files_only=True, config_name="tiny-sd")
    params.update(overrides)
    return build_model("stable_diffusion", **params)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny")


@pytest.fixture(scope="module")
def sd(tiny_folder):
    return load(tiny_folder)


@pytest.fixture(scope="module")
def sd_v(tiny_folder, tmp_path_factory):
    """The same weights read as a v-prediction model (SD 2.1's scheduler setting)."""
    folder = tmp_path_factory.mktemp("sdv") / "tiny_v"
    shutil.copytree(tiny_folder, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["prediction_type"] = "v_prediction"
    config_file.write_text(json.dumps(config))
    return load(folder)


def latents(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(seed))


def raw_unet(model, x: torch.Tensor, timesteps: torch.Tensor, guidance: float) -> torch.Tensor:
    """out(∅) + w (out(c) − out(∅)) from two separate direct UNet calls."""
    def call(emb):
        return model.unet(x, timesteps, encoder_hidden_states=emb.expand(x.shape[0], -1, -1)).sample
    with torch.no_grad():
        uncond, cond = call(model.uncond_embedding), call(model.cond_embedding)
    return uncond + guidance * (cond - uncond)


def c_noise(sigma: float) -> float:
    """1000 · t(σ) of the continuous scaled-linear VP schedule, written out."""
    return 1000 * ((3 * A_SD * math.log(1 + sigma ** 2) + B_SD ** 3) ** (1 / 3) - B_SD) / A_SD


# ---------------------------------------------------------------------------------------------- schedule
def test_sigma_to_t_inverts_the_continuous_scaled_linear_schedule():
    t = torch.linspace(0.01, 1, 9, dtype=torch.float64)
    integral = ((A_SD * t + B_SD) ** 3 - B_SD ** 3) / (3 * A_SD)
    sigma = (integral.exp() - 1).sqrt()
    torch.testing.assert_close(sd_sigma_to_t(sigma, SD_BETA_START, SD_BETA_END, 1000), t)
    # the continuous end point ᾱ(1) = exp(−∫β) sits within 3 % of SD's discrete ᾱ_999
    discrete = torch.cumprod(1 - torch.linspace(SD_BETA_START ** 0.5, SD_BETA_END ** 0.5, 1000,
                                                dtype=torch.float64) ** 2, 0)[-1]
    assert float((-integral[-1]).exp() / discrete) == pytest.approx(1, rel=0.03)


def test_betas_are_sds_scaled_linear_schedule(sd):
    from diffusers import DDPMScheduler
    reference = DDPMScheduler(beta_start=SD_BETA_START, beta_end=SD_BETA_END, beta_schedule="scaled_linear")
    assert sd.betas.dtype == torch.float64 and sd.betas.shape == (1000,)
    assert float(sd.betas[0]) == pytest.approx(SD_BETA_START) and float(sd.betas[-1]) == pytest.approx(SD_BETA_END)
    torch.testing.assert_close(sd.alphas_cumprod.float(), reference.alphas_cumprod, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------- denoiser
def test_shapes_flags_and_prompt_embeddings(sd):
    assert sd.latent and sd.sample_shape == (4, LATENT, LATENT) and sd.image_shape == (3, RES, RES)
    assert sd.prediction_type == "epsilon" and sd.guidance_scale == 7.5
    assert sd.cond_embedding.shape == sd.uncond_embedding.shape == (1, 16, 32)
    assert not torch.allclose(sd.cond_embedding, sd.uncond_embedding)
    assert not any(p.requires_grad for p in sd.parameters())


@pytest.mark.parametrize("guidance", [7.5, 1.0, 0.0])
def test_tweedie_is_the_vp_preconditioned_guided_unet(sd, monkeypatch, guidance):
    monkeypatch.setattr(sd, "guidance_scale", guidance)
    z, sigma = latents(), 2.0
    t = torch.full((2,), c_noise(sigma))
    expected = z - sigma * raw_unet(sd, z / math.sqrt(sigma ** 2 + 1), t, guidance)
    with torch.no_grad():
        out = sd.tweedie(z, sigma)
    assert out.dtype == torch.float32 and out.shape == z.shape
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_guidance_mixes_conditional_and_unconditional(sd, monkeypatch):
    z = latents(seed=1)
    outs = {}
    for w in (0.0, 1.0, 3.0):
        monkeypatch.setattr(sd, "guidance_scale", w)
        with torch.no_grad():
            outs[w] = sd.tweedie(z, 1.0)
    assert (outs[1.0] - outs[0.0]).abs().max() > 1e-4  # the prompt matters
    torch.testing.assert_close(outs[3.0], outs[0.0] + 3 * (outs[1.0] - outs[0.0]), rtol=1e-4, atol=1e-5)


def test_per_sample_sigma_matches_one_at_a_time(sd):
    z = latents(seed=2)
    sigmas = torch.tensor([0.3, 5.0])
    with torch.no_grad():
        batched = sd.tweedie(z, sigmas)
        singles = torch.cat([sd.tweedie(z[i:i + 1], float(sigmas[i])) for i in range(2)])
        swapped = sd.tweedie(z, sigmas.flip(0))
        zero_dim = sd.tweedie(z, torch.tensor(0.3))
        scalar = sd.tweedie(z, 0.3)
    # The wrapper computes in float32 (eps 1.2e-7), and a batch of 2 vs 1 may pick other convolution kernels, i.e.
    # other summation orders: through the U-Net's ~30 layers of sums over up to ~10^3 terms each output may then
    # differ by ~1e-5 of the output scale (5e-5 at scale 12 seen on one machine). Allow 1e-4 of the scale, which
    # is still ~10^4 below what a per-sample sigma mix-up changes (checked by `swapped`).
    tol = 1e-4 * batched.abs().max().item()
    torch.testing.assert_close(batched, singles, rtol=0, atol=tol)
    assert (swapped - batched).abs().max().item() > 100 * tol
    torch.testing.assert_close(zero_dim, scalar)


def test_score_is_tweedies_formula(sd):
    z = latents(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(sd.score(z, 0.7), (sd.tweedie(z, 0.7) - z) / 0.49)


def test_v_prediction_denoiser_closed_form(sd_v):
    # x = sqrt(ᾱ) z, x_0 = sqrt(ᾱ) x − sqrt(1 − ᾱ) v  =>  D(z; σ) = ᾱ z − sqrt(1 − ᾱ) v̂,  ᾱ = 1/(1 + σ²)
    assert sd_v.prediction_type == "v_prediction"
    z, sigma = latents(seed=4), 1.5
    abar = 1 / (1 + sigma ** 2)
    v = raw_unet(sd_v, math.sqrt(abar) * z, torch.full((2,), c_noise(sigma)), sd_v.guidance_scale)
    with torch.no_grad():
        out = sd_v.tweedie(z, sigma)
    torch.testing.assert_close(out, abar * z - math.sqrt(1 - abar) * v, rtol=1e-5, atol=1e-5)


def test_ddpm_output_is_the_guided_epsilon_at_integer_timesteps(sd, sd_v):
    z, t = latents(seed=5), torch.tensor([10, 600])
    with torch.no_grad():
        eps, var = sd.ddpm_output(z, t)
        eps_v, _ = sd_v.ddpm_output(z, t)
    assert var is None and not sd.learn_sigma and eps.dtype == torch.float32
    torch.testing.assert_close(eps, raw_unet(sd, z, t, 7.5), rtol=1e-5, atol=1e-5)
    abar = sd.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    expected_v = abar.sqrt() * raw_unet(sd_v, z, t, 7.5) + (1 - abar).sqrt() * z
    torch.testing.assert_close(eps_v, expected_v, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- autoencoder
def test_encode_is_scaled_posterior_mean_of_the_resized_image(sd):
    x = torch.rand(2, 3, RES, RES, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        z = sd.encode(x)
        mean = sd.vae.encode(F.interpolate(x, size=INNER, mode="bilinear", align_corners=False)).latent_dist.mean
        x_back = sd.decode(z)
    assert z.shape == (2, *sd.sample_shape) and z.dtype == torch.float32
    torch.testing.assert_close(z, 0.18215 * mean)
    assert x_back.shape == x.shape and x_back.dtype == torch.float32 and torch.isfinite(x_back).all()


def test_decode_is_differentiable(sd):
    z = latents(seed=7).requires_grad_(True)
    sd.decode(z).square().sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


class ExactVAE(nn.Module):
    """Invertible stand-in autoencoder (pixel unshuffle / shuffle), to isolate resize and scaling."""

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=F.pixel_unshuffle(x, 2)))

    def decode(self, z):
        return SimpleNamespace(sample=F.pixel_shuffle(z, 2))


def test_decode_encode_keeps_shape_and_range_with_an_exact_autoencoder(sd, monkeypatch):
    monkeypatch.setattr(sd, "vae", ExactVAE())
    x = torch.rand(3, 3, RES, RES, generator=torch.Generator().manual_seed(8)) * 2 - 1
    up = F.interpolate(x, size=INNER, mode="bilinear", align_corners=False)
    torch.testing.assert_close(sd.encode(x), 0.18215 * F.pixel_unshuffle(up, 2))
    x_back = sd.decode(sd.encode(x))
    # bilinear 2x down-sampling with half-pixel centres is the 2x2 box mean: a convex combination of pixels
    torch.testing.assert_close(x_back, F.avg_pool2d(up, 2))
    assert x_back.shape == x.shape and x_back.min() >= -1 and x_back.max() <= 1
    assert (x_back - x).abs().mean() < 0.5 * (x - x.mean()).abs().mean()


# ---------------------------------------------------------------------------------------------- options, errors
def test_reduced_precision_falls_back_to_fp32_on_cpu(tiny_folder, sd):
    z = latents(seed=9)
    if torch.cuda.is_available():
        model = load(tiny_folder, precision="bf16")
    else:
        with pytest.warns(UserWarning, match="precision=bf16 needs CUDA"):
            model = load(tiny_folder, precision="bf16")
    with torch.no_grad():
        out = model.tweedie(z, 1.0)
        torch.testing.assert_close(out, sd.tweedie(z, 1.0))
    assert out.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="autocast precision needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_on_cuda_keeps_float32_outputs(tiny_folder, sd, precision):
    model = load(tiny_folder, precision=precision).cuda()
    z = latents(seed=10)
    with torch.no_grad():
        out, ref = model.tweedie(z.cuda(), 1.0), sd.tweedie(z, 1.0)
        x = model.decode(z.cuda())
    assert out.dtype == x.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=0.05)


def test_bad_options_are_rejected(tiny_folder):
    with pytest.raises(ValueError, match="precision='fp8'"):
        load(tiny_folder, precision="fp8")
    with pytest.raises(ValueError, match="inner_resolution=15"):
        load(tiny_folder, inner_resolution=15)


def test_missing_folder_names_path_and_model(tmp_path):
    missing = tmp_path / "no_such_sd"
    with pytest.raises(CheckpointError, match="tiny-sd") as err:
        load(missing)
    assert str(missing) in str(err.value) and "unet/" in str(err.value)


def test_uncached_hub_id_offline_gives_the_download_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as err:
        load("nobody-here/not-a-cached-sd-model", local_files_only=None)
    message = str(err.value)
    assert "'tiny-sd'" in message and "`hf download nobody-here/not-a-cached-sd-model`" in message
    assert "offline" in message


def test_hub_id_loads_offline_from_the_hf_home_cache(tiny_folder, tmp_path):
    """A hub id resolves from $HF_HOME/hub with HF_HUB_OFFLINE=1 (fresh process: the hub reads both at import)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf_home" / "hub" / "models--tiny-owner--tiny-sd"
    shutil.copytree(tiny_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = ("from common.models import build_model; m = build_model('stable_diffusion', "
            f"model_id='tiny-owner/tiny-sd', resolution={RES}, inner_resolution={INNER}, precision='fp32'); "
            "print('loaded', tuple(m.sample_shape))")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"loaded (4, {LATENT}, {LATENT})" in result.stdout


@pytest.mark.parametrize("config, model_id, inner", [
    ("stable-diffusion-v1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5", 512),
    ("stable-diffusion-v2.1", "stabilityai/stable-diffusion-2-1", 768),
])
def test_configs_hold_the_reference_values(config, model_id, inner):
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "model" / f"{config}.yaml"))
    assert cfg.pop("name") == "stable_diffusion"
    assert set(cfg) <= set(inspect.signature(StableDiffusion).parameters)
    assert cfg == dict(config_name=config, model_id=model_id, inner_resolution=inner, resolution=256,
                       prompt="a natural looking image", guidance_scale=7.5, precision="fp16",
                       local_files_only=None)
