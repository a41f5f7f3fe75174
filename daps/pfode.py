"""x̂0(x_t) by the probability-flow ODE (Karras et al. 2022, eq. 4 with σ(t) = t, s(t) = 1):

    dx/dσ = (x − D(x; σ)) / σ,

integrated with Euler steps on the poly-7 grid σ_0 = σ_t > … > σ_N = σ_min. The estimate is the ODE state
at σ_min (no final denoiser call), as in the DAPS reference.
"""
from __future__ import annotations

import torch

from common.models.base import DiffusionModel
from common.schedules import edm_time_steps


@torch.no_grad()
def pf_ode_x0(model: DiffusionModel, x: torch.Tensor, sigma: torch.Tensor, num_steps: int,
              sigma_min: float) -> torch.Tensor:
    """Euler PF-ODE from σ = ``sigma`` (a float32 0-dim tensor) down to ``sigma_min`` in ``num_steps`` steps.

    The grid follows σ's float32 dtype (DAPS's convention); each step uses σ_i in float32 and the step
    size σ_{i+1} − σ_i in float64, applied in float32.
    """
    grid = edm_time_steps(num_steps, sigma.float().cpu(), sigma_min).double().tolist()
    for sigma_i, sigma_next in zip(grid[:-1], grid[1:]):
        s = torch.tensor(sigma_i, dtype=torch.float32, device=x.device)
        derivative = (x - model.tweedie(x, s)) / s
        x = x + (sigma_next - sigma_i) * derivative
    return x
