r"""ΠGDM: Pseudoinverse-Guided Diffusion Models (Song, Vahdat, Mardani & Kautz, ICLR 2023), noisy linear form.

Likelihood approximation. ΠGDM takes p(x0 | x_t) ≈ N(x̂0, r_t² I) with r_t² = σ_t²/(1 + σ_t²) in VE terms (the
posterior variance of a unit-variance Gaussian prior), which in the VP notation of :mod:`common.sampling.vp`
(σ_t² = (1 − ᾱ_t)/ᾱ_t) is

    r_t² = 1 − ᾱ_t,

so that p(y | x_t) ≈ N(A x̂0, r_t² A Aᵀ + σ_y² I) and its score (vector–Jacobian product through the denoiser):

    g = (∂x̂0/∂x_t)ᵀ Aᵀ (r_t² A Aᵀ + σ_y² I)⁻¹ (y − A x̂0).

The solve uses the operator's SVD where it declares one (exact), else conjugate gradients on the measurement space
(:func:`common.sampling.guidance.adjoint_weighted_solve`).

Sampler (DDIM skeleton, timesteps t_N > … > t_1 = 0 by DDIM's uniform skip, t_0 := −1 with ᾱ = 1):

    x_{t_N} ~ N(0, I)
    for t = t_i, s = t_{i−1}:
        x̂0, ε̂  = denoiser(x_t, t)                                     (one forward pass, graph kept)
        g       = the score above                                       (one backward pass)
        c       = η sqrt((1 − ᾱ_s)/(1 − ᾱ_t)) sqrt(1 − ᾱ_t/ᾱ_s)
        x_s     = sqrt(ᾱ_s) x̂0 + sqrt(1 − ᾱ_s − c²) ε̂ + c z + sqrt(ᾱ_s ᾱ_t) r_t² g,   z ~ N(0, I)
    return x_{t_0}

The guidance weight sqrt(ᾱ_s ᾱ_t) r_t² is the one of the authors' group's code (NVlabs/RED-diff algos/pgdm.py with
its default ``awd: True``, ``grad_term_weight: 1``, where the noiseless term r_t² g = Jᵀ A⁺(y − A x̂0); used with
the noisy solve above by the MMPS authors' benchmark, francois-rozet/mmps-benchmark condition_methods.py); ε̂ is kept,
only x̂0 is shifted: x_s = sqrt(ᾱ_s) x̂0^y + sqrt(1 − ᾱ_s − c²) ε̂ + c z with x̂0^y = x̂0 + sqrt(ᾱ_t) r_t² g
(the callback's ``x0y``). Model calls: 2 per step (a forward and a backward pass through the network).

Deviations: x̂0 is not clipped to [−1, 1] (the gradient must run through it, and the analytic priors are unbounded);
the first state is pure noise (RED-diff starts from sqrt(ᾱ_T) A⁺y + noise).
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from common.errors import positive_int, real
from common.models.base import DiffusionModel
from common.operators.base import LinearOperator, Operator
from common.random import randn
from common.registry import SAMPLERS
from common.sampling import Callback, DivergenceTracker, SampleResult
from common.sampling.guidance import DenoiserLinearization, adjoint_weighted_solve, gaussian_noise_sigma
from common.sampling.vp import abar, ddim_sigma, ddim_step, denoise, sigma_of, skip_timesteps, transitions


def pigdm_score(lin: DenoiserLinearization, operator: LinearOperator, y: torch.Tensor, abar_t: float,
                sigma_y: float) -> torch.Tensor:
    """g = (∂x̂0/∂x_t)ᵀ Aᵀ (r_t² A Aᵀ + σ_y² I)⁻¹ (y − A x̂0), r_t² = 1 − ᾱ_t (module docstring)."""
    return lin.vjp(adjoint_weighted_solve(operator, y - operator(lin.value), 1 - abar_t, sigma_y))


@SAMPLERS.register("pigdm")
class PiGDM:
    """ΠGDM (module docstring): ``num_steps`` DDIM steps (the paper: 100) with noise level η."""

    requires: ClassVar[frozenset[str]] = frozenset({"linear"})
    spaces: ClassVar[frozenset[str]] = frozenset({"pixel"})

    def __init__(self, num_steps: int = 100, eta: float = 1.0) -> None:
        """``num_steps``: DDIM steps (2 model calls each), ``eta`` η ∈ [0, 1] (0: deterministic DDIM)."""
        self.num_steps = positive_int("num_steps", num_steps)
        self.eta = real("eta", eta, 0, 1)

    @property
    def model_calls(self) -> int:
        """Network evaluations per sample: one forward and one backward (vector–Jacobian) pass per step."""
        return 2 * self.num_steps

    def check(self, model: DiffusionModel, operator: Operator) -> None:
        """Before sampling: a step count the model's T allows, and Gaussian measurement noise."""
        self.timesteps(model)
        gaussian_noise_sigma(operator, "pigdm")

    def timesteps(self, model: DiffusionModel) -> list[int]:
        """t_N > … > t_1 = 0 (DDIM's uniform skip on the model's T)."""
        return skip_timesteps(self.num_steps, len(model.betas))

    @torch.no_grad()
    def sample(self, model: DiffusionModel, operator: Operator, y: torch.Tensor, *,
               generators: Sequence[torch.Generator], callback: Callback | None = None) -> SampleResult:
        """Posterior samples, one per generator (NaN where a chain diverged)."""
        steps = self.timesteps(model)
        sigma_y = gaussian_noise_sigma(operator, "pigdm")
        device = y.device
        tracker = DivergenceTracker(len(generators))
        x = randn(model.sample_shape, generators, device=device)
        for step, (t, s) in enumerate(transitions(steps)):
            a_t, a_s = abar(model, t), abar(model, s)
            lin = DenoiserLinearization.of(lambda x_t: denoise(model, x_t, t)[0], x)  # noqa: B023 (this step only)
            eps = (x - a_t ** 0.5 * lin.value) / (1 - a_t) ** 0.5  # ε̂ (x̂0 is not clipped)
            x0y = lin.value + a_t ** 0.5 * (1 - a_t) * pigdm_score(lin, operator, y, a_t, sigma_y)
            c = ddim_sigma(a_t, a_s, self.eta)
            noise = randn(model.sample_shape, generators, device=device) if c > 0 else None
            x_next = tracker.check(ddim_step(x0y, eps, a_s, c, noise), step)
            if callback is not None:
                residual = torch.linalg.vector_norm((y - operator(lin.value)).flatten(1), dim=1)
                callback({"step": step, "num_steps": len(steps), "finite": tracker.finite, "decode": model.decode,
                          "t": t, "sigma": sigma_of(model, t), "x_t": x, "x0hat": lin.value, "x0y": x0y,
                          "residual": residual})
            x = x_next
        return tracker.result(model.decode(x))
