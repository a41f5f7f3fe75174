r"""DAPS: Decoupled Annealing Posterior Sampling (Zhang et al., CVPR 2025, Algorithm 1).

For annealing levels σ_0 > … > σ_{N−1} > σ_N = 0 (poly-7 EDM grid, :func:`common.models.schedules.annealing_sigmas`):

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

from typing import Any, Mapping, Sequence

import torch

from common.config.keys import build_strict, check_keys
from common.errors import MAX_STEPS, SettingError, positive_int, real
from common.models.base import DiffusionModel
from common.models.schedules import annealing_sigmas
from common.operators.base import Operator
from common.random import randn
from common.registry import SAMPLERS
from common.sampling import Callback, DivergenceTracker, SampleResult
from daps.mcmc import MCMCSampler, MeasurementFit
from daps.pfode import pf_ode_grid, pf_ode_x0_on_grid

SCHEDULER_KEYS = ("name", "num_steps", "sigma_max", "sigma_min", "timestep")
#: constructor argument -> (reference-style block, key) it is read from
ORIGIN = {"num_steps": ("annealing_scheduler_config", "num_steps"),
          "sigma_max": ("annealing_scheduler_config", "sigma_max"),
          "sigma_min": ("annealing_scheduler_config", "sigma_min"),
          "ode_steps": ("diffusion_scheduler_config", "num_steps"),
          "ode_sigma_min": ("diffusion_scheduler_config", "sigma_min")}


def poly_rho(spec: Any, key: str) -> int:
    """ρ of a reference-style ``"poly-ρ"`` time-step spelling (the only spacing the EDM schedules here use)."""
    text = str(spec)
    if not text.startswith("poly-") or not text[5:].isdigit() or int(text[5:]) < 1:
        raise SettingError(key, spec, "'poly-<int>' with an integer >= 1 (e.g. 'poly-7')")
    return int(text[5:])


@SAMPLERS.register("edm_daps")
class DAPS:
    """DAPS with an EDM annealing schedule, a PF-ODE x̂0 and an MCMC inner loop (see module docstring).

    ``num_steps`` annealing levels on the poly-``rho`` grid from ``sigma_max`` to ``sigma_min`` (then 0); a PF-ODE of
    ``ode_steps`` Euler steps down to ``ode_sigma_min`` on the poly-``ode_rho`` grid; ``mcmc`` the inner kernel.
    """

    requires = frozenset()
    spaces = frozenset({"pixel"})

    def __init__(self, num_steps: int, sigma_max: float, sigma_min: float, ode_steps: int, ode_sigma_min: float,
                 mcmc: MCMCSampler, rho: int = 7, ode_rho: int = 7) -> None:
        num_steps, ode_steps = positive_int("num_steps", num_steps), positive_int("ode_steps", ode_steps)
        if num_steps * ode_steps > MAX_STEPS:  # the PF-ODE grids below hold num_steps × ode_steps levels
            raise SettingError("ode_steps", ode_steps, f"need num_steps × ode_steps <= {MAX_STEPS} (num_steps = "
                                                       f"{num_steps}): a larger budget than any paper's")
        if real("sigma_min", sigma_min, 0, low_open=True) >= real("sigma_max", sigma_max, 0):
            raise SettingError("sigma_min", sigma_min, f"need sigma_min < sigma_max = {sigma_max:g}")
        sigma_min, sigma_max = float(sigma_min), float(sigma_max)
        self.ode_sigma_min = real("ode_sigma_min", ode_sigma_min, 0, low_open=True)
        self.sigmas = annealing_sigmas(num_steps, sigma_max, sigma_min, positive_int("rho", rho))
        self.ode_steps = ode_steps
        # the PF-ODE grid of every annealing level, built once: (num_steps, ode_steps) float32 each
        grids = [pf_ode_grid(s, ode_steps, self.ode_sigma_min, positive_int("ode_rho", ode_rho))
                 for s in self.sigmas[:-1]]
        self.ode_sigmas, self.ode_dts = (torch.stack(g) for g in zip(*grids))
        self.mcmc = mcmc

    @classmethod
    def from_config(cls, annealing_scheduler_config: Mapping[str, Any], diffusion_scheduler_config: Mapping[str, Any],
                    mcmc_sampler_config: Mapping[str, Any]) -> "DAPS":
        """The config adapter: the DAPS reference's nested blocks (``name: edm``, ``timestep: poly-7``) → plain values."""
        anneal, ode = annealing_scheduler_config, diffusion_scheduler_config
        check_keys(anneal, SCHEDULER_KEYS, "annealing_scheduler_config", required=("num_steps", "sigma_max", "sigma_min"))
        check_keys(ode, set(SCHEDULER_KEYS) - {"sigma_max"}, "diffusion_scheduler_config",  # starts at each σ_t
                   required=("num_steps", "sigma_min"))
        for key, block in (("annealing_scheduler_config", anneal), ("diffusion_scheduler_config", ode)):
            if block.get("name", "edm") != "edm":
                raise SettingError(f"{key}.name", block["name"], "'edm' (the only schedule DAPS uses)")
        rho = poly_rho(anneal.get("timestep", "poly-7"), "annealing_scheduler_config.timestep")
        ode_rho = poly_rho(ode.get("timestep", "poly-7"), "diffusion_scheduler_config.timestep")
        mcmc = build_strict(MCMCSampler, mcmc_sampler_config, "mcmc_sampler_config")
        try:
            return cls(num_steps=anneal["num_steps"], sigma_max=anneal["sigma_max"], sigma_min=anneal["sigma_min"],
                       rho=rho, ode_steps=ode["num_steps"], ode_sigma_min=ode["sigma_min"], ode_rho=ode_rho, mcmc=mcmc)
        except SettingError as err:  # name the reference-style key the value came from
            block, key = ORIGIN[err.key]
            raise SettingError(key, err.value, err.valid).at(block) from None

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    @torch.no_grad()
    def sample(self, model: DiffusionModel, operator: Operator, y: torch.Tensor, *,
               generators: Sequence[torch.Generator], callback: Callback | None = None) -> SampleResult:
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
        return tracker.result(model.decode(x_t).float())


@SAMPLERS.register("latent_edm_daps", "sd_edm_daps")
class LatentDAPS(DAPS):
    """DAPS on the latents of an LDM or Stable Diffusion model (the same loop; the data term through the decoder)."""

    spaces = frozenset({"latent"})
