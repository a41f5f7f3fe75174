r"""MMPS: moment-matching posterior sampling (Rozet, Andry, Lanusse & Louppe, NeurIPS 2024, Sec. 3.2).

Likelihood approximation. In the EDM view x̄ = x0 + σ ε with the denoiser D(x̄; σ) = E[x0 | x̄] (the model's
``tweedie``), MMPS takes p(x0 | x̄) ≈ N(D, Σ_σ) with Tweedie's covariance

    Σ_σ = σ² ∂D/∂x̄,

applied matrix-free by vector–Jacobian products through the denoiser (∂D/∂x̄ is symmetric for an exact denoiser, so
Jᵀ v = J v). For y = A x0 + σ_y n the Gaussian conditioning of that approximation gives

    E[x0 | x̄, y] ≈ D^y = D + Σ_σ Aᵀ u,     (σ_y² I + A Σ_σ Aᵀ) u = y − A D,

the linear system solved by ``cg_iterations`` conjugate-gradient iterations from u = 0 (each one model call; the
paper truncates to a few; CG stops earlier once the relative residual is below :data:`CG_TOL`). For a Gaussian prior
with its exact denoiser D^y is the exact E[x0 | x̄, y] once CG has converged.

Sampler: DDIM in the EDM variables driven by D^y (the conditional score), on the geometric noise grid of the
authors' code, σ_i = σ_max (σ_min/σ_max)^{i/(N−1)}, i = 0 … N−1, then σ_N = 0:

    x ~ N(0, σ_0² I)
    for i = 0 … N−1,  σ = σ_i, σ' = σ_{i+1}:
        D, D^y  = the moment-matched posterior mean at (x, σ)      (1 forward + cg_iterations + 1 backward passes)
        c       = η σ' sqrt(1 − σ'²/σ²)
        x       = D^y + sqrt(σ'² − c²)/σ · (x − D^y) + c z,   z ~ N(0, I)
    return x  (= D^y of the last step)

η = 1 is the ancestral (DDPM) step x' = x − τ (x − D^y) + σ' sqrt(τ) z, τ = 1 − σ'²/σ², of the authors'
priors/diffusion.py; η = 0 is the deterministic DDIM step; in the VP variables x_t = sqrt(ᾱ) x̄ this is DDIM's
update with η. Model calls per sample: N (cg_iterations + 2).

Sources: the VE grid σ ∈ [1e-3, 1e2] with geometric spacing and the ancestral step (francois-rozet/diffusion-priors
priors/diffusion.py, ``VESDE``, ``DDPM``, ``PosteriorDenoiser`` with CG); 100 steps, η = 1 and 1 solver iteration
(francois-rozet/mmps-benchmark run.py ``--steps 100 --maxiter 1``, configs/diffusion_config.yaml ``eta: 1.0``).
Deviations: that benchmark runs the VP DDIM of the ADM's own 1000-step schedule (uniform skip) and solves with GMRES;
we use the authors' VE grid, which resolves the small noise levels that decide the posterior's fine-scale variance,
and CG (the paper's Sec. 3.2 choice; the system is symmetric positive definite for an exact denoiser); D is not
clipped to [−1, 1].
"""
from __future__ import annotations

import math
import warnings
from typing import ClassVar, Sequence

import torch

from common.errors import MAX_SIGMA, SettingError, positive_int, real
from common.models.base import DiffusionModel
from common.operators.base import LinearOperator, Operator
from common.operators.linalg import conjugate_gradient
from common.random import randn
from common.registry import SAMPLERS
from common.sampling import Callback, DivergenceTracker, SampleResult
from common.sampling.guidance import DenoiserLinearization, gaussian_noise_sigma

#: CG stops before ``cg_iterations`` only once ‖r‖ ≤ CG_TOL·‖y − A D‖ (float32 round-off level): the truncation at
#: a few iterations is the method, so stopping there is expected and not warned about
CG_TOL = 1e-6


def mmps_posterior_mean(lin: DenoiserLinearization, operator: LinearOperator, y: torch.Tensor, sigma: float,
                        sigma_y: float, cg_iterations: int) -> torch.Tensor:
    """D^y = D + Σ_σ Aᵀ u, Σ_σ = σ² Jᵀ, with (σ_y² I + A Σ_σ Aᵀ) u = y − A D by ``cg_iterations`` CG iterations
    from u = 0 (module docstring); ``lin`` linearizes D(·; σ) at the current state."""

    def covariance(v: torch.Tensor) -> torch.Tensor:  # Σ_σ v = σ² Jᵀ v
        return sigma ** 2 * lin.vjp(v)

    residual = y - operator(lin.value)
    start = torch.zeros_like(residual)

    def system(u: torch.Tensor) -> torch.Tensor:  # linear, so M·0 = 0 needs no backward pass
        if u is start:
            return start
        return sigma_y ** 2 * u + operator(covariance(operator.adjoint(u)))

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="conjugate gradient stopped", category=RuntimeWarning)
        u = conjugate_gradient(system, residual, start, tol=CG_TOL, max_iter=cg_iterations).x
    return lin.value + covariance(operator.adjoint(u))


@SAMPLERS.register("mmps")
class MMPS:
    """MMPS (module docstring): ``num_steps`` DDIM steps on a geometric σ grid, ``cg_iterations`` CG iterations each."""

    requires: ClassVar[frozenset[str]] = frozenset({"linear"})
    spaces: ClassVar[frozenset[str]] = frozenset({"pixel"})

    def __init__(self, num_steps: int = 100, eta: float = 1.0, cg_iterations: int = 1, sigma_max: float = 100.0,
                 sigma_min: float = 1e-3) -> None:
        """``num_steps`` N, ``eta`` η ∈ [0, 1] (1: ancestral, 0: deterministic), ``cg_iterations`` per step (model
        calls per step: cg_iterations + 2), noise grid from ``sigma_max`` down to ``sigma_min`` (0 < σ_min < σ_max)."""
        self.num_steps = positive_int("num_steps", num_steps)
        self.eta = real("eta", eta, 0, 1)
        self.cg_iterations = positive_int("cg_iterations", cg_iterations)
        self.sigma_max = real("sigma_max", sigma_max, 0, MAX_SIGMA, low_open=True)
        self.sigma_min = real("sigma_min", sigma_min, 0, MAX_SIGMA, low_open=True)
        if self.sigma_min >= self.sigma_max:
            raise SettingError("sigma_min", sigma_min, f"need 0 < sigma_min < sigma_max = {sigma_max}")

    @property
    def model_calls(self) -> int:
        """Network evaluations per sample (at most; CG may stop early): per step one forward pass and
        cg_iterations + 1 backward (vector–Jacobian) passes."""
        return (self.cg_iterations + 2) * self.num_steps

    def check(self, model: DiffusionModel, operator: Operator) -> None:
        """Before sampling: Gaussian measurement noise (the moment-matched likelihood assumes it)."""
        gaussian_noise_sigma(operator, "mmps")

    def sigmas(self) -> list[float]:
        """σ_0 = σ_max > … > σ_{N−1} = σ_min (geometric), then σ_N = 0; N = 1 runs the single level σ_max."""
        n = self.num_steps
        ratio = math.log(self.sigma_min / self.sigma_max)
        return [self.sigma_max * math.exp(ratio * i / (n - 1)) if n > 1 else self.sigma_max for i in range(n)] + [0.0]

    @torch.no_grad()
    def sample(self, model: DiffusionModel, operator: Operator, y: torch.Tensor, *,
               generators: Sequence[torch.Generator], callback: Callback | None = None) -> SampleResult:
        """Posterior samples, one per generator (NaN where a chain diverged)."""
        sigma_y = gaussian_noise_sigma(operator, "mmps")
        sigmas = self.sigmas()
        device = y.device
        tracker = DivergenceTracker(len(generators))
        x = sigmas[0] * randn(model.sample_shape, generators, device=device)
        for step, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            lin = DenoiserLinearization.of(lambda x_bar: model.tweedie(x_bar, sigma), x)  # noqa: B023 (this step only)
            x0y = mmps_posterior_mean(lin, operator, y, sigma, sigma_y, self.cg_iterations)
            c = self.eta * sigma_next * (1 - (sigma_next / sigma) ** 2) ** 0.5
            x_next = x0y + max(sigma_next ** 2 - c ** 2, 0.0) ** 0.5 / sigma * (x - x0y)
            if c > 0:
                x_next = x_next + c * randn(model.sample_shape, generators, device=device)
            x_next = tracker.check(x_next, step)
            if callback is not None:
                residual = torch.linalg.vector_norm((y - operator(lin.value)).flatten(1), dim=1)
                callback({"step": step, "num_steps": self.num_steps, "finite": tracker.finite,
                          "decode": model.decode, "sigma": sigma, "x_t": x, "x0hat": lin.value, "x0y": x0y,
                          "residual": residual})
            x = x_next
        return tracker.result(model.decode(x))
