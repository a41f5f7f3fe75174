r"""Pieces shared by the samplers that guide with Gaussian moments of p(x0 | x_t): ΠGDM and MMPS.

With the denoiser x̂0(x_t) = E[x0 | x_t] and its Jacobian J_t = ∂x̂0/∂x_t, Tweedie's second moment (exact for the
true denoiser; J_t is then symmetric) reads, in the EDM view x̄ = x0 + σ ε with D(x̄; σ), and in the VP view
x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε of :mod:`common.sampling.vp` (x̄ = x_t/sqrt(ᾱ_t), σ² = (1 − ᾱ_t)/ᾱ_t):

    Cov[x0 | x̄] = σ² ∂D/∂x̄ = (1 − ᾱ_t)/sqrt(ᾱ_t) · ∂x̂0/∂x_t.

* :class:`DenoiserLinearization`: x̂0 at x_t with its graph kept, and vector–Jacobian products v ↦ J_tᵀ v, each one
  backward pass through the network (counted as one model call by these samplers);
* :func:`adjoint_weighted_solve`: Aᵀ (r² A Aᵀ + σ_y² I)⁻¹ v, through the SVD where the operator declares one, else by
  conjugate gradients on the measurement space (:func:`common.operators.linalg.conjugate_gradient`);
* :func:`gaussian_noise_sigma`: σ_y of y = A x + σ_y n, refusing other noise models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from common.errors import ConfigError
from common.operators.base import LinearOperator, Operator
from common.operators.linalg import conjugate_gradient
from common.operators.noise import GaussianNoise


def gaussian_noise_sigma(operator: Operator, method: str) -> float:
    """σ_y of the operator's measurement noise; refuses noise models other than Gaussian (``method`` assumes them)."""
    if not isinstance(operator.noise, GaussianNoise):
        raise ConfigError(f"sampler {method!r} assumes Gaussian measurement noise y = A x + σ_y n; the operator's "
                          f"noise model is {type(operator.noise).__name__} (task operator noise: use gaussian with "
                          f"sigma, or a sampler that handles Poisson noise such as dps)")
    return operator.noise.sigma


@dataclass
class DenoiserLinearization:
    """The denoiser at one state x_t: x̂0(x_t) and the map v ↦ J_tᵀ v, J_t = ∂x̂0/∂x_t.

    Built by :meth:`of` (one forward pass with the graph kept); every :meth:`vjp` is one backward pass through that
    graph. The graph is released with the object.
    """

    x_t: torch.Tensor
    x0hat: torch.Tensor

    @classmethod
    def of(cls, denoiser: Callable[[torch.Tensor], torch.Tensor], x_t: torch.Tensor) -> "DenoiserLinearization":
        """x̂0 = denoiser(x_t), differentiable in x_t (e.g. ``lambda x: denoise(model, x, t)[0]`` in the VP view,
        ``lambda x: model.tweedie(x, σ)`` in the EDM view)."""
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            x0hat = denoiser(x)
        return cls(x, x0hat)

    @property
    def value(self) -> torch.Tensor:
        """x̂0, detached."""
        return self.x0hat.detach()

    def vjp(self, v: torch.Tensor) -> torch.Tensor:
        """J_tᵀ v per sample (one backward pass; J_t = J_tᵀ for an exact denoiser)."""
        with torch.enable_grad():
            (out,) = torch.autograd.grad(self.x0hat, self.x_t, grad_outputs=v, retain_graph=True)
        return out


def adjoint_weighted_solve(operator: LinearOperator, v: torch.Tensor, r2: float, sigma_y: float) -> torch.Tensor:
    """Aᵀ (r² A Aᵀ + σ_y² I)⁻¹ v per sample, for measurements v and r² > 0, σ_y ≥ 0.

    With the SVD A = U S Vᵀ (capability ``"svd"``, exact): V S (r² S² + σ_y²)⁻¹ Uᵀ v; directions with s = 0 give 0
    (Aᵀ annihilates the complement of range(U)). Otherwise conjugate gradients solve (r² A Aᵀ + σ_y² I) u = v from
    u = 0 to the operator's ``cg_tol`` within ``cg_max_iter`` iterations, and the result is Aᵀ u (for σ_y = 0 the
    iterates stay in range(A), where A Aᵀ is definite, so u is the minimum-norm solution: the noiseless ΠGDM term
    A⁺ v / r²).
    """
    if "svd" in operator.capabilities:
        svd = operator.svd(v.shape[1], v.dtype)
        s = svd.singulars().to(v.device)
        denominator = r2 * s * s + sigma_y ** 2
        coefficients = torch.where(s > 0, s * svd.ut(v) / torch.where(s > 0, denominator, 1), 0)
        return svd.v(coefficients)
    u = conjugate_gradient(lambda w: r2 * operator(operator.adjoint(w)) + sigma_y ** 2 * w, v, torch.zeros_like(v),
                           tol=operator.cg_tol, max_iter=operator.cg_max_iter).x
    return operator.adjoint(u)
