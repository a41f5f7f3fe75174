r"""DDRM: Denoising Diffusion Restoration Models (Kawar, Elad, Ermon & Song, NeurIPS 2022).

DDRM works in the right-singular basis of A = U diag(s) Vᵀ (the operator's ``svd()``). With ȳ = S⁺Uᵀy, each
coefficient with s_i > 0 is an observation ȳ_i = (Vᵀx0)_i + (σ_y/s_i) n_i of the clean image: a noisy version of
x0 at noise level σ_y/s_i. In the EDM-scaled VP view of :mod:`common.sampling.vp` (x̄_t = x_t/sqrt(ᾱ_t) = x0 + σ_t ε,
σ_t = sqrt(1/ᾱ_t − 1)) one DDIM step from σ = σ_t to σ' = σ_{t'} (t' the next, smaller timestep) reads, per
coefficient i of c = Vᵀx̄ (the paper's eq. 7–8 with the per-case rules of the authors' ``efficient_generalized_steps``
in bahjat-kawar/ddrm functions/denoising.py):

    x̂0, ε̂ = denoiser(x_t, t),   c0 = Vᵀx̂0,   e = Vᵀε̂,   z ~ N(0, I) fresh

    s_i = 0 (null space of A, plain DDIM):  c'_i = c0_i + sqrt(1 − η²) σ' e_i + η σ' z_i
    σ' < σ_y / s_i (less noisy than y):     c'_i = c0_i + sqrt(1 − η²) σ' (ȳ_i − c0_i) s_i / σ_y + η σ' z_i
    σ' ≥ σ_y / s_i (noisier than y):        c'_i = η_b ȳ_i + (1 − η_b) c0_i + sqrt(σ'² − η_b² σ_y² / s_i²) z_i

and x_{t'} = sqrt(ᾱ_{t'}) V c'. The first step starts from the paper's q(x_T | y):
c_i = ȳ_i + sqrt(σ_T² − σ_y²/s_i²) z_i where σ_T ≥ σ_y/s_i, c_i = σ_T z_i elsewhere; that is the rule above with
c0 = e = 0 and η = η_b = 1. The last step goes to ᾱ = 1 (σ' = 0), so with σ_y = 0 every coefficient with s_i > 0
ends at exactly ȳ_i: A x = y.

Deviations: x_T = sqrt(ᾱ_T) V c_T (the authors divide by σ_T instead of multiplying by sqrt(ᾱ_T); the two differ by
the factor sqrt(1 − ᾱ_T) ≈ 1 − 2e-5); the boundary σ' = σ_y/s_i belongs to the "noisier than y" case as in the
paper's eq. 8 (the authors' code sends it to the null-space rule); singular values at or below eps·n·max s count as
zero, as :meth:`common.operators.linalg.SVD.pinv` and ``torch.linalg.pinv`` do (the authors keep every nonzero one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from common.errors import positive_int, real
from common.models.base import DiffusionModel
from common.operators.base import Operator
from common.operators.linalg import SVD
from common.random import randn
from common.registry import SAMPLERS
from common.sampling import Callback, DivergenceTracker, SampleResult
from common.sampling.guidance import gaussian_noise_sigma
from common.sampling.vp import abar, denoise, sigma_of, skip_timesteps, transitions


@dataclass(frozen=True)
class Spectrum:
    """The measurement in the right-singular basis of A = U diag(s) Vᵀ.

    ``s`` (B or 1, n): the singular values aligned with Vᵀ, zero on the null space and at or below eps·n·max s (the
    pseudo-inverse's cutoff); ``ybar`` (B, n): ȳ = S⁺Uᵀy, zero where s = 0; ``observed``: s > 0.
    """

    svd: SVD
    s: torch.Tensor
    ybar: torch.Tensor
    observed: torch.Tensor

    @classmethod
    def of(cls, operator: Operator, y: torch.Tensor, sample_shape: Sequence[int]) -> "Spectrum":
        """The SVD of ``operator`` (state installed) for images of ``sample_shape`` and ȳ for the batch ``y``."""
        svd = operator.svd(channels=sample_shape[0], dtype=torch.float32)
        s = svd.singulars().to(device=y.device, dtype=torch.float32)
        observed = s > torch.finfo(s.dtype).eps * s.shape[1] * s.amax(dim=1, keepdim=True)
        s = torch.where(observed, s, 0)
        ybar = torch.where(observed, svd.ut(y.float()) / torch.where(observed, s, 1), 0)
        return cls(svd, s, ybar, observed)


def ddrm_update(c0: torch.Tensor, e: torch.Tensor, z: torch.Tensor, spectrum: Spectrum, sigma_next: float,
                sigma_y: float, eta: float, eta_b: float) -> torch.Tensor:
    """c' of the module docstring for coefficients c0 = Vᵀx̂0, e = Vᵀε̂ and fresh noise z, all (B, n)."""
    s, ybar, observed = spectrum.s, spectrum.ybar, spectrum.observed
    s_safe = torch.where(observed, s, 1)
    null = c0 + (1 - eta ** 2) ** 0.5 * sigma_next * e + eta * sigma_next * z
    noisier = observed & (s * sigma_next >= sigma_y)
    # (ȳ − c0) s / σ_y: the distance to y in units of its noise; only read where σ' < σ_y/s, so σ_y > 0 there
    pull = (ybar - c0) * s / sigma_y if sigma_y > 0 else torch.zeros_like(c0)
    less_noisy = c0 + (1 - eta ** 2) ** 0.5 * sigma_next * pull + eta * sigma_next * z
    remaining = (sigma_next ** 2 - (eta_b * sigma_y / s_safe) ** 2).clamp_min(0).sqrt()
    noisier_than_y = eta_b * ybar + (1 - eta_b) * c0 + remaining * z
    return torch.where(noisier, noisier_than_y, torch.where(observed, less_noisy, null))


@SAMPLERS.register("ddrm")
class DDRM:
    """DDRM (module docstring): ``num_steps`` DDIM steps (the paper: 20), η (0.85) and η_b (1)."""

    requires: ClassVar[frozenset[str]] = frozenset({"svd"})
    spaces: ClassVar[frozenset[str]] = frozenset({"pixel"})

    def __init__(self, num_steps: int = 20, eta: float = 0.85, eta_b: float = 1.0) -> None:
        self.num_steps = positive_int("num_steps", num_steps)
        self.eta = real("eta", eta, 0, 1)
        self.eta_b = real("eta_b", eta_b, 0, 1)

    def check(self, model: DiffusionModel, operator: Operator) -> None:
        """Refuse more steps than the model's T and non-Gaussian measurement noise, before sampling."""
        skip_timesteps(self.num_steps, len(model.betas))
        gaussian_noise_sigma(operator, "ddrm")

    @torch.no_grad()
    def sample(self, model: DiffusionModel, operator: Operator, y: torch.Tensor, *,
               generators: Sequence[torch.Generator], callback: Callback | None = None) -> SampleResult:
        """Posterior samples, one per generator (NaN where a chain diverged)."""
        self.check(model, operator)
        sigma_y = gaussian_noise_sigma(operator, "ddrm")
        shape, device = model.sample_shape, y.device
        spectrum = Spectrum.of(operator, y, shape)
        timesteps = skip_timesteps(self.num_steps, len(model.betas))
        tracker = DivergenceTracker(len(generators))

        def noise() -> torch.Tensor:
            return spectrum.svd.vt(randn(shape, generators, device=device))

        zeros = torch.zeros_like(spectrum.ybar)
        coefficients = ddrm_update(zeros, zeros, noise(), spectrum, sigma_of(model, timesteps[0]), sigma_y, 1.0, 1.0)
        x_t = abar(model, timesteps[0]) ** 0.5 * spectrum.svd.v(coefficients)
        for step, (t, t_next) in enumerate(transitions(timesteps)):
            x0hat, eps = denoise(model, x_t, t)
            coefficients = ddrm_update(spectrum.svd.vt(x0hat), spectrum.svd.vt(eps), noise(), spectrum,
                                       sigma_of(model, t_next), sigma_y, self.eta, self.eta_b)
            x_next = tracker.check(abar(model, t_next) ** 0.5 * spectrum.svd.v(coefficients), step)
            if callback is not None:
                callback({"step": step, "num_steps": len(timesteps), "t": t, "sigma": sigma_of(model, t),
                          "x_t": x_t, "x0hat": x0hat, "residual": (operator(x0hat) - y).flatten(1).norm(dim=1),
                          "finite": tracker.finite, "decode": model.decode})
            x_t = x_next
        return tracker.result(x_t)
