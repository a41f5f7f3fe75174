r"""Linear algebra on the forward operators: a batched conjugate-gradient solver and matrix-free SVDs.

Everything acts per sample on a batch; an image x is (B, C, H, W) and its flattened length is n = C·H·W.

* :func:`conjugate_gradient` solves M_b x_b = b_b for a symmetric positive (semi-)definite M given as a batched
  map, with per-sample step sizes α_b, β_b; it stops once every sample meets ‖r_b‖ ≤ tol·‖b_b‖. It is the
  fallback of :meth:`LinearOperator.pinv <common.operators.base.LinearOperator.pinv>` (M = AᵀA from x = 0, which
  stays in range(Aᵀ) and so converges to the minimum-norm least-squares solution A⁺y) and of
  :meth:`LinearOperator.prox <common.operators.base.LinearOperator.prox>` (M = AᵀA + γI).
* :class:`SVD` is A = U diag(s) Vᵀ applied matrix-free in DDRM's convention: coefficients are (B, n) vectors in
  the right-singular basis, ``singulars()`` is aligned with them (zeros on the null space of A), and Uᵀy is
  placed at the coefficient positions of its singular values, so that ``ut(A x) == singulars() * vt(x)``.
  Its :meth:`SVD.pinv` and :meth:`SVD.prox` are the closed forms
  A⁺ = V S⁺ Uᵀ and prox_γ(x, y) = V (S² + γ)⁻¹ (S Uᵀy + γ Vᵀx).
  :class:`DiagonalSVD` (inpainting: A = diag(d), d ≥ 0) and :class:`KroneckerSVD` (A X = M X Mᵀ per channel:
  the bicubic resizer, the separable Gaussian blur) implement it.
* :func:`gradient_lipschitz` estimates L = 2 λ_max(J_A(x)ᵀ J_A(x)), the Lipschitz constant of ∇‖A(z) − y‖² near x
  (Gauss–Newton; exact for a linear A), by power iteration on Jacobian-vector products: what a gradient step's
  size must stay below (η L < 2) for the step to be stable.
"""
from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import torch

from common.errors import ConfigError


def _per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) tensor viewed as (B, 1, …, 1) to broadcast against ``like``."""
    return value.view(-1, *[1] * (like.dim() - 1))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product ⟨a_b, b_b⟩, shape (B,)."""
    return (a * b).flatten(1).sum(1)


def check_gamma(gamma: float | torch.Tensor, batch: int) -> None:
    """Refuse a proximal weight γ that is not ≥ 0 and finite, or a tensor that is not one value per sample."""
    values = torch.as_tensor(gamma)
    if values.dim() > 1 or (values.dim() == 1 and values.shape[0] != batch):
        raise ConfigError(f"prox weight gamma must be a float or a per-sample tensor of shape ({batch},), "
                         f"got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all() & (values >= 0).all()):
        raise ConfigError(f"prox weight gamma must be finite and >= 0, got {gamma!r}")


def gamma_like(gamma: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """γ as a tensor broadcastable against ``like`` (B, …): a scalar, or (B,) viewed as (B, 1, …, 1)."""
    check_gamma(gamma, like.shape[0])
    values = torch.as_tensor(gamma, device=like.device, dtype=like.dtype)
    return _per_sample(values, like) if values.dim() == 1 else values


class CGResult(NamedTuple):
    """The solution of :func:`conjugate_gradient`, its iteration count, and per-sample convergence (B,) bool."""

    x: torch.Tensor
    iterations: int
    converged: torch.Tensor


def conjugate_gradient(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor, *,
                       tol: float, max_iter: int) -> CGResult:
    r"""Solve M x_b = b_b for every sample b by conjugate gradients (Hestenes–Stiefel), started at ``x0``.

    ``apply`` maps a batch to M x (M symmetric positive semi-definite, acting per sample). Per sample:

        r₀ = b − M x₀,  p₀ = r₀;   α_k = ‖r_k‖² / ⟨p_k, M p_k⟩,  x_{k+1} = x_k + α_k p_k,  r_{k+1} = r_k − α_k M p_k,
        β_k = ‖r_{k+1}‖² / ‖r_k‖²,  p_{k+1} = r_{k+1} + β_k p_k

    A sample is converged once ‖r_k‖ ≤ ``tol``·‖b‖ (relative residual; a zero right-hand side is converged at once
    from x₀ = 0); from then on its α and β are 0, so its iterate stays fixed. The loop ends when all samples have
    converged or after ``max_iter`` iterations; samples still unconverged then raise a :class:`RuntimeWarning`
    (their last iterate is returned). A sample whose curvature ⟨p, M p⟩ vanishes cannot progress and is stopped.
    """
    if not tol > 0:
        raise ConfigError(f"conjugate-gradient tolerance (relative residual) must be > 0, got {tol!r}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise ConfigError(f"conjugate-gradient iteration cap must be a positive integer, got {max_iter!r}")
    x = x0
    r = b - apply(x)
    p = r
    residual = _dot(r, r)
    threshold = tol * tol * _dot(b, b)
    done = residual <= threshold
    stopped = torch.zeros_like(done)
    iterations = 0
    while iterations < max_iter and not bool((done | stopped).all()):
        iterations += 1
        mp = apply(p)
        curvature = _dot(p, mp)
        stopped = stopped | (~done & (curvature <= 0))
        active = ~(done | stopped)
        alpha = torch.where(active, residual / torch.where(active, curvature, 1), 0)
        x = x + _per_sample(alpha, x) * p
        r = r - _per_sample(alpha, r) * mp
        new_residual = _dot(r, r)
        beta = torch.where(active, new_residual / torch.where(active, residual, 1), 0)
        p = r + _per_sample(beta, p) * p
        residual = torch.where(active, new_residual, residual)
        done = done | (active & (residual <= threshold))
    if not bool(done.all()):
        relative = (residual / _dot(b, b).clamp_min(torch.finfo(b.dtype).tiny)).sqrt()
        warnings.warn(f"conjugate gradient stopped after {iterations} iterations with relative residuals "
                      f"{[round(v, 8) for v in relative[~done].tolist()]} above tol={tol} for "
                      f"{int((~done).sum())} of {done.numel()} samples; raise the iteration cap or the tolerance",
                      RuntimeWarning, stacklevel=3)
    return CGResult(x, iterations, done)


class SVD:
    """A = U diag(s) Vᵀ applied matrix-free, per sample, with n = C·H·W coefficients (module docstring).

    Subclasses implement the five maps; :meth:`pinv` and :meth:`prox` follow from them.
    """

    def vt(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Vᵀx: (B, C, H, W) -> (B, n) coefficients in the right-singular basis."""
        raise NotImplementedError

    def v(self, c: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """V c: (B, n) -> (B, C, H, W), the inverse of :meth:`vt` (V is orthogonal)."""
        raise NotImplementedError

    def singulars(self) -> torch.Tensor:  # pragma: no cover - abstract
        """s: (B or 1, n) singular values aligned with :meth:`vt` (0 on the null space), in the SVD's dtype."""
        raise NotImplementedError

    def ut(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Uᵀy: measurement -> (B, n), at the positions of the singular values (zeros where s has no left vector)."""
        raise NotImplementedError

    def u(self, c: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """U c: (B, n) -> measurement; reads only the positions :meth:`ut` fills (the inverse of ut there)."""
        raise NotImplementedError

    def kept_singulars(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, s > eps·n·max s) in ``like``'s dtype: the singular values :meth:`pinv` and :meth:`prox` invert.

        The cutoff is torch.linalg.pinv's (eps of the dtype, n = C·H·W, max per sample). In float32 at 3×256×256 it
        is 0.023·max s: the Gaussian blur of the papers (σ = 3) then keeps about 7 % of its directions; in float64
        (cutoff 4e-11·max s) nearly all.
        """
        s = self.singulars().to(device=like.device, dtype=like.dtype)
        cutoff = torch.finfo(like.dtype).eps * s.shape[1] * s.amax(dim=1, keepdim=True)
        return s, s > cutoff

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """A⁺y = V S⁺ Uᵀy, singular values at or below the cutoff of :meth:`kept_singulars` counted as zero."""
        coefficients = self.ut(y)
        s, kept = self.kept_singulars(coefficients)
        return self.v(torch.where(kept, coefficients / torch.where(kept, s, 1), 0))

    def prox(self, x: torch.Tensor, y: torch.Tensor, gamma: float | torch.Tensor) -> torch.Tensor:
        """argmin_z ‖A z − y‖² + γ‖z − x‖² = V (S² + γ)⁻¹ (S Uᵀy + γ Vᵀx) (module docstring), γ ≥ 0 (B,) or float.

        On directions with s = 0 (or below the :meth:`pinv` cutoff) the coefficient is Vᵀx, the γ > 0 value and
        its γ → 0 limit, so γ = 0 gives x + A⁺(y − A x), the point nearest x among the least-squares solutions.
        """
        right = self.vt(x)
        g = gamma_like(gamma, right)
        s, kept = self.kept_singulars(right)
        combined = (s * self.ut(y) + g * right) / torch.where(kept, s * s + g, 1)
        return self.v(torch.where(kept, combined, right))


class DiagonalSVD(SVD):
    """A x = d ⊙ x with d ≥ 0 broadcastable to (B, C, H, W): U = I on {d > 0}, s = d, V = I.

    The measurement y has the image's shape (the masked full image for inpainting); ``ut`` keeps it where d > 0.
    """

    def __init__(self, diagonal: torch.Tensor, shape: tuple[int, int, int]) -> None:
        self.diagonal = diagonal.expand(diagonal.shape[0], *shape)
        self.shape = shape

    def vt(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def v(self, c: torch.Tensor) -> torch.Tensor:
        return c.view(c.shape[0], *self.shape)

    def singulars(self) -> torch.Tensor:
        return self.diagonal.flatten(1)

    def ut(self, y: torch.Tensor) -> torch.Tensor:
        return torch.where(self.diagonal.flatten(1) > 0, y.flatten(1), 0)

    def u(self, c: torch.Tensor) -> torch.Tensor:
        return torch.where(self.diagonal > 0, self.v(c), 0)


class MatrixSVD(NamedTuple):
    """The full SVD of a 1-D map M (m × k, m ≤ k): M = U diag(s[:m]) (V[:, :m])ᵀ; U (m, m), s (k,) zero-padded, V (k, k)."""

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor

    @classmethod
    def of(cls, matrix: torch.Tensor) -> "MatrixSVD":
        """The factors of ``matrix`` in float64 (full_matrices, so V spans the null space too)."""
        rows, cols = matrix.shape
        if rows > cols:
            raise ConfigError(f"a 1-D map with more outputs than inputs ({rows} > {cols}) is not supported")
        u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=True)
        return cls(u, torch.cat([s, s.new_zeros(cols - rows)]), vh.T)


class KroneckerSVD(SVD):
    r"""A X = M X Mᵀ per sample and channel (the same 1-D map M (m × k) on rows and columns of a k×k image).

    With M = U_M S_M V_Mᵀ, A = M ⊗ M has V = V_M ⊗ V_M, s[i, j] = s_M[i]·s_M[j], U = U_M ⊗ U_M: the coefficients of
    channel c are the k×k grid V_Mᵀ X_c V_M, and Uᵀy = U_Mᵀ Y_c U_M fills its top-left m×m block (the rest of the
    grid has s = 0).
    """

    def __init__(self, factors: MatrixSVD, channels: int, dtype: torch.dtype) -> None:
        self.factors = factors
        self.channels = channels
        self.dtype = dtype
        self.rows, self.cols = factors.u.shape[0], factors.v.shape[0]

    def _factors(self, like: torch.Tensor) -> MatrixSVD:
        return MatrixSVD(*(f.to(device=like.device, dtype=like.dtype) for f in self.factors))

    def _check(self, t: torch.Tensor, side: int, what: str) -> None:
        expected = (self.channels, side, side)
        if tuple(t.shape[1:]) != expected:
            raise ConfigError(f"{what} of shape {tuple(t.shape)} does not match this SVD's (B, {self.channels}, "
                             f"{side}, {side}); for another channel count build it with operator.svd(channels=C)")

    def vt(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.cols, "image")
        f = self._factors(x)
        return (f.v.T @ x @ f.v).flatten(1)

    def v(self, c: torch.Tensor) -> torch.Tensor:
        f = self._factors(c)
        return f.v @ c.view(c.shape[0], self.channels, self.cols, self.cols) @ f.v.T

    def singulars(self) -> torch.Tensor:
        s = self.factors.s
        return torch.outer(s, s).expand(self.channels, -1, -1).reshape(1, -1).to(self.dtype)

    def ut(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, self.rows, "measurement")
        f = self._factors(y)
        grid = y.new_zeros(y.shape[0], self.channels, self.cols, self.cols)
        grid[..., :self.rows, :self.rows] = f.u.T @ y @ f.u
        return grid.flatten(1)

    def u(self, c: torch.Tensor) -> torch.Tensor:
        f = self._factors(c)
        grid = c.view(c.shape[0], self.channels, self.cols, self.cols)[..., :self.rows, :self.rows]
        return f.u @ grid @ f.u.T


def gradient_lipschitz(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, generator: torch.Generator,
                       iterations: int = 20) -> float:
    """L ≈ 2 λ_max(Jᵀ J), J the Jacobian of ``forward`` at ``x`` (one sample, (1, C, H, W)), by ``iterations`` power
    steps v ← Jᵀ J v / ‖Jᵀ J v‖ from a random v drawn from ``generator`` (on ``x``'s device)."""
    v = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    v = v / v.norm()
    value = 0.0
    with torch.enable_grad():
        for _ in range(iterations):
            _, jv = torch.autograd.functional.jvp(forward, x, v)
            _, jtjv = torch.autograd.functional.vjp(forward, x, jv)
            value = float(jtjv.norm())
            if value == 0.0 or not torch.isfinite(jtjv).all():
                break
            v = jtjv / value
    return 2 * value
