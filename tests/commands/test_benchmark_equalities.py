"""Speed options change the speed, not the samples.

* Batching: every (image, run) item has its own generators and the samplers never couple samples, so a batch of
  B items equals B runs of one item; not bit for bit, because convolution kernels pick their summation order by
  batch size, and the chains amplify that rounding: within 1e-4 (DAPS) and 1e-3 (DPS, whose step follows the
  gradient of a norm through the network) relative to the output's magnitude; measured ~6e-6 and ~3e-4.
* ``channels_last`` and ``compile``: the same function with other kernels; within float32 rounding.
* bf16: the network runs in bfloat16 (8 significant bits) under autocast while the sampler state stays float32.
  Stated tolerance: on the demo images (×4 super-resolution, tiny ADM of ``adm_small.pt``), a short DAPS run in
  bf16 stays within BF16_MIN_PSNR_DB of the fp32 run, PSNR taken relative to the fp32 output's range (the random
  weights make the samples large, so the image range [−1, 1] would not be a meaningful peak).
"""
from __future__ import annotations

import shutil

import pytest
import torch

import daps  # noqa: F401  (registers the DAPS samplers)
import dps  # noqa: F401  (registers the DPS samplers)
from common.data.datasets import build_dataset
from common.models.acceleration import accelerate
from common.models.ddpm import DDPMModel
from common.operators import build_operator
from common.random import make_generator
from common.sampling import build_sampler
from tests.helpers.fixtures import load_fixture

BF16_MIN_PSNR_DB = 40.0  # measured ~55 dB (relative) on this problem


def adm_small(**options) -> DDPMModel:
    d = load_fixture("adm_small.pt")
    return DDPMModel.from_state_dict(d["config"]["create_model_kwargs"], d["state_dict"], **options)


def problem(n: int, resolution: int = 32):
    """×4 super-resolution of the first ``n`` demo images, noise drawn per image."""
    data = build_dataset("skimage", resolution=resolution)
    x = torch.stack([data[i][1] for i in range(n)])
    op = build_operator("down_sampling", sigma=0.05, resolution=resolution, scale_factor=4)
    return op, op.measure(x, [make_generator(3, i, "noise") for i in range(n)])


def generators(ids) -> list[torch.Generator]:
    return [make_generator(3, i, 0) for i in ids]


def daps_sampler(annealing: int = 2, ode: int = 2, mcmc: int = 3, sigma_max: float = 10.0):
    return build_sampler({"name": "edm_daps",
                          "annealing_scheduler_config": {"num_steps": annealing, "sigma_max": sigma_max, "sigma_min": 0.1},
                          "diffusion_scheduler_config": {"num_steps": ode, "sigma_min": 0.01},
                          "mcmc_sampler_config": {"num_steps": mcmc, "lr": 1e-4, "tau": 0.01, "lr_min_ratio": 0.01}})


def dps_sampler(steps: int = 3):
    return build_sampler({"name": "dps", "num_steps": steps, "method": "ps", "scale": 0.3})


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """max |actual − expected| ≤ rel · max |expected| (and both finite)."""
    assert torch.isfinite(expected).all() and torch.isfinite(actual).all()
    error, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    assert error <= rel * scale, f"max error {error:.3g} > {rel:g} × {scale:.3g}"


def relative_psnr(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per sample 10 log10(range² / MSE), range = max − min of the reference sample."""
    span = reference.flatten(1).amax(1) - reference.flatten(1).amin(1)
    return 10 * torch.log10(span ** 2 / (x - reference).pow(2).flatten(1).mean(1))


@pytest.mark.parametrize("make_sampler, rel", [(daps_sampler, 1e-4), (dps_sampler, 1e-3)], ids=["daps", "dps"])
def test_batched_equals_unbatched(make_sampler, rel):
    model, sampler = adm_small(), make_sampler()
    op, y = problem(2)
    batched = sampler.sample(model, op, y, generators=generators(range(2))).samples
    single = torch.cat([sampler.sample(model, op, y[i:i + 1], generators=generators([i])).samples for i in range(2)])
    assert_close_relative(single, batched, rel)
    # and the items really differ (each its own image and generator)
    assert (batched[0] - batched[1]).abs().max() > 1e-2


def test_channels_last_equals_default():
    op, y = problem(2)
    eager = daps_sampler(annealing=2).sample(adm_small(), op, y, generators=generators(range(2))).samples
    fast = daps_sampler(annealing=2).sample(accelerate(adm_small(), channels_last=True), op, y,
                                            generators=generators(range(2))).samples
    assert_close_relative(fast, eager, 1e-4)


def test_channels_last_converts_the_conv_weights():
    model = accelerate(adm_small(), channels_last=True)
    conv = model.unet.input_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_accelerate_refuses_bad_mode_and_double_compile():
    with pytest.raises(ValueError, match="compile_mode='fast'.*reduce-overhead"):
        accelerate(adm_small(), compile=True, compile_mode="fast")
    model = accelerate(adm_small(), compile=True)  # torch.compile is lazy: nothing is compiled yet
    with pytest.raises(ValueError, match="already replaced"):
        accelerate(model, compile=True)


def test_bf16_stays_within_stated_psnr_of_fp32_on_the_demo():
    op, y = problem(2)
    out = {p: daps_sampler(annealing=4, mcmc=3).sample(adm_small(precision=p), op, y,
                                                       generators=generators(range(2))).samples
           for p in ("fp32", "bf16")}
    psnr = relative_psnr(out["bf16"], out["fp32"])
    assert (psnr > BF16_MIN_PSNR_DB).all(), psnr
    assert (psnr < 120).all(), "bf16 gave bit-identical output: autocast did not take effect"


def _compile_unsupported() -> str | None:
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile (dynamo) is not supported on this Python/platform"
    if shutil.which("g++") is None and shutil.which("c++") is None:
        return "torch.compile's CPU backend needs a C++ compiler (g++ / c++), none found"
    return None


def tiny_adm() -> DDPMModel:
    """An ADM smaller than adm_small (fewer layers: shorter compile), seeded random weights."""
    config = {"image_size": 16, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2", "learn_sigma": True,
              "attention_resolutions": "8", "num_heads": 2, "num_head_channels": 16, "use_scale_shift_norm": True,
              "resblock_updown": True}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return DDPMModel(16, None, config, allow_random_weights=True)


@pytest.mark.slow
@pytest.mark.skipif(_compile_unsupported() is not None, reason=str(_compile_unsupported()))
@pytest.mark.parametrize("make_sampler", [daps_sampler, dps_sampler], ids=["daps", "dps"])
def test_compile_equals_eager(make_sampler):
    """DAPS compiles tweedie (no grad); DPS compiles ddpm_output with its backward pass."""
    op, y = problem(2, resolution=16)
    eager_model = tiny_adm()
    compiled_model = accelerate(tiny_adm(), compile=True)
    eager = make_sampler().sample(eager_model, op, y, generators=generators(range(2))).samples
    compiled = make_sampler().sample(compiled_model, op, y, generators=generators(range(2))).samples
    assert "tweedie" in vars(compiled_model)  # the compiled method was the one called
    assert_close_relative(compiled, eager, 1e-4)
