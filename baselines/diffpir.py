r"""DiffPIR: Denoising Diffusion Models for Plug-and-Play Image Restoration (Zhu et al., CVPRW 2023, Algorithm 1).

Half-quadratic splitting inside a DDIM skeleton. On timesteps t_N > … > t_1 (``schedule``: the authors' quadratic
spacing or DDIM's uniform skip) with t_0 := −1 (ᾱ = 1), σ̄_t = sqrt(1 − ᾱ_t)/sqrt(ᾱ_t):

    x_{t_N} ~ N(0, I)
    for i = N … 1,  t = t_i,  s = t_{i−1}:
        x̂0      = (x_t − sqrt(1 − ᾱ_t) ε_θ(x_t, t)) / sqrt(ᾱ_t)             (clipped to [−1, 1] if clip_denoised)
        x̂0^y    = argmin_z ‖y − A z‖² + ρ_t ‖z − x̂0‖²,   ρ_t = λ σ_n² / σ̄_t²            (paper eq. 12–13)
        ε̂       = (x_t − sqrt(ᾱ_t) x̂0^y) / sqrt(1 − ᾱ_t)                    (the effective noise of x_t)
        x_s     = sqrt(ᾱ_s) x̂0^y + sqrt(1 − ᾱ_s) (sqrt(1 − ζ) ε̂ + sqrt(ζ) ε),   ε ~ N(0, I)
    return x_{t_0} = x̂0^y of the last step

Units of ρ_t. The authors' code (main_ddpir_*.py) solves the data sub-problem on [0, 1] images with σ_n the noise std
in [0, 1] units, while σ̄_t is the model's noise level on [−1, 1] images. The sub-problem's minimiser does not change
when both of its terms are rescaled together, so on our [−1, 1] images the same ρ_t reads

    ρ_t = λ (σ_y / 2)² / σ̄_t²,      σ_y = ``operator.noise.sigma`` in [−1, 1] units,

floored, like the authors' ``sigma = max(0.001, noise_level_img)``, at σ_y/2 ≥ 0.001 so that noiseless tasks keep a
finite weight. (deepinv's ``DiffPIR`` passes γ = 1/(2ρ) to its L2 proximal map, i.e. weight 2ρ: its λ is half of
the authors'.) Bayesian reading: with x0 | x_t ≈ N(x̂0, σ̄_t² I) the exact combination is ρ_t = σ_y²/σ̄_t², which is
λ = 4 here.

The data step: linear operators declaring ``"prox"`` use ``operator.prox(x̂0, y, ρ_t)`` (closed form or conjugate
gradients). Every other operator takes the paper's first-order step for general degradations, repeated
``grad_steps`` times: gradient descent on f(z) = ‖A z − y‖² + ρ_t ‖z − x̂0‖² from z = x̂0,

    z ← z − η_t ∇f(z),   η_t = min(η, 1/(2ρ_t)),

where 1/(2ρ_t) is the paper's step (x̂0 − ∇‖A x̂0 − y‖²/(2ρ_t) for one step; it solves the quadratic term exactly)
and η = ``grad_step_size`` caps it early on, where ρ_t → 0 would make the paper's step unbounded. Gradient descent
on f is stable while η (L + 2ρ_t) < 2 with L the Lipschitz constant of ∇‖A z − y‖²; since η ≤ 1/(2ρ_t), η L < 1 keeps
every step stable and η L ≥ 2 makes the first (small-ρ_t) steps diverge, so :meth:`DiffPIR.check` refuses an η with
η L ≥ 2, L estimated at a random image by power iteration (:func:`common.operators.linalg.gradient_lipschitz`).
"""
from __future__ import annotations

import math
from typing import ClassVar, Sequence

import torch

from common.errors import ConfigError, SettingError, one_of, positive_int, real
from common.models.base import DiffusionModel
from common.operators.base import Operator, stack_states
from common.operators.linalg import gradient_lipschitz
from common.random import make_generator, rand, randn
from common.registry import SAMPLERS
from common.sampling import Callback, DivergenceTracker, SampleResult
from common.sampling.vp import abar, denoise, sigma_of, skip_timesteps, transitions

#: the σ_n floor of the authors' code, in [0, 1] units (σ_y/2 on our [−1, 1] images)
SIGMA_FLOOR = 1e-3
SCHEDULES = ("quad", "uniform")


def quadratic_timesteps(num_steps: int, num_timesteps: int) -> list[int]:
    """The authors' ``skip_type='quad'`` timesteps, descending: t_i = T − 1 − min(⌊T sqrt(i/(N − 1))⌋, T − 1),
    i = 0 … N − 1 (dense near t = 0); a single step is [T − 1]. Refuses an N whose rounding repeats a timestep."""
    if num_steps == 1:
        return [num_timesteps - 1]
    t = num_timesteps
    steps = [t - 1 - min(math.isqrt(i * t * t // (num_steps - 1)), t - 1) for i in range(num_steps)]
    if any(a <= b for a, b in zip(steps, steps[1:])):
        raise SettingError("num_steps", num_steps, f"the quadratic schedule repeats a timestep of this model's "
                                                   f"T = {t}; use fewer steps or schedule=uniform")
    return steps


def rho(lambda_: float, sigma_y: float, model: DiffusionModel, t: int) -> float:
    """ρ_t = λ (σ_y/2)² / σ̄_t² (module docstring), σ_y/2 floored at :data:`SIGMA_FLOOR`."""
    return lambda_ * max(sigma_y / 2, SIGMA_FLOOR) ** 2 / sigma_of(model, t) ** 2


def gradient_data_step(operator: Operator, x0hat: torch.Tensor, y: torch.Tensor, gamma: float, steps: int,
                       step_size: float) -> torch.Tensor:
    """``steps`` gradient steps on ‖A z − y‖² + γ‖z − x̂0‖² from z = x̂0 with step min(η, 1/(2γ)) (module docstring)."""
    eta = min(step_size, 1 / (2 * gamma))
    z = x0hat
    for _ in range(steps):
        grad, _ = operator.gradient(z, y)
        z = z - eta * (grad + 2 * gamma * (z - x0hat))
    return z


@SAMPLERS.register("diffpir")
class DiffPIR:
    """DiffPIR (module docstring) on any operator: the proximal map where declared, gradient steps otherwise."""

    requires: ClassVar[frozenset[str]] = frozenset()
    spaces: ClassVar[frozenset[str]] = frozenset({"pixel"})

    def __init__(self, num_steps: int = 100, lambda_: float = 7.0, zeta: float = 0.3, schedule: str = "quad",
                 clip_denoised: bool = True, grad_steps: int = 1, grad_step_size: float = 1.0) -> None:
        """``num_steps`` N (model calls), ``lambda_`` λ > 0, ``zeta`` ζ ∈ [0, 1], ``schedule`` quad | uniform,
        ``clip_denoised``: clip x̂0 to [−1, 1] (the authors' guided-diffusion call does); ``grad_steps`` and
        ``grad_step_size`` η: the data step of operators without a proximal map."""
        self.num_steps = positive_int("num_steps", num_steps)
        self.lambda_ = real("lambda_", lambda_, 0, low_open=True)
        self.zeta = real("zeta", zeta, 0, 1)
        self.schedule = one_of("schedule", schedule, SCHEDULES)
        if not isinstance(clip_denoised, bool):
            raise SettingError("clip_denoised", clip_denoised, "need true or false")
        self.clip_denoised = clip_denoised
        self.grad_steps = positive_int("grad_steps", grad_steps)
        self.grad_step_size = real("grad_step_size", grad_step_size, 0, low_open=True)

    def timesteps(self, model: DiffusionModel) -> list[int]:
        """t_N > … > t_1 on the model's schedule."""
        num_timesteps = len(model.betas)
        if self.num_steps > num_timesteps:
            raise SettingError("num_steps", self.num_steps, f"need at most this model's T = {num_timesteps}")
        if self.schedule == "quad":
            return quadratic_timesteps(self.num_steps, num_timesteps)
        return skip_timesteps(self.num_steps, num_timesteps)

    def check(self, model: DiffusionModel, operator: Operator) -> None:
        """Refuse, before sampling, a schedule the model cannot give and noise without a Gaussian std σ_n."""
        self.timesteps(model)
        if not isinstance(getattr(operator.noise, "sigma", None), float):
            raise ConfigError(f"sampler 'diffpir' weighs its data step by ρ_t = λσ_n²/σ̄_t² and needs Gaussian "
                              f"measurement noise with a std σ_n; {type(operator).__name__} has "
                              f"{type(operator.noise).__name__}. Use reddiff or dps for this noise")
        if "prox" not in operator.capabilities:
            lipschitz = self.data_lipschitz(model, operator)
            if self.grad_step_size * lipschitz >= 2:
                raise SettingError("grad_step_size", self.grad_step_size,
                                   f"need grad_step_size × L < 2 for stable data steps, where L ≈ {lipschitz:.3g} is the "
                                   f"Lipschitz constant of ∇‖A(z) − y‖² of {type(operator).__name__} (estimated at a "
                                   f"random image); choose a value below {2 / lipschitz:.3g}")

    @staticmethod
    def data_lipschitz(model: DiffusionModel, operator: Operator) -> float:
        """L of ∇‖A(z) − y‖² at a random image in [−1, 1] (with one drawn operator state, if it has one)."""
        device = next((t.device for t in [*operator.parameters(), *operator.buffers()]), torch.device("cpu"))
        generator = make_generator(0, "lipschitz", device=device)
        state = operator.draw_state(generator)
        if state:
            operator.set_state(stack_states([state]))  # the experiment sets each batch's own state before sampling
        x = 2 * rand(model.sample_shape, [generator], device=device) - 1
        return gradient_lipschitz(operator, x, generator)

    def data_step(self, operator: Operator, x0hat: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
        """x̂0^y = argmin_z ‖y − A z‖² + γ‖z − x̂0‖²: exact where the operator declares ``prox``, else by gradient
        steps."""
        if "prox" in operator.capabilities:
            return operator.prox(x0hat, y, gamma)
        return gradient_data_step(operator, x0hat, y, gamma, self.grad_steps, self.grad_step_size)

    @torch.no_grad()
    def sample(self, model: DiffusionModel, operator: Operator, y: torch.Tensor, *,
               generators: Sequence[torch.Generator], callback: Callback | None = None) -> SampleResult:
        """One posterior sample per generator (sample i draws only from ``generators[i]``)."""
        self.check(model, operator)
        steps = self.timesteps(model)
        sigma_y = operator.noise.sigma
        device = y.device
        tracker = DivergenceTracker(len(generators))
        x = randn(model.sample_shape, generators, device=device)
        for step, (t, s) in enumerate(transitions(steps)):
            a_t, a_s = abar(model, t), abar(model, s)
            x0hat, _ = denoise(model, x, t)
            if self.clip_denoised:
                x0hat = x0hat.clamp(-1, 1)
            x0y = self.data_step(operator, x0hat, y, rho(self.lambda_, sigma_y, model, t))
            eps_hat = (x - a_t ** 0.5 * x0y) / (1 - a_t) ** 0.5
            noise = randn(model.sample_shape, generators, device=device)
            x_next = a_s ** 0.5 * x0y + (1 - a_s) ** 0.5 * ((1 - self.zeta) ** 0.5 * eps_hat + self.zeta ** 0.5 * noise)
            x_next = tracker.check(x_next, step)
            if callback is not None:
                residual = torch.linalg.vector_norm((y - operator(x0hat)).flatten(1), dim=1)
                callback({"step": step, "num_steps": len(steps), "finite": tracker.finite, "decode": model.decode,
                          "t": t, "sigma": sigma_of(model, t), "x_t": x, "x0hat": x0hat, "x0y": x0y,
                          "residual": residual})
            x = x_next
        return tracker.result(x)
