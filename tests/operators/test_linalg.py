"""Operator linear algebra against dense matrices: the SVD reconstructs A, A⁺ satisfies the Penrose conditions and
equals torch.linalg.pinv, prox satisfies its optimality condition and equals the dense solve; for the closed forms
and for the conjugate-gradient fallback. Float64, 8×8 to 16×16 images, per-sample state (B = 2)."""
from __future__ import annotations

import pytest
import torch

from common.operators import CAPABILITIES, LinearOperator, SVDOperator, build_operator, stack_states
from common.operators.base import Operator
from common.operators.gaussian_blur import gaussian_kernel
from common.operators.linalg import conjugate_gradient
from common.random import make_generator
from common.registry import OPERATORS

pytestmark = pytest.mark.usefixtures("one_thread")

#: dense matrices are built for one channel (the maps act on channels alike); batched checks use three
DENSE_CHANNELS, CHANNELS, BATCH = 1, 3, 2
#: one entry per registered operator with capabilities (the guard test enforces it); nonlinear_blur, phase_retrieval
#: and high_dynamic_range declare none, so they need no entry (nonlinear_blur would also need its network checkpoint)
CASES = {
    "down_sampling": dict(name="down_sampling", resolution=16, scale_factor=4),     # the ×4 bicubic resizer
    "inpainting_box": dict(name="inpainting", resolution=16, mask_type="box", mask_len_range=[4, 7]),
    "inpainting_random": dict(name="inpainting", resolution=8, mask_type="random", mask_prob_range=[0.5, 0.6]),
    "gaussian_blur": dict(name="gaussian_blur", resolution=8, kernel_size=5, intensity=1.0),
    "motion_blur": dict(name="motion_blur", resolution=8, kernel_size=5, intensity=0.5),
}
SVD_CASES = [case for case, params in CASES.items() if "svd" in OPERATORS.get(params["name"]).capabilities]
#: CG settings (cg_tol, cg_max_iter) for the fallback comparisons: iterate until the Krylov space is exhausted (at most
#: 64 distinct singular values per channel here), so the result is A⁺y / the prox up to rounding error
TIGHT_CG = (1e-13, 600)


def build(case: str, state: dict[str, torch.Tensor] | None = None) -> LinearOperator:
    """The operator of ``case`` with ``state`` (default: a batch of two per-image draws) and the tight CG settings.

    The Gaussian kernel is installed in float64: the stored float32 kernel is the rounding of g gᵀ, which is not
    exactly rank one (test_gaussian_float32_kernel_agrees_with_its_separable_svd covers it)."""
    op = build_operator(**CASES[case])
    op.set_state(stack_states([op.draw_state(make_generator(0, i)) for i in range(BATCH)]) if state is None
                 else state)
    if case == "gaussian_blur":
        op.kernel = gaussian_kernel(op.kernel_size, op.intensity)
    op.cg_tol, op.cg_max_iter = TIGHT_CG
    return op


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    """(name, batched operator, per-sample operators, per-sample dense matrices (m, n))."""
    op = build(request.param)
    singles = [build(request.param, {k: v[b:b + 1] for k, v in op.state.items()}) for b in range(BATCH)]
    return request.param, op, singles, [dense(s) for s in singles]


def image_shape(op: Operator, channels: int = DENSE_CHANNELS) -> tuple[int, int, int]:
    return (channels, op.resolution, op.resolution)


def dense(op: Operator) -> torch.Tensor:
    """The matrix of A for one sample (m, n): columns A(e_j) for the basis images e_j."""
    n = DENSE_CHANNELS * op.resolution ** 2
    return op(torch.eye(n, dtype=torch.float64).view(n, *image_shape(op))).reshape(n, -1).T


def dense_from_measurements(op: Operator, apply) -> torch.Tensor:
    """Columns apply(e_k) for the basis measurements e_k of one sample (e.g. A⁺ as an n × m matrix)."""
    m_shape = op(torch.zeros(1, *image_shape(op), dtype=torch.float64)).shape[1:]
    m = m_shape.numel()
    return apply(torch.eye(m, dtype=torch.float64).view(m, *m_shape)).reshape(m, -1).T


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Agreement to ``rtol`` relative to the largest entry of the expected value."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=rtol * float(expected.abs().max().clamp_min(1.0)))


# ------------------------------------------------------------------------------------ declared capabilities
@pytest.mark.parametrize("name", OPERATORS.names())
def test_every_operator_with_capabilities_is_tested(name):
    cls = OPERATORS.get(name)
    assert cls.capabilities <= set(CAPABILITIES)
    assert ("linear" in cls.capabilities) == issubclass(cls, LinearOperator) == cls.linear
    assert ("svd" in cls.capabilities) == issubclass(cls, SVDOperator)
    if issubclass(cls, LinearOperator):
        assert {"pinv", "prox"} <= cls.capabilities
    if cls.capabilities - {"fourier_magnitude"}:  # the Fourier-magnitude map: tests/baselines/test_hio.py
        assert name in {params["name"] for params in CASES.values()}, f"add {name} to CASES"


def test_capabilities_are_checked_and_derive_linear():
    assert OPERATORS.get("motion_blur").capabilities == {"linear", "pinv", "prox"}
    assert OPERATORS.get("phase_retrieval").capabilities == {"fourier_magnitude"}
    assert not OPERATORS.get("phase_retrieval").linear
    with pytest.raises(TypeError, match="unknown entries \\['inverse'\\]; valid: linear, svd, pinv, prox, "
                                        "fourier_magnitude"):
        type("Bad", (LinearOperator,), {"capabilities": frozenset({"linear", "inverse"})})


# ------------------------------------------------------------------------------------------------------ SVD
@pytest.mark.parametrize("case", SVD_CASES, indirect=True)
def test_svd_reconstructs_the_dense_operator(case):
    name, op, singles, matrices = case
    batched = op.svd(CHANNELS, torch.float64)
    x = randn(BATCH, *image_shape(op, CHANNELS), seed=1)
    for b, (single, matrix) in enumerate(zip(singles, matrices)):
        svd = single.svd(DENSE_CHANNELS, torch.float64)
        n = matrix.shape[1]
        v_t = svd.vt(torch.eye(n, dtype=torch.float64).view(n, *image_shape(op))).T       # Vᵀ (n, n)
        close(v_t @ v_t.T, torch.eye(n, dtype=torch.float64), 1e-12)                      # V orthogonal
        close(svd.v(v_t.T).reshape(n, n), torch.eye(n, dtype=torch.float64), 1e-12)      # v inverts vt
        s = svd.singulars()[0]
        assert s.shape == (n,) and s.dtype == torch.float64 and (s >= 0).all()
        kept = s > 0
        u = svd.u(torch.eye(n, dtype=torch.float64)[kept]).reshape(int(kept.sum()), -1)    # columns of U, s > 0
        close(u @ u.T, torch.eye(u.shape[0], dtype=torch.float64), 1e-12)                 # orthonormal
        close(u.T @ (s[kept, None] * v_t[kept]), matrix, 1e-12)                           # U diag(s) Vᵀ = A
        close(torch.linalg.svdvals(matrix), s.sort(descending=True).values[:min(matrix.shape)], 1e-12)
        c = randn(1, n, seed=2)
        close(svd.ut(svd.u(c)), torch.where(kept, c, 0), 1e-12)                          # ut inverts u where s > 0
        # three channels, per-sample state: ut(A x) = s · vt(x), and the batch agrees with each sample alone
        xb, three = x[b:b + 1], single.svd(CHANNELS, torch.float64)
        close(three.ut(single(xb)), three.singulars() * three.vt(xb), 1e-12)
        close(batched.vt(x)[b], three.vt(xb)[0], 1e-14)
        close(batched.singulars()[min(b, batched.singulars().shape[0] - 1)], three.singulars()[0], 0)
        close(batched.ut(op(x))[b], three.ut(single(xb))[0], 1e-14)
        close(batched.u(batched.ut(op(x)))[b], op(x)[b], 1e-12)


def test_gaussian_float32_kernel_agrees_with_its_separable_svd():
    """The stored float32 kernel is fl(g gᵀ): the Kronecker SVD of the exact g reproduces it to float32 precision."""
    op = build_operator(**CASES["gaussian_blur"])
    svd = op.svd(CHANNELS, torch.float64)
    x = randn(BATCH, *image_shape(op, CHANNELS), seed=3)
    close(svd.u(svd.singulars() * svd.vt(x)), op(x), 1e-7)
    assert svd.singulars().dtype == torch.float64 and op.svd().singulars().dtype == torch.float32


def test_svd_refuses_another_channel_count():
    op = build_operator(**CASES["down_sampling"])
    with pytest.raises(ValueError, match=r"operator.svd\(channels=C\)"):
        op.svd(channels=3).vt(torch.zeros(1, 1, 16, 16))


# ------------------------------------------------------------------------------------------------- A⁺
def pinv_implementations(name: str, op: LinearOperator) -> dict:
    """The operator's own A⁺, the SVD closed form, and the conjugate-gradient fallback of LinearOperator."""
    out = {"pinv": op.pinv, "cg": lambda y: LinearOperator.pinv(op, y)}
    if name in SVD_CASES:
        out["svd"] = lambda y: op.svd(y.shape[1], torch.float64).pinv(y)
    return out


#: error bounds per implementation: the closed forms are exact to rounding; CG stops at a tiny residual, and
#: down_sampling's own A⁺ uses R⁺ of the float64 R stored in float32 (A is the float32-rounded R ⊗ R)
PINV_RTOL = {"pinv": 1e-11, "svd": 1e-11, "cg": 1e-8}
PINV_RTOL_OWN = {"down_sampling": 1e-6}


def test_pinv_penrose_conditions_and_dense_pinv(case):
    name, op, singles, matrices = case
    for single, matrix in zip(singles, matrices):
        expected = torch.linalg.pinv(matrix)
        for kind, pinv in pinv_implementations(name, single).items():
            rtol = PINV_RTOL_OWN.get(name, PINV_RTOL[kind]) if kind == "pinv" else PINV_RTOL[kind]
            with torch.no_grad():
                p = dense_from_measurements(single, pinv)
            scale = float(expected.abs().max())
            for label, lhs, rhs in [("A A⁺ A = A", matrix @ p @ matrix, matrix), ("A⁺ A A⁺ = A⁺", p @ matrix @ p, p),
                                    ("A A⁺ symmetric", matrix @ p, (matrix @ p).T),
                                    ("A⁺ A symmetric", p @ matrix, (p @ matrix).T), ("A⁺ = pinv(A)", p, expected)]:
                err = float((lhs - rhs).abs().max()) / max(scale, 1.0)
                assert err <= rtol, f"{name} {kind}: {label} off by {err:.2e} > {rtol}"


def test_pinv_and_prox_act_per_sample(case):
    """Three channels, a batch with per-sample state and per-sample γ: each sample as if it were alone."""
    name, op, singles, _ = case
    x = randn(BATCH, *image_shape(op, CHANNELS), seed=4)
    y = op(randn(BATCH, *image_shape(op, CHANNELS), seed=5)) + 0.1 * randn(*op(x).shape, seed=6)
    gamma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    for kind, pinv in pinv_implementations(name, op).items():
        batched = pinv(y)
        for b, single in enumerate(singles):
            close(batched[b:b + 1], pinv_implementations(name, single)[kind](y[b:b + 1]), 1e-8)
    for kind, prox in prox_implementations(name, op).items():
        batched = prox(x, y, gamma)
        for b, single in enumerate(singles):
            alone = prox_implementations(name, single)[kind](x[b:b + 1], y[b:b + 1], float(gamma[b]))
            close(batched[b:b + 1], alone, 1e-8)


# ------------------------------------------------------------------------------------------------ prox
def prox_implementations(name: str, op: LinearOperator) -> dict:
    """The operator's own prox, the SVD closed form, and the conjugate-gradient fallback of LinearOperator."""
    out = {"prox": op.prox, "cg": lambda x, y, g: LinearOperator.prox(op, x, y, g)}
    if name in SVD_CASES:
        out["svd"] = lambda x, y, g: op.svd(x.shape[1], torch.float64).prox(x, y, g)
    return out


@pytest.mark.parametrize("gamma", [torch.tensor([0.3, 2.0], dtype=torch.float64), 0.05, 0.0])
def test_prox_optimality_and_dense_solve(case, gamma):
    name, op, singles, matrices = case
    x = randn(BATCH, *image_shape(op), seed=6)
    y = op(randn(BATCH, *image_shape(op), seed=7)) + 0.1 * randn(*op(x).shape, seed=8)
    gammas = gamma.tolist() if isinstance(gamma, torch.Tensor) else [gamma] * BATCH
    for kind, prox in prox_implementations(name, op).items():
        z = prox(x, y, gamma)
        assert z.shape == x.shape
        for b, matrix in enumerate(matrices):
            g, xb, yb, zb = gammas[b], x[b].reshape(-1), y[b].reshape(-1), z[b].reshape(-1)
            if g > 0:   # optimality: 2Aᵀ(Az − y) + 2γ(z − x) = 0, and the dense solve of (AᵀA + γI) z = Aᵀy + γx
                data, prior = 2 * matrix.T @ (matrix @ zb - yb), 2 * g * (zb - xb)
                assert float((data + prior).abs().max()) <= 1e-9 * max(float(prior.abs().max()), 1.0), (name, kind)
                n = matrix.shape[1]
                solved = torch.linalg.solve(matrix.T @ matrix + g * torch.eye(n, dtype=torch.float64),
                                            matrix.T @ yb + g * xb)
            else:       # γ = 0: the least-squares solution nearest x
                solved = xb + torch.linalg.pinv(matrix) @ (yb - matrix @ xb)
            close(zb, solved, 1e-8 if kind == "cg" else 1e-10)


def test_prox_refuses_bad_gamma():
    op = build("inpainting_box")
    x = torch.zeros(BATCH, *image_shape(op), dtype=torch.float64)
    for gamma, message in [(-1.0, ">= 0"), (float("nan"), ">= 0"), (torch.ones(3), r"shape \(2,\)")]:
        for prox in (op.prox, lambda *a: LinearOperator.prox(op, *a)):
            with pytest.raises(ValueError, match=message):
                prox(x, op(x), gamma)


# -------------------------------------------------------------------------------------- the CG solver
def test_conjugate_gradient_is_per_sample():
    """Sample 0: M = I (one step); sample 1: M diagonal with 5 distinct eigenvalues (exactly 5 steps)."""
    diagonal = torch.stack([torch.ones(10, dtype=torch.float64),
                            torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0] * 2, dtype=torch.float64)])
    b = randn(2, 10, seed=9)
    result = conjugate_gradient(lambda v: diagonal * v, b, torch.zeros_like(b), tol=1e-12, max_iter=50)
    assert result.iterations == 5 and result.converged.all()
    close(result.x, b / diagonal, 1e-12)
    # a zero right-hand side is converged from x0 = 0 and stays there
    zero = conjugate_gradient(lambda v: diagonal * v, torch.zeros_like(b), torch.zeros_like(b), tol=1e-6,
                              max_iter=5)
    assert zero.iterations == 0 and torch.equal(zero.x, torch.zeros_like(b))


def test_solver_settings_are_instance_attributes():
    op = build_operator(**CASES["motion_blur"])
    op.set_state(stack_states([op.draw_state(make_generator(0, i)) for i in range(BATCH)]))
    assert (op.cg_tol, op.cg_max_iter) == (LinearOperator.cg_tol, LinearOperator.cg_max_iter) == (1e-6, 100)
    op.cg_max_iter = 1
    y = op(randn(BATCH, *image_shape(op, CHANNELS), seed=10))
    with pytest.warns(RuntimeWarning, match="stopped after 1 iterations"):
        op.pinv(y)
    assert LinearOperator.cg_max_iter == 100


def test_conjugate_gradient_warns_and_refuses_bad_settings():
    diagonal = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    b = torch.ones(1, 4, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="stopped after 2 iterations .* 1 of 1 samples"):
        result = conjugate_gradient(lambda v: diagonal * v, b, torch.zeros_like(b), tol=1e-10, max_iter=2)
    assert not result.converged.any()
    for settings, message in [(dict(tol=0.0, max_iter=5), "tolerance"), (dict(tol=1e-6, max_iter=0), "iteration"),
                              (dict(tol=1e-6, max_iter=2.5), "iteration")]:
        with pytest.raises(ValueError, match=message):
            conjugate_gradient(lambda v: v, b, b, **settings)
