"""Noise schedules as pure functions.

* EDM time steps (Karras et al. 2022, eq. 5, ρ = 7 "poly-7"):
  σ_i = (σ_max^{1/ρ} + i/N (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0..N.
* Variance-preserving (VP) SDE of the DDPM networks (Song et al. 2021; EDM Table 1), β_min = 0.1, β_d = 19.9:
  σ(t) = sqrt(exp(½ β_d t² + β_min t) − 1),  t(σ) = (sqrt(β_min² + 2 β_d ln(1 + σ²)) − β_min) / β_d.
* Discrete DDPM β schedules (Ho et al. 2020): ``linear`` (1e-4 → 0.02, DPS/ADM) and the LDM's
  ``scaled_linear`` (linspace(√β_0, √β_T, T)²).
"""
from __future__ import annotations

import math

import torch

VP_BETA_MIN = 0.1
VP_BETA_D = 19.9


def edm_time_steps(num_steps: int, sigma_max: float | torch.Tensor, sigma_min: float, rho: int = 7
                   ) -> torch.Tensor:
    """The N + 1 poly-ρ time points σ_0 = σ_max … σ_N = σ_min (float64; float32 when σ_max is a float32 tensor).

    DAPS passes the inner PF-ODE's σ_max as a float32 tensor, so its grid is computed in float32; we
    reproduce that by following the dtype of ``sigma_max``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    dtype = sigma_max.dtype if isinstance(sigma_max, torch.Tensor) else torch.float64
    smax = torch.as_tensor(sigma_max, dtype=dtype).detach().cpu()
    r = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64).to(dtype)
    return (smax ** (1 / rho) + r * (sigma_min ** (1 / rho) - smax ** (1 / rho))) ** rho


def annealing_sigmas(num_steps: int, sigma_max: float, sigma_min: float, rho: int = 7) -> torch.Tensor:
    """DAPS annealing levels: σ_0 … σ_{N−1} of the poly-ρ grid followed by a final 0 (float32, length N + 1).

    σ_min itself is never used as a level (the reference's convention, ``schedules.json``).
    """
    t = edm_time_steps(num_steps, sigma_max, sigma_min, rho)
    return torch.cat([t[:-1], t.new_zeros(1)]).float()


def vp_sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    """t(σ) of the VP SDE."""
    return ((VP_BETA_MIN ** 2 + 2 * VP_BETA_D * (1 + sigma ** 2).log()).sqrt() - VP_BETA_MIN) / VP_BETA_D


def vp_t_to_sigma(t: torch.Tensor) -> torch.Tensor:
    """σ(t) of the VP SDE."""
    t = torch.as_tensor(t)
    return ((0.5 * VP_BETA_D * t ** 2 + VP_BETA_MIN * t).exp() - 1).sqrt()


def ddpm_betas(schedule: str = "linear", num_steps: int = 1000, beta_start: float | None = None,
               beta_end: float | None = None) -> torch.Tensor:
    """Discrete β_1..β_T (float64). ``linear``: ADM/DPS (scaled to T); ``scaled_linear``: the LDM's."""
    if schedule == "linear":
        scale = 1000 / num_steps
        start = beta_start if beta_start is not None else scale * 1e-4
        end = beta_end if beta_end is not None else scale * 0.02
        return torch.linspace(start, end, num_steps, dtype=torch.float64)
    if schedule == "scaled_linear":
        start = beta_start if beta_start is not None else 0.0015
        end = beta_end if beta_end is not None else 0.0195
        return torch.linspace(math.sqrt(start), math.sqrt(end), num_steps, dtype=torch.float64) ** 2
    raise ValueError(f"unknown beta schedule {schedule!r}; valid: linear, scaled_linear")
