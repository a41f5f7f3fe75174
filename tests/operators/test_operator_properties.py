"""Operator invariants: adjoints, pseudo-inverses, gradients (gradcheck in float64), noise statistics,
per-image random state, and construction-time refusal of bad input."""
from __future__ import annotations

import pytest
import torch

from common.errors import SettingError
from common.operators import LinearOperator, build_operator, stack_states
from common.random import make_generator
from common.registry import OPERATORS

TINY = {
    "down_sampling": dict(resolution=8, scale_factor=2),
    "inpainting": dict(resolution=16, mask_type="box", mask_len_range=[4, 7]),
    "inpainting_rand": dict(name="inpainting", resolution=8, mask_type="random", mask_prob_range=[0.5, 0.6]),
    "gaussian_blur": dict(resolution=8, kernel_size=5, intensity=1.0),
    "motion_blur": dict(resolution=8, kernel_size=5, intensity=0.5),
    "phase_retrieval": dict(resolution=8, oversample=2.0),
    "high_dynamic_range": dict(resolution=8, scale=2),
}


def tiny_operator(task: str, batch: int = 2, seed: int = 0):
    params = {"name": task, **TINY[task]}
    op = build_operator(**params)
    op.set_state(stack_states([op.draw_state(make_generator(seed, i)) for i in range(batch)]))
    return op


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


def capabilities(task: str) -> frozenset[str]:
    return OPERATORS.get(TINY[task].get("name", task)).capabilities


#: registered operators without tiny parameters here, and why
UNTESTED = {"nonlinear_blur": "needs its network checkpoint (GOPRO_wVAE.pth): tests/operators/test_operator_fixtures.py"}
LINEAR = [task for task in TINY if "linear" in capabilities(task)]


def test_every_registered_operator_has_tiny_parameters():
    covered = {params.get("name", task) for task, params in TINY.items()}
    assert set(OPERATORS.names()) - set(UNTESTED) <= covered, "add the new operator to TINY"
    assert LINEAR


@pytest.mark.parametrize("task", LINEAR)
def test_adjoint_identity(task):
    op = tiny_operator(task)
    assert isinstance(op, LinearOperator) and op.linear
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, op.resolution, op.resolution, generator=g, dtype=torch.float64)
    y = torch.randn(op(x).shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(inner(op(x), y), inner(x, op.adjoint(y)), atol=1e-10, rtol=1e-10)
    # explicit adjoints agree with the autograd vector-Jacobian product of the base class
    torch.testing.assert_close(op.adjoint(y), LinearOperator.adjoint(op, y), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("task", ["down_sampling", "inpainting", "inpainting_rand"])
def test_pseudo_inverse(task):
    """The exactly invertible-on-range operators; the blurs' truncated/CG pseudo-inverses are checked against dense
    ones in tests/operators/test_linalg.py."""
    op = tiny_operator(task)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, op.resolution, op.resolution, generator=g, dtype=torch.float64)
    y = op(x)
    torch.testing.assert_close(op(op.pinv(y)), y, atol=1e-5, rtol=1e-5)              # A A⁺ A = A
    z = op.pinv(torch.randn(y.shape, generator=g, dtype=torch.float64))
    torch.testing.assert_close(op.pinv(op(z)), z, atol=1e-5, rtol=1e-5)              # A⁺ A A⁺ = A⁺


def test_down_sampling_preserves_constants():
    op = build_operator("down_sampling", resolution=16, scale_factor=4)
    x = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(op(x), torch.full((1, 3, 4, 4), 0.3))


@pytest.mark.parametrize("task", list(TINY))
def test_gradcheck_float64(task):
    op = tiny_operator(task, batch=1)
    g = torch.Generator().manual_seed(3)
    # HDR: keep s·x away from the clip's kinks at ±1
    x = (0.8 * torch.rand(1, 3, op.resolution, op.resolution, generator=g, dtype=torch.float64) - 0.4)
    assert torch.autograd.gradcheck(op, (x.requires_grad_(True),), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("task", LINEAR)
def test_gradient_is_twice_adjoint_residual(task):
    op = tiny_operator(task)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, op.resolution, op.resolution, generator=g, dtype=torch.float64)
    y = torch.randn(op(x).shape, generator=g, dtype=torch.float64)
    grad, loss = op.gradient(x, y)
    torch.testing.assert_close(grad, 2 * op.adjoint(op(x) - y))
    torch.testing.assert_close(loss, (op(x) - y).pow(2).flatten(1).sum(1))


def test_phase_retrieval_closed_forms():
    op = build_operator("phase_retrieval", resolution=16, oversample=2.0)
    assert op.pad == 4
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    y = op(x)
    assert y.shape == (2, 3, 24, 24)
    x01 = x / 2 + 0.5
    torch.testing.assert_close(y[..., 12, 12], x01.sum((-2, -1)) / 24)                # DC term
    torch.testing.assert_close(y.pow(2).sum((-2, -1)), x01.pow(2).sum((-2, -1)))      # Parseval (ortho FFT)
    # |F| ignores translations: with the last 3 columns black (x₀₁ = 0), rolling by 3 translates the padded image
    x[..., -3:] = -1.0
    torch.testing.assert_close(op(torch.roll(x, 3, dims=-1)), op(x))


def test_hdr_closed_form():
    op = build_operator("high_dynamic_range", resolution=4, scale=2)
    x = torch.tensor([-1.0, -0.6, -0.2, 0.0, 0.3, 0.5, 0.9, 1.0]).view(1, 1, 2, 4)
    assert torch.equal(op(x), torch.tensor([-1.0, -1.0, -0.4, 0.0, 0.6, 1.0, 1.0, 1.0]).view(1, 1, 2, 4))


def test_buffers_move_with_the_module():
    assert set(build_operator("down_sampling", resolution=8, scale_factor=2).state_dict()) == {"matrix",
                                                                                               "matrix_pinv"}
    assert set(build_operator("gaussian_blur", resolution=8, kernel_size=5).state_dict()) == {"kernel"}


# ------------------------------------------------------------------------------------------ noise
def test_gaussian_noise_statistics_and_reproducibility():
    op = build_operator("high_dynamic_range", resolution=64, sigma=0.05)
    x = torch.zeros(4, 3, 64, 64)
    gens = lambda: [make_generator(7, i) for i in range(4)]
    y = op.measure(x, gens())
    assert abs(y.mean().item()) < 3 * 0.05 / (y.numel() ** 0.5) * 2
    assert y.std().item() == pytest.approx(0.05, rel=0.02)
    assert torch.equal(y, op.measure(x, gens()))                                       # same seeds, same noise
    assert torch.equal(y[2:3], op.measure(x[2:3], [make_generator(7, 2)]))           # independent of the batch
    assert not torch.equal(y[0], y[1])


def test_poisson_noise_statistics_and_reproducibility():
    rate = 1.0
    op = build_operator("high_dynamic_range", resolution=64, noise="poisson", rate=rate)
    x = torch.full((4, 3, 64, 64), -0.2)                                               # x₀₁ = 0.4
    gens = lambda: [make_generator(3, i) for i in range(4)]
    y = op.measure(x, gens())
    counts = (y + 1) / 2 * 255 * rate
    torch.testing.assert_close(counts, counts.round(), atol=1e-3, rtol=0)             # integer photon counts
    assert y.mean().item() == pytest.approx(-0.4, abs=0.004)                           # A(x) = clip(2x) = -0.4
    expected_std = 2 * (0.3 / (255 * rate)) ** 0.5                                     # Var y₀₁ = x₀₁/(255 rate)
    assert y.std().item() == pytest.approx(expected_std, rel=0.03)
    assert torch.equal(y, op.measure(x, gens()))


def test_poisson_rate_must_be_positive():
    with pytest.raises(ValueError, match="rate"):
        build_operator("high_dynamic_range", resolution=8, noise="poisson", rate=0)


# ------------------------------------------------------------------------------------------ state
def test_box_mask_state():
    op = build_operator("inpainting", resolution=256, mask_type="box", mask_len_range=[128, 129])
    masks = [op.draw_state(make_generator(42, i))["mask"] for i in range(20)]
    for mask in masks:
        assert mask.shape == (1, 256, 256) and mask.dtype == torch.bool
        rows, cols = torch.nonzero(~mask[0], as_tuple=True)
        assert (~mask).sum() == 128 * 128
        assert 32 <= rows.min() and rows.max() < 256 - 32 and 32 <= cols.min() and cols.max() < 256 - 32
    assert len({tuple(torch.nonzero(~m[0])[0].tolist()) for m in masks}) > 5       # corners vary per image
    assert torch.equal(masks[3], op.draw_state(make_generator(42, 3))["mask"])       # reproducible


def test_random_mask_state():
    op = build_operator("inpainting", resolution=256, mask_type="random", mask_prob_range=[0.70, 0.71])
    first = op.draw_state(make_generator(0, 0))["mask"]
    missing = (~first).float().mean().item()
    assert 0.70 - 1 / 65536 <= missing < 0.71
    assert torch.equal(first, op.draw_state(make_generator(0, 0))["mask"])
    assert not torch.equal(first, op.draw_state(make_generator(0, 1))["mask"])


def test_motion_kernel_state():
    op = build_operator("motion_blur", resolution=64, kernel_size=61, intensity=0.5)
    kernel = op.draw_state(make_generator(5, 0))["kernel"]
    assert kernel.shape == (61, 61) and kernel.dtype == torch.float32 and (kernel >= 0).all()
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(kernel, op.draw_state(make_generator(5, 0))["kernel"])
    assert not torch.equal(kernel, op.draw_state(make_generator(5, 1))["kernel"])


def test_per_image_state_acts_per_sample():
    op = tiny_operator("motion_blur", batch=2)
    x = torch.randn(2, 3, 8, 8)
    both = op(x)
    for i in range(2):
        single = build_operator("motion_blur", **TINY["motion_blur"])
        single.set_state({"kernel": op.state["kernel"][i:i + 1]})
        torch.testing.assert_close(single(x[i:i + 1]), both[i:i + 1])


def test_forward_without_state_says_what_to_do():
    op = build_operator("inpainting", resolution=16, mask_len_range=[4, 5])
    with pytest.raises(RuntimeError, match="set_state"):
        op(torch.zeros(1, 3, 16, 16))


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("params, message", [
    (dict(name="down_sampling", resolution=250, scale_factor=4),
     "scale_factor=4 is not valid: need a divisor of the resolution 250"),
    (dict(name="down_sampling", resolution=256, scale_factor=0), "scale_factor"),
    (dict(name="gaussian_blur", resolution=16, kernel_size=61), "too large for resolution 16"),
    (dict(name="motion_blur", resolution=16, kernel_size=61), "too large for resolution 16"),
    (dict(name="gaussian_blur", resolution=64, kernel_size=60), "need an odd size"),
    (dict(name="gaussian_blur", resolution=64, intensity=0.0), "intensity"),
    (dict(name="motion_blur", resolution=64, intensity=1.5), "intensity"),
    (dict(name="inpainting", resolution=64, mask_type="circle"), "choose one of box, random"),
    (dict(name="inpainting", resolution=64, mask_len_range=[128, 129]), "does not fit resolution 64"),
    (dict(name="inpainting", resolution=64, mask_type="random", mask_prob_range=[0.7, 1.2]), "mask_prob_range"),
    (dict(name="phase_retrieval", resolution=64, oversample=-1.0), "oversample"),
    (dict(name="high_dynamic_range", resolution=64, scale=0), "scale"),
    (dict(name="down_sampling", resolution=-8), "resolution"),
])
def test_bad_construction_is_refused(params, message):
    with pytest.raises(ValueError, match=message):
        build_operator(**params)


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_operator("super_resolution", resolution=256)
    for name in ["down_sampling", "inpainting", "gaussian_blur", "motion_blur", "phase_retrieval",
                 "nonlinear_blur", "high_dynamic_range"]:
        assert name in str(err.value)


def test_unknown_parameter_is_refused_naming_its_key():
    with pytest.raises(SettingError, match=r"unknown setting operator\.kernel_size=3: valid keys of operator: .*scale"):
        build_operator("high_dynamic_range", resolution=8, kernel_size=3)
    with pytest.raises(SettingError, match=r"operator\.scale_factr.*did you mean 'scale_factor'"):
        build_operator("down_sampling", resolution=16, scale_factr=4)
