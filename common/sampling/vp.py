r"""The variance-preserving (DDPM/DDIM) view of a prior that the DDIM-skeleton samplers share.

For the model's β schedule, ᾱ_t = Π_{s≤t} (1 − β_s) (0-based t = 0 … T−1) and

    x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε,      x̂0(x_t) = (x_t − sqrt(1 − ᾱ_t) ε̂(x_t, t)) / sqrt(ᾱ_t)

with ε̂ the model's ε-prediction (:meth:`DiffusionModel.ddpm_output`: the network's own for DDPM-trained models, derived
from the EDM denoiser otherwise, so the analytic priors run unchanged). In the EDM convention of the other samplers the
same state is x_t / sqrt(ᾱ_t) at noise level σ_t = sqrt(1/ᾱ_t − 1).
"""
from __future__ import annotations

from typing import Sequence

import torch

from common.errors import SettingError
from common.models.base import DiffusionModel


def skip_timesteps(num_steps: int, num_timesteps: int) -> list[int]:
    """DDIM's uniform skip: ``num_steps`` timesteps 0, k, 2k, … (k = T // num_steps), returned descending; a step
    count the model's T cannot give is a :class:`~common.errors.SettingError` (samplers' ``check`` relies on it)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= num_timesteps:
        raise SettingError("num_steps", num_steps, f"need an integer in [1, {num_timesteps}] (the model's diffusion "
                                                   f"steps T)")
    skip = num_timesteps // num_steps
    return list(range(0, num_timesteps, skip))[:num_steps][::-1]


def transitions(steps: Sequence[int]) -> list[tuple[int, int]]:
    """(t, s) for each step of a descending schedule: s the next timestep, −1 (ᾱ = 1, the clean end) after the
    last."""
    return list(zip(steps, [*steps[1:], -1]))


def abar(model: DiffusionModel, t: int) -> float:
    """ᾱ_t of the model's schedule; t = −1 gives ᾱ = 1 (the clean end)."""
    return 1.0 if t < 0 else float(model.alphas_cumprod[t])


def denoise(model: DiffusionModel, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) at integer timestep t for a batch x_t (float32)."""
    a = abar(model, t)
    eps, _ = model.ddpm_output(x_t, torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long))
    eps = eps.float()
    return (x_t - (1 - a) ** 0.5 * eps) / a ** 0.5, eps


def sigma_of(model: DiffusionModel, t: int) -> float:
    """σ_t = sqrt(1/ᾱ_t − 1): the EDM noise level of x_t / sqrt(ᾱ_t) (for the callback's ``sigma``)."""
    a = abar(model, t)
    return (1 / a - 1) ** 0.5


def ddim_sigma(a_t: float, a_s: float, eta: float) -> float:
    """DDIM's noise std from t to s < t: σ = η sqrt((1 − ᾱ_s)/(1 − ᾱ_t)) sqrt(1 − ᾱ_t/ᾱ_s) (Song et al. 2021, eq. 16);
    η = 1 gives the DDPM posterior std of the respaced chain, η = 0 the deterministic DDIM."""
    return eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)) ** 0.5


def ddim_step(x0hat: torch.Tensor, eps: torch.Tensor, a_s: float, sigma: float,
              noise: torch.Tensor | None) -> torch.Tensor:
    """x_s = sqrt(ᾱ_s) x̂0 + sqrt(1 − ᾱ_s − σ²) ε̂ + σ ξ (``noise`` = ξ; None only when σ = 0)."""
    x_s = a_s ** 0.5 * x0hat + max(1 - a_s - sigma ** 2, 0.0) ** 0.5 * eps
    return x_s if noise is None else x_s + sigma * noise
