r"""PSLD: Solving Linear Inverse Problems Provably via Posterior Sampling with Latent Diffusion Models
(Rout et al., NeurIPS 2023, Algorithm 2), on the latents z of an LDM or Stable Diffusion model.

A DDIM skeleton (N steps of DDIM's uniform skip, t_N > … > t_1, t_0 := −1 with ᾱ = 1) whose every step is pulled by
the gradient of two residuals of the Tweedie estimate ẑ0(z_t), both through the decoder D and the encoder E:

    z_{t_N} ~ N(0, I)
    for i = N … 1,  t = t_i,  s = t_{i−1}:
        ε̂ = ε_θ(z_t, t),   ẑ0 = (z_t − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t)
        z'_s = sqrt(ᾱ_s) ẑ0 + sqrt(1 − ᾱ_s − σ_t²) ε̂ + σ_t ξ,   σ_t = η sqrt((1 − ᾱ_s)/(1 − ᾱ_t)) sqrt(1 − ᾱ_t/ᾱ_s)
        x̂0 = D(ẑ0)
        L(z_t) = ω ‖y − A x̂0‖  +  γ ‖ẑ0 − E(Aᵀy + (I − AᵀA) x̂0)‖                        (the "gluing" term)
        z_s = z'_s − ∇_{z_t} L
    return D(z_{t_0})

The gluing term asks ẑ0 to be a fixed point of "decode, replace the measured part by the measurement, encode". For an
inpainting-like operator (AAᵀ = I, so AᵀA is the orthogonal projection onto the measured pixels) Aᵀy + (I − AᵀA)x̂0
keeps x̂0 on the unmeasured pixels and puts y on the measured ones; for other linear operators (blur, the ×4 resizer)
AᵀA is not a projection and the paper's formula is followed as it is, with the operator's true adjoint (the authors'
DPS-codebase operators use nearest up-sampling as "transpose" of the resizer and the identity for the blurs).

Symbols as in the authors' code (LituRout/PSLD, stable-diffusion/ldm/models/diffusion/psld.py): both residuals are
plain (not squared) norms, as DPS's, weighted by ω (``omega``) and γ (``gamma``); the gradient is taken through the
network, D and E. Differences, stated:

* the norms are per sample and summed over the batch (the code takes one norm over the whole batch, which couples the
  samples' step sizes; identical at batch size 1);
* the measurement residual uses A(D(ẑ0)) itself (the code adds a fresh measurement-noise draw to it);
* the last step goes to ᾱ = 1 (the code's DDIM stops at ᾱ_{t_1} of its first timestep).

What coincides: with γ = 0 and η = 1 the loop is latent DPS (``latent_dps``, ζ = ω) on the same timesteps — the DDIM
step with η = 1 is the DDPM ancestral step of the respaced chain — and with the identity as autoencoder it is pixel DPS
without clipping. With the identity autoencoder and an inpainting mask, ẑ0 − E(Aᵀy + (I − AᵀA)ẑ0) = −Aᵀ(y − Aẑ0), whose
norm equals ‖y − Aẑ0‖ when y lies in the range of A: PSLD(ω, γ) is then DPS with ζ = ω + γ.

Cost per step: one network evaluation, one decoder and one encoder evaluation, and one backward pass through all
three (the vector–Jacobian product of the gradient).
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from common.errors import positive_int, real
from common.models.base import DiffusionModel
from common.operators.base import LinearOperator, Operator
from common.random import randn
from common.registry import SAMPLERS
from common.sampling import Callback, DivergenceTracker, SampleResult
from common.sampling.vp import abar, ddim_sigma, ddim_step, denoise, sigma_of, skip_timesteps, transitions


class NormalMap(torch.autograd.Function):
    """x ↦ AᵀA x with its exact vector–Jacobian product v ↦ AᵀA v (AᵀA is symmetric), so that the gluing term is
    differentiable for every linear operator, also those whose adjoint is itself an autograd vector–Jacobian
    product (which carries no graph)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, operator: LinearOperator) -> torch.Tensor:  # noqa: D102
        ctx.operator = operator
        return operator.normal(x.detach())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return ctx.operator.normal(grad), None


def psld_loss(model: DiffusionModel, operator: LinearOperator, y: torch.Tensor, z0hat: torch.Tensor, omega: float,
              gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_b L_b, per-sample ‖y − A D(ẑ0)‖) with L_b = ω ‖y_b − A x̂0_b‖ + γ ‖ẑ0_b − E(Aᵀy_b + x̂0_b − AᵀA x̂0_b)‖,
    x̂0 = D(ẑ0); differentiable in ẑ0. The encoder is not evaluated when γ = 0."""
    x0hat = model.decode(z0hat)
    residual = torch.linalg.vector_norm((y - operator(x0hat)).flatten(1), dim=1)
    loss = omega * residual
    if gamma > 0:
        glued = model.encode(operator.adjoint(y) + x0hat - NormalMap.apply(x0hat, operator))
        loss = loss + gamma * torch.linalg.vector_norm((z0hat - glued).flatten(1), dim=1)
    return loss.sum(), residual


@SAMPLERS.register("psld")
class PSLD:
    """PSLD (module docstring) on latent models with a linear operator."""

    requires: ClassVar[frozenset[str]] = frozenset({"linear"})
    spaces: ClassVar[frozenset[str]] = frozenset({"latent"})

    def __init__(self, num_steps: int = 1000, omega: float = 1.0, gamma: float = 0.1, eta: float = 0.0) -> None:
        """``num_steps`` N DDIM steps (one network call each), ``omega`` ω ≥ 0 and ``gamma`` γ ≥ 0 the weights of
        the measurement and gluing residuals, ``eta`` DDIM's η ∈ [0, 1] (0: deterministic, the authors' default)."""
        self.num_steps = positive_int("num_steps", num_steps)
        self.omega = real("omega", omega, 0)
        self.gamma = real("gamma", gamma, 0)
        self.eta = real("eta", eta, 0, 1)

    def timesteps(self, model: DiffusionModel) -> list[int]:
        """t_N > … > t_1: DDIM's uniform skip over the model's T steps."""
        return skip_timesteps(self.num_steps, len(model.betas))

    def check(self, model: DiffusionModel, operator: Operator) -> None:
        """Refuse, before sampling, more steps than the model's T."""
        self.timesteps(model)

    @torch.no_grad()
    def sample(self, model: DiffusionModel, operator: Operator, y: torch.Tensor, *,
               generators: Sequence[torch.Generator], callback: Callback | None = None) -> SampleResult:
        """Posterior samples in image space, one per generator (sample i draws only from ``generators[i]``)."""
        steps = self.timesteps(model)
        device = y.device
        tracker = DivergenceTracker(len(generators))
        z = randn(model.sample_shape, generators, device=device)
        for step, (t, s) in enumerate(transitions(steps)):
            a_t, a_s = abar(model, t), abar(model, s)
            sigma = ddim_sigma(a_t, a_s, self.eta)
            noise = randn(model.sample_shape, generators, device=device) if sigma > 0 else None
            with torch.enable_grad():
                z_in = z.detach().requires_grad_(True)
                z0hat, eps = denoise(model, z_in, t)
                loss, residual = psld_loss(model, operator, y, z0hat, self.omega, self.gamma)
                (grad,) = torch.autograd.grad(loss, z_in)
            z_next = ddim_step(z0hat.detach(), eps.detach(), a_s, sigma, noise) - grad
            z_next = tracker.check(z_next, step)
            tracker.check(residual.detach()[:, None], step)  # a non-finite residual fails the sample too
            if callback is not None:
                callback({"step": step, "num_steps": len(steps), "finite": tracker.finite, "decode": model.decode,
                          "t": t, "sigma": sigma_of(model, t), "x_t": z, "x0hat": z0hat.detach(),
                          "residual": residual.detach()})
            z = z_next
        return tracker.result(model.decode(z).float())
