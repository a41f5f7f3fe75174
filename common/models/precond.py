"""Variance-preserving preconditioning (EDM, Karras et al. 2022, Table 1 "VP"): ε-prediction DDPM -> D(x; σ).

    c_in(σ) = 1 / sqrt(σ² + 1),   c_noise(σ) = (M − 1) · t(σ),   D(x; σ) = x − σ · ε̂(c_in(σ) x, c_noise(σ)),

with t(σ) of the VP SDE (β_min = 0.1, β_d = 19.9, M = 1000, :mod:`common.models.schedules`). The network receives
the *fractional* timestep c_noise (σ = 0.5 -> 144.669). DAPS uses the same constants for the LDM latents
(not the LDM's own β schedule).
"""
from __future__ import annotations

from typing import Callable

import torch

from common.models.base import sigma_like
from common.models.schedules import vp_sigma_to_t

VP_M = 1000


def vp_c_in(sigma: torch.Tensor) -> torch.Tensor:
    """Input scaling c_in(σ) = 1 / sqrt(σ² + 1)."""
    return 1 / (sigma ** 2 + 1).sqrt()


def vp_c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """Network timestep c_noise(σ) = (M − 1) t(σ)."""
    return (VP_M - 1) * vp_sigma_to_t(sigma)


def vp_denoise(eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
               sigma: float | torch.Tensor) -> torch.Tensor:
    """D(x; σ) = x − σ ε̂(c_in x, c_noise) for an ε-network ``eps_fn(x_scaled, timesteps)``.

    σ may be a float, a 0-dim tensor (one timestep, shape (1,), broadcast over the batch, as DAPS calls it)
    or one value per sample. ``eps_fn`` returns the ε channels only; the result is float32.
    """
    x = x.float()
    s = sigma_like(sigma, x)
    timesteps = vp_c_noise(s).reshape(-1)
    eps = eps_fn(vp_c_in(s) * x, timesteps).float()
    return x - s * eps
