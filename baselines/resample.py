r"""ReSample: Solving Inverse Problems with Latent Diffusion Models via Hard Data Consistency (Song et al., ICLR 2024,
Algorithm 1), on the latents z of an LDM or Stable Diffusion model, as the authors' code runs it
(soominkwon/resample, ldm/models/diffusion/ddim.py ``resample_sampling``).

A deterministic DDIM skeleton on N timesteps t_N > … > t_1 (DDIM's uniform skip; t_0 := −1, ᾱ = 1), i = N … 1,
t = t_i, s = t_{i−1}:

    ε̂ = ε_θ(z_t, t),   ẑ0 = (z_t − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t)
    z_s = sqrt(ᾱ_s) ẑ0 + sqrt(1 − ᾱ_s) ε̂ − ζ ᾱ_t ∇_{z_t} ‖y − A(D(ẑ0))‖                 (a DPS step, ζ_t = ζ ᾱ_t)

and, at the resampling steps — every k-th step (index i − 1 ≡ 0 mod k) of the middle and last thirds of the
trajectory, 0 < i − 1 ≤ N − ⌊N/3⌋ —

    "time travel": from z_s, m more unconditional DDIM steps; ẑ0 = the Tweedie estimate at the last of them
    hard data consistency:
        pixel stage  (i − 1 ≥ ⌊N/3⌋):  x* ≈ argmin_x ‖A(x) − y‖²  from x = D(ẑ0),  ẑ0(y) = E(x*)
        latent stage (i − 1 < ⌊N/3⌋):  ẑ0(y) ≈ argmin_z ‖A(D(z)) − y‖²  from z = ẑ0
    stochastic resampling (the paper's eq. for p(ẑ_s | ẑ0(y), z_s), a Gaussian product):
        z_s ~ N( (σ_s² sqrt(ᾱ_s) ẑ0(y) + (1 − ᾱ_s) z_s) / (σ_s² + 1 − ᾱ_s),  σ_s² (1 − ᾱ_s) / (σ_s² + 1 − ᾱ_s) I ),
        σ_s² = γ (1 − ᾱ_s)/(1 − ᾱ_t) (1 − ᾱ_t/ᾱ_s)        (γ times the DDPM posterior variance)

and after the last step a final latent optimisation from z_{t_0}; the result is D of it. Both optimisations are
early-stopped: AdamW (torch defaults β = (0.9, 0.999), weight decay 0.01) on the mean squared residual with a
maximum iteration count, stopped once the mean squared residual is below ε², and (latent stage) once it is larger
than it was :data:`LATENT_WINDOW` iterations before. The optimisations need only A(·) and its gradient, so every
operator runs (non-linear tasks too); the stopping makes them implicitly regularised (the start matters).

Differences from the authors' code, stated:

* ẑ0 is Tweedie's estimate (z_t − sqrt(1 − ᾱ_t) ε̂)/sqrt(ᾱ_t); the code's ``pseudo_x0`` uses (1 − ᾱ_t) ε̂ in place of
  sqrt(1 − ᾱ_t) ε̂ (it equates the score with −ε̂) for the DPS step and the optimisation start;
* losses, stopping rules and DPS norms are per sample (the code's batch MSE and batch norm couple the samples;
  identical at batch size 1; Adam is invariant to the code's 1/B factor up to its ε);
* the DDIM timesteps are 0, k, 2k, … (the code's CompVis schedule adds 1) and the last step goes to ᾱ = 1.

Cost per DDIM step: one network call with a backward pass through the network, the decoder and A (the DPS step); at a
resampling step additionally m network calls (time travel), then either one decoder call, up to ``pixel_iters``
forward/backward passes of A and one encoder call (pixel stage), or up to ``latent_iters`` decoder forward/backward
passes (latent stage); once at the end up to ``latent_iters`` decoder forward/backward passes.
"""
from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import torch

from common.errors import positive_int, real
from common.models.base import DiffusionModel
from common.operators.base import Operator
from common.random import randn
from common.registry import SAMPLERS
from common.sampling import Callback, DivergenceTracker, SampleResult
from common.sampling.vp import abar, ddim_step, denoise, sigma_of, skip_timesteps, transitions

#: AdamW as the authors call it (torch.optim.AdamW defaults): β1, β2, ε, decoupled weight decay
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8
ADAMW_WEIGHT_DECAY = 0.01
#: the latent optimisation stops once the loss exceeds the loss this many iterations earlier (ddim.py: 200)
LATENT_WINDOW = 200
#: the trajectory's thirds: no resampling in the first, pixel optimisation in the second, latent in the last
STAGES = 3


def adamw_fit(objective: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, lr: float, max_iters: int,
              tolerance: float, window: int | None = None) -> torch.Tensor:
    """AdamW on each sample's ``objective`` (a (B,) loss of a (B, …) batch) from ``start``, per-sample early stopping.

    Iteration k evaluates ℓ_k and its gradient, takes the AdamW step, and then stops a sample whose ℓ_k < ε²
    (ε = ``tolerance``) or, with ``window`` W, whose ℓ_k > ℓ_{k−W}: the authors' loop, which takes the step before
    testing the loss. A stopped sample keeps its value; the others carry on, so samples never couple.
    """
    p = start.detach().clone()
    first, second = torch.zeros_like(p), torch.zeros_like(p)
    beta1, beta2 = ADAMW_BETAS
    active = torch.ones(p.shape[0], dtype=torch.bool, device=p.device)
    history: list[torch.Tensor] = []
    shape = (-1, *[1] * (p.ndim - 1))
    for k in range(1, max_iters + 1):
        with torch.enable_grad():
            q = p.requires_grad_(True)
            loss = objective(q)
            (grad,) = torch.autograd.grad(loss.sum(), q)
        loss, p = loss.detach(), p.detach()
        first = beta1 * first + (1 - beta1) * grad
        second = beta2 * second + (1 - beta2) * grad.square()
        denom = (second / (1 - beta2 ** k)).sqrt() + ADAMW_EPS
        stepped = p * (1 - lr * ADAMW_WEIGHT_DECAY) - lr / (1 - beta1 ** k) * first / denom
        p = torch.where(active.view(shape), stepped, p)
        done = loss < tolerance ** 2
        if window is not None and len(history) >= window:
            done = done | (history[-window] < loss)
        history.append(loss)
        active = active & ~done
        if not bool(active.any()):
            break
    return p


def mean_squared_residual(operator: Operator, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample mean_j (A(x) − y)_j², shape (B,) (the authors' ``MSELoss`` per sample)."""
    return (operator(x) - y).pow(2).flatten(1).mean(1)


def resample_variance(gamma: float, a_t: float, a_s: float) -> float:
    """σ_s² = γ (1 − ᾱ_s)/(1 − ᾱ_t) (1 − ᾱ_t/ᾱ_s)."""
    return gamma * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)


def stochastic_resample(z0y: torch.Tensor, z_s: torch.Tensor, a_s: float, var: float,
                        noise: torch.Tensor) -> torch.Tensor:
    """A draw of N((σ² sqrt(ᾱ_s) ẑ0(y) + (1 − ᾱ_s) z_s)/(σ² + 1 − ᾱ_s), σ²(1 − ᾱ_s)/(σ² + 1 − ᾱ_s) I), σ² = ``var``:
    the product of N(sqrt(ᾱ_s) ẑ0(y), (1 − ᾱ_s) I) (ẑ0(y) noised to level s) and N(z_s, σ² I)."""
    total = var + 1 - a_s
    return (var * a_s ** 0.5 * z0y + (1 - a_s) * z_s) / total + (var * (1 - a_s) / total) ** 0.5 * noise


@SAMPLERS.register("resample")
class ReSample:
    """ReSample (module docstring) on latent models, every operator."""

    requires: ClassVar[frozenset[str]] = frozenset()
    spaces: ClassVar[frozenset[str]] = frozenset({"latent"})

    def __init__(self, num_steps: int = 500, zeta: float = 0.5, gamma: float = 40.0, resample_every: int = 10,
                 travel_steps: int = 5, pixel_lr: float = 1e-2, pixel_iters: int = 2000, latent_lr: float = 5e-3,
                 latent_iters: int = 500, tolerance: float = 1e-3) -> None:
        """``num_steps`` N DDIM steps; ``zeta`` ζ ≥ 0: the DPS step ζ ᾱ_t; ``gamma`` γ > 0: the resampling variance
        scale; ``resample_every`` k; ``travel_steps`` m ≥ 1: DDIM steps of the time travel; ``pixel_lr``,
        ``pixel_iters``, ``latent_lr``, ``latent_iters``: AdamW learning rates and iteration caps of the two
        optimisations; ``tolerance`` ε > 0: they stop once the mean squared residual is below ε²."""
        self.num_steps = positive_int("num_steps", num_steps)
        self.zeta = real("zeta", zeta, 0)
        self.gamma = real("gamma", gamma, 0, low_open=True)
        self.resample_every = positive_int("resample_every", resample_every)
        self.travel_steps = positive_int("travel_steps", travel_steps)
        self.pixel_lr = real("pixel_lr", pixel_lr, 0, low_open=True)
        self.pixel_iters = positive_int("pixel_iters", pixel_iters)
        self.latent_lr = real("latent_lr", latent_lr, 0, low_open=True)
        self.latent_iters = positive_int("latent_iters", latent_iters)
        self.tolerance = real("tolerance", tolerance, 0, low_open=True)

    def timesteps(self, model: DiffusionModel) -> list[int]:
        """t_N > … > t_1: DDIM's uniform skip over the model's T steps."""
        return skip_timesteps(self.num_steps, len(model.betas))

    def check(self, model: DiffusionModel, operator: Operator) -> None:
        """Refuse, before sampling, more steps than the model's T."""
        self.timesteps(model)

    def stage(self, step: int) -> str | None:
        """What the step (0 … N − 1) does after its DPS step: "pixel", "latent" or None (no resampling); with
        index = N − 1 − step, resample when 0 < index ≤ N − ⌊N/3⌋ and index ≡ 0 mod k, in pixel space while
        index ≥ ⌊N/3⌋ (the authors' three stages)."""
        index = self.num_steps - 1 - step
        split = self.num_steps // STAGES
        if not (0 < index <= self.num_steps - split and index % self.resample_every == 0):
            return None
        return "pixel" if index >= split else "latent"

    def latent_optimisation(self, model: DiffusionModel, operator: Operator, y: torch.Tensor,
                            z: torch.Tensor) -> torch.Tensor:
        """ẑ0(y) ≈ argmin_z ‖A(D(z)) − y‖² from z (early-stopped AdamW)."""
        return adamw_fit(lambda v: mean_squared_residual(operator, y, model.decode(v)), z, self.latent_lr,
                         self.latent_iters, self.tolerance, LATENT_WINDOW)

    def pixel_optimisation(self, model: DiffusionModel, operator: Operator, y: torch.Tensor,
                           z: torch.Tensor) -> torch.Tensor:
        """ẑ0(y) = E(x*), x* ≈ argmin_x ‖A(x) − y‖² from x = D(z) (early-stopped AdamW)."""
        x = adamw_fit(lambda v: mean_squared_residual(operator, y, v), model.decode(z), self.pixel_lr,
                      self.pixel_iters, self.tolerance)
        return model.encode(x)

    def time_travel(self, model: DiffusionModel, z: torch.Tensor, steps: list[int], start: int) -> torch.Tensor:
        """ẑ0 at the last of up to m unconditional DDIM steps from z at timestep ``steps[start]``."""
        last = min(start + self.travel_steps, len(steps)) - 1
        for j in range(start, last + 1):
            z0hat, eps = denoise(model, z, steps[j])
            if j < last:
                z = ddim_step(z0hat, eps, abar(model, steps[j + 1]), 0.0, None)
        return z0hat

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
            with torch.enable_grad():
                z_in = z.detach().requires_grad_(True)
                z0hat, eps = denoise(model, z_in, t)
                residual = torch.linalg.vector_norm((y - operator(model.decode(z0hat))).flatten(1), dim=1)
                (grad,) = torch.autograd.grad(residual.sum(), z_in)
            z_next = ddim_step(z0hat.detach(), eps.detach(), a_s, 0.0, None) - self.zeta * a_t * grad
            stage = self.stage(step)
            if stage is not None:
                travelled = self.time_travel(model, z_next, steps, step + 1)
                optimise = self.pixel_optimisation if stage == "pixel" else self.latent_optimisation
                z0y = optimise(model, operator, y, travelled)
                noise = randn(model.sample_shape, generators, device=device)
                z_next = stochastic_resample(z0y, z_next, a_s, resample_variance(self.gamma, a_t, a_s), noise)
            z_next = tracker.check(z_next, step)
            tracker.check(residual.detach()[:, None], step)  # a non-finite residual fails the sample too
            if callback is not None:
                callback({"step": step, "num_steps": len(steps), "finite": tracker.finite, "decode": model.decode,
                          "t": t, "sigma": sigma_of(model, t), "x_t": z, "x0hat": z0hat.detach(),
                          "residual": residual.detach()})
            z = z_next
        z = tracker.check(self.latent_optimisation(model, operator, y, z), len(steps) - 1)
        return tracker.result(model.decode(z).float())
