r"""RED-diff: A Variational Perspective on Solving Inverse Problems with Diffusion Models (Mardani et al., ICLR 2024).

The posterior is approximated by q(x0 | y) = δ(x0 − μ) and μ is fitted by stochastic optimisation (Adam) over the
diffusion timesteps, visited once each from t = T − 1 down to 0 (DDIM's uniform skip, as the authors'
``get_timesteps``). Per step, with σ̄_t = sqrt(1 − ᾱ_t)/sqrt(ᾱ_t):

    ε ~ N(0, I),   x_t = sqrt(ᾱ_t) μ + sqrt(1 − ᾱ_t) ε,   ε̂ = ε_θ(x_t, t)
    ℓ(μ) = ‖y − A(μ)‖² / (2m) + λ σ̄_t · sg[ε̂ − ε]ᵀ μ / n          (m = dim y, n = dim x0)
    μ ← Adam(μ, ∇_μ ℓ; lr, β = (0.9, 0.99))

and the result is μ after the last step. This is the authors' loss (algos/reddiff.py: ``loss_obs =
(e_obs**2).mean()/2``, ``loss_noise = ((et - noise_xt).detach() * x0_pred).mean()``, ``w_t = grad_term_weight *
snr_inv`` with ``snr_inv`` = σ̄_t for the default ``denoise_term_weight: linear``, ``obs_weight = 1``), per sample
instead of averaged over the batch so that samples never couple (Adam is invariant to a constant factor of the
loss, up to its ε = 1e−8). Multiplying ℓ by m/σ_y² gives the paper's form ‖y − A(μ)‖²/(2σ_y²) + λ_t sg[ε̂ − ε]ᵀμ
with λ_t = λ σ̄_t m / (n σ_y²): the same Adam trajectory, so σ_y never enters and Poisson-noise measurements run as
they are (the squared residual is then a heuristic data term).

The data term needs only ∇‖A(μ) − y‖² (``operator.gradient``), so every operator runs. μ starts at A⁺y where the
operator declares ``pinv`` (the authors' ``H_pinv`` initialisation) and at 0 otherwise (the authors use ad-hoc
inverses for their non-linear operators: y/2 for HDR, |F⁻¹y| for phase retrieval).

On a Gaussian prior N(m0, Σ) with the exact ε̂, E_ε[ε̂ − ε] = σ̄_t (Σ + σ̄_t² I)⁻¹ (μ − m0): step t pulls μ towards
the minimiser of ‖y − Aμ‖²/(2m) + λ σ̄_t² (μ − m0)ᵀ(Σ + σ̄_t² I)⁻¹(μ − m0)/(2n), a MAP estimate under a
t-dependent Gaussian prior; no t makes that prior N(m0, Σ) with the likelihood's weight σ_y², so μ is a point
estimate near, not at, the posterior mean, and its spread over ε is far below the posterior's
(docs/baselines.md gives the measured numbers).
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from common.errors import positive_int, real
from common.models.base import DiffusionModel
from common.operators.base import Operator
from common.random import randn
from common.registry import SAMPLERS
from common.sampling import Callback, DivergenceTracker, SampleResult
from common.sampling.vp import abar, denoise, sigma_of, skip_timesteps

#: Adam's moment decay rates (the authors' betas=(0.9, 0.99)) and its denominator offset (torch's default)
ADAM_BETAS = (0.9, 0.99)
ADAM_EPS = 1e-8


def reddiff_gradient(model: DiffusionModel, operator: Operator, mu: torch.Tensor, y: torch.Tensor, t: int,
                     noise: torch.Tensor, lambda_: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
    """∇_μ ℓ at timestep t for the draw ε = ``noise`` (module docstring), with x_t, the denoiser's x̂0(x_t) and the
    per-sample residual ‖y − A(μ)‖."""
    a_t = abar(model, t)
    x_t = a_t ** 0.5 * mu + (1 - a_t) ** 0.5 * noise
    x0hat, eps_hat = denoise(model, x_t, t)
    data_grad, loss = operator.gradient(mu, y)
    grad = data_grad / (2 * y[0].numel()) + lambda_ * sigma_of(model, t) * (eps_hat - noise) / mu[0].numel()
    return grad, x_t, x0hat, loss.sqrt()


@SAMPLERS.register("reddiff")
class REDDiff:
    """RED-diff (module docstring) on any operator: the data term enters only through ∇‖A(μ) − y‖²."""

    requires: ClassVar[frozenset[str]] = frozenset()
    spaces: ClassVar[frozenset[str]] = frozenset({"pixel"})

    def __init__(self, num_steps: int = 1000, lambda_: float = 0.25, lr: float = 0.5) -> None:
        """``num_steps``: timesteps visited (= model calls), ``lambda_`` λ ≥ 0 (the authors' ``grad_term_weight``),
        ``lr``: Adam's learning rate > 0."""
        self.num_steps = positive_int("num_steps", num_steps)
        self.lambda_ = real("lambda_", lambda_, 0)
        self.lr = real("lr", lr, 0, low_open=True)

    @torch.no_grad()
    def sample(self, model: DiffusionModel, operator: Operator, y: torch.Tensor, *,
               generators: Sequence[torch.Generator], callback: Callback | None = None) -> SampleResult:
        """One estimate per generator (sample i draws only from ``generators[i]``)."""
        steps = skip_timesteps(self.num_steps, len(model.betas))
        device = y.device
        tracker = DivergenceTracker(len(generators))
        if "pinv" in operator.capabilities:
            mu = operator.pinv(y).float()
        else:
            mu = torch.zeros((len(generators), *model.sample_shape), device=device)
        first, second = torch.zeros_like(mu), torch.zeros_like(mu)
        (beta1, beta2) = ADAM_BETAS
        for step, t in enumerate(steps):
            noise = randn(model.sample_shape, generators, device=device)
            grad, x_t, x0hat, residual = reddiff_gradient(model, operator, mu, y, t, noise, self.lambda_)
            first = beta1 * first + (1 - beta1) * grad
            second = beta2 * second + (1 - beta2) * grad.square()
            k = step + 1
            denom = (second / (1 - beta2 ** k)).sqrt() + ADAM_EPS
            mu = tracker.check(mu - self.lr / (1 - beta1 ** k) * first / denom, step)
            if callback is not None:
                callback({"step": step, "num_steps": len(steps), "finite": tracker.finite, "decode": model.decode,
                          "t": t, "sigma": sigma_of(model, t), "x_t": x_t, "x0hat": x0hat, "x0y": mu,
                          "residual": residual})
        return tracker.result(mu)
