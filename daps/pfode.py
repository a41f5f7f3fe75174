"""x̂0(x_t) by the probability-flow ODE (Karras et al. 2022, eq. 4 with σ(t) = t, s(t) = 1):

    dx/dσ = (x − D(x; σ)) / σ,

integrated with Euler steps on the poly-7 grid σ_0 = σ_t > … > σ_N = σ_min. The estimate is the ODE state
at σ_min (no final denoiser call), as in the DAPS reference.
"""
from __future__ import annotations

import torch

from common.models.base import DiffusionModel
from common.models.schedules import edm_time_steps


def pf_ode_grid(sigma: torch.Tensor, num_steps: int, sigma_min: float, rho: int = 7
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ_0 … σ_{N−1}, Δ_i = σ_{i+1} − σ_i) for the Euler steps from ``sigma`` (a float32 0-dim tensor) to σ_min on
    the poly-ρ grid.

    The grid follows σ's float32 dtype (DAPS's convention); the step sizes are taken in float64 and rounded
    to float32, where they meet the float32 state. Both float32, on the CPU.
    """
    grid = edm_time_steps(num_steps, sigma.float().cpu(), sigma_min, rho)
    return grid[:-1].float(), (grid[1:].double() - grid[:-1].double()).float()


@torch.no_grad()
def pf_ode_x0_on_grid(model: DiffusionModel, x: torch.Tensor, sigmas: torch.Tensor, steps: torch.Tensor
                      ) -> torch.Tensor:
    """Euler PF-ODE over a precomputed :func:`pf_ode_grid` (tensors on x's device: no host round trip)."""
    for s, step in zip(sigmas, steps):
        derivative = (x - model.tweedie(x, s)) / s
        x = x + step * derivative
    return x


def pf_ode_x0(model: DiffusionModel, x: torch.Tensor, sigma: torch.Tensor, num_steps: int,
              sigma_min: float) -> torch.Tensor:
    """Euler PF-ODE from σ = ``sigma`` (a float32 0-dim tensor) down to ``sigma_min`` in ``num_steps`` steps."""
    sigmas, steps = pf_ode_grid(sigma, num_steps, sigma_min)
    return pf_ode_x0_on_grid(model, x, sigmas.to(x.device), steps.to(x.device))
