r"""DPS: Diffusion Posterior Sampling (Chung et al., ICLR 2023, Algorithm 1), as the reference runs it.

On the model's (possibly respaced) DDPM schedule, t = T−1 … 0:

    x_T ~ N(0, I)
    for t = T−1 … 0:
        ε̂, v   = ε_θ(x_t, t)                                   (v: learned-variance channels, if any)
        x̂0     = clip(sqrt(1/ᾱ_t) x_t − sqrt(1/ᾱ_t − 1) ε̂)     (clip to [−1, 1] in pixel space only)
        x'     = μ̃_t(x_t, x̂0) + σ_t z,  z ~ N(0, I)  (no noise at t = 0)           (dps.ddpm)
        x_{t−1} = condition(x', ∇_{x_t} Σ_b ‖y_b − A(D(x̂0_b))‖, y_t)                  (dps.conditioning)
    return D(x_0)

with D the model's decoder (identity for pixel models, the differentiable VAE decoder for latent models:
latent DPS is the same loop on latents, ẑ0 is not clipped). The gradient runs through the network, the
decoder and the operator; each step's graph is released at once. Progress, trajectory frames and logging
go through ``callback(state)``; the sampler writes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from common.errors import SettingError, one_of, positive_int, real
from common.models.base import DiffusionModel
from common.operators.base import Operator
from common.random import randn
from common.registry import SAMPLERS
from common.sampling import Callback, DivergenceTracker, SampleResult
from dps.conditioning import CONDITIONING_METHODS, ConditioningMethod, is_poisson, measurement_distance
from dps.ddpm import DDPMSchedule, space_timesteps


@dataclass
class DPSStep:
    """What one DPS step computed (all detached); ``x0hat`` is in sample space, ``measurement`` = A(D(x̂0))."""

    x_next: torch.Tensor
    x0hat: torch.Tensor
    eps: torch.Tensor
    var_values: torch.Tensor | None
    mean: torch.Tensor
    log_variance: torch.Tensor
    sample: torch.Tensor
    measurement: torch.Tensor
    residual: torch.Tensor
    gradient: torch.Tensor | None


def dps_step(model: DiffusionModel, schedule: DDPMSchedule, i: int, x_t: torch.Tensor, y: torch.Tensor,
             operator: Operator, method: ConditioningMethod, noise: torch.Tensor | None,
             y_noise: torch.Tensor | None = None, clip_denoised: bool = True) -> DPSStep:
    """One step t = ``schedule.timesteps[i]`` → t−1 of the loop in the module docstring.

    ``noise`` is z (ignored at i = 0), ``y_noise`` the ε that noises y to y_t (projection methods only).
    The residual is per sample, d_b = ‖y_b − A(D(x̂0_b))‖ (Poisson-weighted for Poisson noise), shape (B,).
    """
    with torch.set_grad_enabled(method.gradient):
        x_in = x_t.detach().requires_grad_(method.gradient)
        t = schedule.timesteps[i].to(x_t.device).expand(x_t.shape[0])
        eps, var_values = model.ddpm_output(x_in, t)
        x0hat = schedule.pred_xstart(x_in, i, eps)
        if clip_denoised and not model.latent:
            x0hat = x0hat.clamp(-1, 1)
        mean = schedule.posterior_mean(x0hat, x_in, i)
        log_variance = schedule.log_variance(i, var_values, x_in)
        sample = mean + torch.exp(0.5 * log_variance) * noise if i > 0 else mean
        measurement = operator(model.decode(x0hat))
        residual = measurement_distance(y, measurement, is_poisson(operator))
        gradient = torch.autograd.grad(residual.sum(), x_in)[0] if method.gradient else None
    y_t = schedule.q_sample(y, i, y_noise) if method.projection else None
    with torch.no_grad():
        x_next = method.apply(operator, sample.detach(), gradient, y_t)
    return DPSStep(x_next=x_next, x0hat=x0hat.detach(), eps=eps.detach(),
                   var_values=None if var_values is None else var_values.detach(), mean=mean.detach(),
                   log_variance=log_variance.detach(), sample=sample.detach(), measurement=measurement.detach(),
                   residual=residual.detach(), gradient=gradient)


@SAMPLERS.register("dps")
class DPS:
    """DPS over the model's own β schedule (see the module docstring) with conditioning ``method`` and step size
    ζ = ``scale``. ``timestep_respacing`` (guided-diffusion syntax: "250", "10,15,20", "ddim50") takes precedence over
    ``num_steps`` (N evenly spaced steps of the model's T)."""

    requires = frozenset()
    spaces = frozenset({"pixel"})

    def __init__(self, num_steps: int = 1000, method: str = "ps", scale: float = 1.0,
                 timestep_respacing: int | str | Sequence[int] | None = None, clip_denoised: bool = True) -> None:
        num_steps = positive_int("num_steps", num_steps)
        integers = isinstance(timestep_respacing, (list, tuple)) and bool(timestep_respacing) and all(
            isinstance(c, int) and not isinstance(c, bool) for c in timestep_respacing)
        if not (timestep_respacing is None or integers or isinstance(timestep_respacing, str)
                or isinstance(timestep_respacing, int) and not isinstance(timestep_respacing, bool)):
            raise SettingError("timestep_respacing", timestep_respacing,
                               "null, an integer step count, 'a,b,c' section counts or 'ddimN'")
        if not isinstance(clip_denoised, bool):
            raise SettingError("clip_denoised", clip_denoised, "true or false")
        self.respacing = num_steps if timestep_respacing in (None, "") else timestep_respacing
        self.method = ConditioningMethod(one_of("method", method, CONDITIONING_METHODS), real("scale", scale, 0))
        self.clip_denoised = clip_denoised

    def check(self, model: DiffusionModel, operator: Operator) -> None:
        """Refuse, before sampling, a respacing the model's T steps cannot give and a method the operator lacks."""
        try:
            space_timesteps(len(model.betas), self.respacing)
        except ValueError as err:
            raise SettingError("timestep_respacing", self.respacing, str(err)) from None
        self.method.check_setup(model, operator)

    def schedule(self, model: DiffusionModel) -> DDPMSchedule:
        """The model's β schedule respaced to the steps this sampler takes."""
        return DDPMSchedule.respaced(model.betas, self.respacing)

    @torch.no_grad()
    def sample(self, model: DiffusionModel, operator: Operator, y: torch.Tensor, *,
               generators: Sequence[torch.Generator], callback: Callback | None = None) -> SampleResult:
        """Posterior samples in image space, one per generator (NaN where a chain diverged)."""
        self.check(model, operator)
        self.method.check_measurement(operator, y)
        host = self.schedule(model)  # for the callback's t and σ, read without touching the device
        num_steps, device = len(host), y.device
        schedule = host.to(device)
        tracker = DivergenceTracker(len(generators))
        x_t = randn(model.sample_shape, generators, device=device)
        for step, i in enumerate(reversed(range(num_steps))):
            noise = randn(model.sample_shape, generators, device=device) if i > 0 else None
            y_noise = randn(y.shape[1:], generators, device=device) if self.method.projection else None
            out = dps_step(model, schedule, i, x_t, y, operator, self.method, noise, y_noise, self.clip_denoised)
            x_next = tracker.check(out.x_next, step)
            tracker.check(out.residual[:, None], step)  # a non-finite residual fails the sample too
            if callback is not None:
                callback({"step": step, "num_steps": num_steps, "t": int(host.timesteps[i]),
                          "sigma": host.sigma(i), "x_t": x_t, "x0hat": out.x0hat, "residual": out.residual,
                          "finite": tracker.finite, "decode": model.decode})
            x_t = x_next
        return tracker.result(model.decode(x_t).float())


@SAMPLERS.register("latent_dps")
class LatentDPS(DPS):
    """DPS on the latents of an LDM or Stable Diffusion model (ẑ0 not clipped; the residual through the decoder)."""

    spaces = frozenset({"latent"})
