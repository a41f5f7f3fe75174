"""The blurs' ``method`` setting (common/operators/convolution.py): every path (direct correlation, FFT, banded
separable product) is a linear map with its exact adjoint, the fast paths equal the direct one, and ``direct`` is the
previous arithmetic, bit for bit.

Tolerances: float64 checks are at 1e-10 (the maps agree to ~1e-15; the slack is for sums of a few thousand terms);
the float32 checks on [-1, 1] images use the issue's bound, 1e-5 absolute: a blur output is a convex combination of
pixels, computed with float32 sums whose error bound is of order (terms per sum) · 2⁻²⁴ ≈ 2e-4 in the worst case and
about √terms · 2⁻²⁴ ≈ 4e-6 for the 3,721-term direct sums in practice.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.errors import SettingError
from common.operators import LinearOperator, Operator, build_operator, convolution, stack_states
from common.operators.convolution import (
    METHODS,
    band_radius,
    banded_sandwich,
    fft_pays,
    fft_plan,
    reflect_correlate,
    reflect_correlate_adjoint,
    reflect_correlate_fft,
    reflect_correlate_fft_adjoint,
    reflect_correlation_matrix,
)
from common.operators.gaussian_blur import gaussian_kernel, gaussian_profile
from common.random import make_generator

F32 = dict(atol=1e-5, rtol=0)
F64 = dict(atol=1e-10, rtol=1e-10)

#: tiny float64 settings that take the path named: the direct correlation, the FFT (a 15×15 kernel on 16 px: fft_pays;
#: one sample per chunk with the fixture below), the banded product (in several blocks with the fixture below), and
#: ``fast`` on a kernel too small for the FFT (the direct correlation with an explicit adjoint)
PATHS = {
    "direct gaussian": dict(name="gaussian_blur", resolution=12, kernel_size=5, intensity=1.0, method="direct"),
    "banded gaussian": dict(name="gaussian_blur", resolution=12, kernel_size=5, intensity=1.0, method="fast"),
    "direct motion": dict(name="motion_blur", resolution=16, kernel_size=15, intensity=0.5, method="direct"),
    "fft motion": dict(name="motion_blur", resolution=16, kernel_size=15, intensity=0.5, method="fast"),
    "small fast motion": dict(name="motion_blur", resolution=8, kernel_size=5, intensity=0.5, method="fast"),
}


@pytest.fixture
def small_pieces(monkeypatch):
    """Banded blocks of max(2, 2r) rows, so that a 12-px image is cut into several (the 64-row minimum would take
    one), and FFT chunks of one sample (tiny images would go through in one chunk)."""
    monkeypatch.setattr(convolution, "MIN_BAND_BLOCK", 2)
    monkeypatch.setattr(convolution, "FFT_CHUNK_BYTES", 1)


def path_operator(path: str, batch: int = 2) -> LinearOperator:
    op = build_operator(**PATHS[path])
    op.set_state(stack_states([op.draw_state(make_generator(0, i)) for i in range(batch)]))
    if path.endswith("gaussian"):
        op.kernel = gaussian_kernel(op.kernel_size, op.intensity)   # the direct path's kernel in float64: g gᵀ exactly
    return op


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


def test_paths_are_the_ones_named():
    assert fft_pays(15, 16, 16) and not fft_pays(5, 8, 8)           # "fft motion", "small fast motion"
    assert fft_pays(61, 64, 64) and fft_pays(61, 256, 256)         # the tasks' motion kernels take the FFT
    op = build_operator(**PATHS["banded gaussian"])
    assert op.band == 2 and len(convolution._band_blocks(12, op.band)) == 1
    # a 61-tap Gaussian of std 3 is zero beyond 4σ + ½: a band of 12 whatever the window
    assert build_operator("gaussian_blur", resolution=256).band == 12


@pytest.mark.usefixtures("small_pieces")
@pytest.mark.parametrize("path", list(PATHS))
def test_adjoint_identity(path):
    """⟨A x, y⟩ = ⟨x, Aᵀ y⟩ with Aᵀ the VJP (per-sample kernels for motion blur, batch of 2)."""
    if path == "banded gaussian":
        assert len(convolution._band_blocks(12, 2)) == 3
    op = path_operator(path)
    x, y = randn(2, 3, op.resolution, op.resolution, seed=1), randn(2, 3, op.resolution, op.resolution, seed=2)
    torch.testing.assert_close(inner(op(x), y), inner(x, op.adjoint(y)), **F64)
    # the explicit adjoints are autograd's VJP of the forward, and the graph-free gradient the autograd one
    torch.testing.assert_close(op.adjoint(y), LinearOperator.adjoint(op, y), atol=1e-12, rtol=1e-12)
    grad, loss = op.gradient(x, y)
    expected_grad, expected_loss = Operator.gradient(op, x, y)
    torch.testing.assert_close(grad, expected_grad, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(loss, expected_loss, atol=1e-12, rtol=1e-12)


@pytest.mark.usefixtures("small_pieces")
@pytest.mark.parametrize("path", list(PATHS))
def test_gradcheck(path):
    op = path_operator(path, batch=1)
    x = randn(1, 2, op.resolution, op.resolution, seed=3).requires_grad_(True)
    assert torch.autograd.gradcheck(op, (x,), eps=1e-6, atol=1e-8)


@pytest.mark.usefixtures("small_pieces")
def test_banded_adjoint_is_m_transpose_and_twice_differentiable():
    """The banded product's VJP is Mᵀ G M; its own VJP (a double backward) is M X Mᵀ again."""
    matrix = reflect_correlation_matrix(randn(7, seed=4), 12)
    assert band_radius(matrix) == 3
    x, g = randn(2, 3, 12, 12, seed=5).requires_grad_(True), randn(2, 3, 12, 12, seed=6)
    out = banded_sandwich(x, matrix, 3)
    torch.testing.assert_close(out, matrix @ x @ matrix.T, **F64)
    (vjp,) = torch.autograd.grad(out, x, g, create_graph=True)
    torch.testing.assert_close(vjp, matrix.T @ g @ matrix, **F64)
    assert torch.autograd.gradgradcheck(lambda z: banded_sandwich(z, matrix, 3), (x,), atol=1e-8)


@pytest.mark.parametrize("chunk_bytes", [1, convolution.FFT_CHUNK_BYTES])
@pytest.mark.parametrize("size, kernel_size, batch", [(16, 15, 1), (16, 15, 2), (20, 9, 3), (64, 61, 2), (9, 3, 2)])
def test_fft_equals_direct_on_random_kernels_float64(monkeypatch, chunk_bytes, size, kernel_size, batch):
    """Random (not normalised, signed) kernels, shared by the batch and one per sample, in one chunk or one per
    sample."""
    monkeypatch.setattr(convolution, "FFT_CHUNK_BYTES", chunk_bytes)
    x = randn(batch, 3, size, size, seed=7)
    for kernel in (randn(kernel_size, kernel_size, seed=8), randn(batch, kernel_size, kernel_size, seed=9)):
        torch.testing.assert_close(reflect_correlate_fft(x, fft_plan(kernel, x)), reflect_correlate(x, kernel), **F64)
        torch.testing.assert_close(reflect_correlate_fft_adjoint(x, fft_plan(kernel, x)),
                                   reflect_correlate_adjoint(x, kernel), **F64)


@pytest.mark.parametrize("size, kernel_size, sigma", [(12, 5, 1.0), (64, 61, 3.0), (96, 61, 3.0), (40, 31, 10.0)])
def test_separable_equals_direct_float64(size, kernel_size, sigma):
    """Including folded profiles (σ = 10: taps beyond the 31-px window) and several blocks (96 px)."""
    op = build_operator("gaussian_blur", resolution=size, kernel_size=kernel_size, intensity=sigma)
    x = randn(2, 3, size, size, seed=10)
    torch.testing.assert_close(op(x), reflect_correlate(x, gaussian_kernel(kernel_size, sigma)), **F64)


@pytest.mark.parametrize("size", [64, 256])
def test_fast_equals_direct_float32(size):
    """The tasks' settings (61×61 kernels) on [-1, 1] images: the Gaussian, random motion kernels (one per sample)
    and random non-negative kernels that sum to one (e.g. a loaded kernel state)."""
    gen = torch.Generator().manual_seed(11)
    x = 2 * torch.rand(2, 3, size, size, generator=gen) - 1
    gaussian = {method: build_operator("gaussian_blur", resolution=size, method=method) for method in METHODS}
    torch.testing.assert_close(gaussian["fast"](x), gaussian["direct"](x), **F32)
    motion = {method: build_operator("motion_blur", resolution=size, method=method) for method in METHODS}
    drawn = stack_states([motion["direct"].draw_state(make_generator(0, i)) for i in range(2)])
    dense = torch.rand(2, 61, 61, generator=gen)
    for state in (drawn, {"kernel": dense / dense.sum((-2, -1), keepdim=True)}):
        for op in motion.values():
            op.set_state(state)
        torch.testing.assert_close(motion["fast"](x), motion["direct"](x), **F32)


def previous_reflect_correlate(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The blur as every operator computed it before ``method`` existed (commit b753b0b), kept as the oracle."""
    batch, channels, height, width = x.shape
    if kernel.dim() == 2:
        kernel = kernel[None]
    size = kernel.shape[-1]
    pad = size // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    kernel = kernel.to(device=x.device, dtype=x.dtype).expand(batch, size, size)
    weight = kernel.repeat_interleave(channels, dim=0)[:, None]
    out = F.conv2d(padded.reshape(1, batch * channels, *padded.shape[-2:]), weight, groups=batch * channels)
    return out.reshape(batch, channels, height, width)


@pytest.mark.parametrize("task", ["gaussian_blur", "motion_blur"])
def test_direct_is_the_previous_arithmetic_bit_for_bit(task):
    """``method: direct`` computes exactly what the operators computed before, and its gradient is autograd's (the
    fixture tests compare it with the reference)."""
    op = build_operator(task, resolution=64, method="direct")
    if task == "motion_blur":
        op.set_state(stack_states([op.draw_state(make_generator(0, i)) for i in range(2)]))
    x = 2 * torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(12)) - 1
    assert torch.equal(op(x), previous_reflect_correlate(x, op.blur_kernel()))
    y = torch.zeros_like(x)
    x = x.requires_grad_(True)
    (expected,) = torch.autograd.grad((previous_reflect_correlate(x, op.blur_kernel()) - y).pow(2).sum(), x)
    assert torch.equal(op.gradient(x, y)[0], expected)


def test_gaussian_fast_path_is_its_svd_map():
    """The fast Gaussian computes exactly M X Mᵀ, the map whose Kronecker SVD the operator declares."""
    op = build_operator("gaussian_blur", resolution=16, kernel_size=9, intensity=1.5)
    matrix = reflect_correlation_matrix(gaussian_profile(9, 1.5), 16)
    x = randn(2, 3, 16, 16, seed=13)
    torch.testing.assert_close(op(x), matrix @ x @ matrix.T, atol=1e-15, rtol=0)
    svd = op.svd(3, torch.float64)
    torch.testing.assert_close(svd.u(svd.singulars() * svd.vt(x)), op(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("task", ["gaussian_blur", "motion_blur"])
def test_bad_method_is_refused_naming_key_value_and_choices(task):
    with pytest.raises(SettingError, match=r"operator\.method='dense' is not valid: choose one of direct, fast"):
        build_operator(task, resolution=64, method="dense")
    assert build_operator(task, resolution=64).method == "fast"


def test_fft_plan_follows_the_installed_kernel():
    """The kernel spectrum kept between calls is recomputed for a new state and after an in-place change."""
    op = path_operator("fft motion")
    x = randn(2, 3, 16, 16, seed=14)
    torch.testing.assert_close(op(x), reflect_correlate(x, op.state["kernel"]), **F64)
    op.set_state({"kernel": op.state["kernel"].flip(-1)})
    torch.testing.assert_close(op(x), reflect_correlate(x, op.state["kernel"]), **F64)
    op.state["kernel"].mul_(2)
    torch.testing.assert_close(op(x), reflect_correlate(x, op.state["kernel"]), **F64)
