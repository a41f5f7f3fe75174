r"""DAPS: Decoupled Annealing Posterior Sampling (Zhang et al., CVPR 2025, Algorithm 1).

For annealing levels σ_0 > … > σ_{N−1} > σ_N = 0 (poly-7 EDM grid, :func:`common.schedules.annealing_sigmas`):

    x_{σ_0} ~ N(0, σ_0² I)
    for i = 0 … N−1:
        x̂0   = PF-ODE(x_{σ_i}; σ_i → σ_min)                       (daps.pfode)
        x0y  ~ p(x0 | x_{σ_i}, y)  by MCMC started at x̂0           (daps.mcmc)
        x_{σ_{i+1}} = x0y + σ_{i+1} ε,  ε ~ N(0, I)
    return decode(x0y)

Latent DAPS (LDM, Stable Diffusion) is the same loop on latents z, with the data term through the
differentiable decoder, ‖A(decode(z)) − y‖²; the model tells which space it samples in.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from common.divergence import DivergenceTracker
from common.models.base import DiffusionModel
from common.operators.base import Operator
from common.random import randn
from common.registry import SAMPLERS
from common.schedules import annealing_sigmas
from daps.mcmc import MCMCSampler, MeasurementFit
from daps.pfode import pf_ode_grid, pf_ode_x0_on_grid

Callback = Callable[[dict[str, Any]], None]


def _poly_rho(config: Mapping[str, Any], which: str) -> int:
    """ρ of a ``poly-ρ`` time-step spec (the only spacing the EDM schedules here use)."""
    spec = str(config.get("timestep", "poly-7"))
    if config.get("name", "edm") != "edm" or not spec.startswith("poly-") or not spec[5:].isdigit():
        raise ValueError(f"{which}: name={config.get('name')!r}, timestep={spec!r} is not supported; "
                         f"valid: name 'edm' with timestep 'poly-<int>' (e.g. 'poly-7')")
    return int(spec[5:])


@SAMPLERS.register("edm_daps", "latent_edm_daps", "sd_edm_daps")
class DAPS:
    """DAPS with an EDM annealing schedule, a PF-ODE x̂0 and an MCMC inner loop (see module docstring)."""

    def __init__(self, annealing_scheduler_config: Mapping[str, Any], diffusion_scheduler_config: Mapping[str, Any],
                 mcmc_sampler_config: Mapping[str, Any], **_bookkeeping: Any) -> None:
        anneal, ode = dict(annealing_scheduler_config), dict(diffusion_scheduler_config)
        self.sigmas = annealing_sigmas(int(anneal["num_steps"]), float(anneal["sigma_max"]),
                                       float(anneal["sigma_min"]), _poly_rho(anneal, "annealing_scheduler_config"))
        _poly_rho(ode, "diffusion_scheduler_config")
        self.ode_steps, self.ode_sigma_min = int(ode["num_steps"]), float(ode["sigma_min"])
        if self.ode_steps < 1:
            raise ValueError(f"diffusion_scheduler_config.num_steps={self.ode_steps} must be >= 1")
        # the PF-ODE grid of every annealing level, built once: (num_steps, ode_steps) float32 each
        grids = [pf_ode_grid(s, self.ode_steps, self.ode_sigma_min) for s in self.sigmas[:-1]]
        self.ode_sigmas, self.ode_dts = (torch.stack(g) for g in zip(*grids))
        self.mcmc = MCMCSampler(**dict(mcmc_sampler_config))

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    @torch.no_grad()
    def sample(self, model: DiffusionModel, operator: Operator, y: torch.Tensor, *,
               generators: Sequence[torch.Generator], callback: Callback | None = None) -> torch.Tensor:
        """Posterior samples x0 ~ p(x0 | y) in image space, one per generator (NaN where a chain diverged)."""
        device = y.device
        sigmas, ode_sigmas, ode_dts = (t.to(device) for t in (self.sigmas, self.ode_sigmas, self.ode_dts))
        fit = MeasurementFit(model, operator, y)
        tracker = DivergenceTracker(len(generators))
        x_t = randn(model.sample_shape, generators, device=device) * sigmas[0]
        for step in range(self.num_steps):
            sigma = sigmas[step]
            x0hat = pf_ode_x0_on_grid(model, x_t, ode_sigmas[step], ode_dts[step])
            x0y, loss = self.mcmc.sample(model, fit, x0hat, x_t, sigma, step / (self.num_steps + 1), generators)
            x0y = tracker.check(x0y, step)
            if callback is not None:
                callback({"step": step, "num_steps": self.num_steps, "sigma": sigma, "x_t": x_t, "x0hat": x0hat,
                          "x0y": x0y, "residual": loss.sqrt(), "finite": tracker.finite, "decode": model.decode})
            x_t = x0y + sigmas[step + 1] * randn(model.sample_shape, generators, device=device) \
                if step + 1 < self.num_steps else x0y
        return tracker.mark(model.decode(x_t).float())
