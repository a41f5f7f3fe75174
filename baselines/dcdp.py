r"""DCDP: Decoupled Data Consistency with Diffusion Purification (Li, Kwon, Alkhouri, Ravishankar & Qu, 2024,
arXiv:2403.06054, Algorithm 1), pixel and latent.

K outer iterations alternate a data-consistency phase and a purification phase with decreasing timesteps τ_1 > … > τ_K
(linear from T_0 to T_K, the authors' ``Purification_Schedule(..., 'linear')``, 0 replaced by 1):

    x^(0) = 0
    for k = 1 … K:
        data consistency:  J steps of gradient descent with heavy-ball momentum β on ‖A(D(x)) − y‖² from x^(k−1)
                           (v ← β v + ∇, x ← x − η v; v = 0 at the start of each phase: the authors' fresh
                           torch.optim.SGD(lr, momentum=0.9) per iteration)
        purification:      x_τ = sqrt(ᾱ_{τ_k−1}) x + sqrt(1 − ᾱ_{τ_k−1}) ε,   ε ~ N(0, I)
                           x^(k) = DDIM (η = 0) from timestep τ_k − 1 down to 0 with n = min(τ_k, P) steps
    return D(x^(K))

D is the decoder for latent models (the data term is then differentiated through it: the authors' LDM
``data_consistency_type=latent``) and the identity for pixel models. P (``purification_steps``) = 1 is the
authors' "Option 2" (one-step Tweedie x̂0 = (x_τ − sqrt(1 − ᾱ_τ) ε̂)/sqrt(ᾱ_τ)), P = 20 their default full DDIM.
The DDIM timesteps are round(j (τ − 1)/(n − 1)), j = 0 … n − 1, as their ``space_timesteps(τ, [n])``.

Step size. The authors minimise the mean squared error mean((A(x) − y)²) over the m = dim y measurement entries with
learning rate lr; η here is on the un-normalised ‖A(x) − y‖², so η = lr/m at the authors' 256-px measurement size
(the yaml states each conversion); it does not change with our image size.

Model calls per sample: Σ_k min(τ_k, P); gradient evaluations (operator, and the decoder for latent models): K·J.
Deviations: the purification DDIM runs on the model's own ᾱ (the authors build a fresh linear β schedule of τ_k
steps for it, which rescales β by 1000/τ_k); the gradient is per sample (their MSE is a batch mean, batch size 1);
latent data consistency always goes through the decoder (their LDM runs of motion and Gaussian deblurring optimise
in pixel space and encode).

On a Gaussian prior N(m0, Σ) with the exact denoiser, one-step purification is the Wiener filter of x + σ ε,
x̂0 = m0 + Σ(Σ + σ² I)⁻¹(x + σ ε − m0) (σ² = 1/ᾱ_τ − 1), and DDIM with many steps tends to the probability-flow map
m0 + Σ^{1/2}(Σ + σ² I)^{−1/2}(x + σ ε − m0) (tests/baselines/test_dcdp.py).
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from common.errors import SettingError, positive_int, real
from common.models.base import DiffusionModel
from common.operators.base import Operator
from common.random import randn
from common.registry import SAMPLERS
from common.sampling import Callback, DivergenceTracker, SampleResult
from common.sampling.vp import abar, denoise, sigma_of


def purification_schedule(num_steps: int, t_start: int, t_end: int) -> list[int]:
    """τ_1 ≥ … ≥ τ_K: round(linspace(T_0, T_K, K)) (the authors' linear schedule), 0 replaced by 1."""
    if num_steps == 1:
        return [max(t_start, 1)]
    return [max(round(t_start + (t_end - t_start) * k / (num_steps - 1) + 1e-6), 1) for k in range(num_steps)]


def ddim_timesteps(tau: int, steps: int) -> list[int]:
    """n = min(τ, steps) DDIM timesteps from τ − 1 down to 0, round(j (τ − 1)/(n − 1)), descending, distinct."""
    n = min(tau, steps)
    if n == 1:
        return [tau - 1]
    return sorted({round(j * (tau - 1) / (n - 1)) for j in range(n)}, reverse=True)


def purify(model: DiffusionModel, x: torch.Tensor, tau: int, steps: int, noise: torch.Tensor) -> torch.Tensor:
    """Noise x to timestep τ − 1 with ``noise`` (ε) and run deterministic DDIM (η = 0) to the clean end."""
    timesteps = ddim_timesteps(tau, steps)
    a = abar(model, timesteps[0])
    x_t = a ** 0.5 * x + (1 - a) ** 0.5 * noise
    for t, s in zip(timesteps, [*timesteps[1:], -1]):
        x0hat, eps = denoise(model, x_t, t)
        a_s = abar(model, s)
        x_t = a_s ** 0.5 * x0hat + (1 - a_s) ** 0.5 * eps
    return x_t


@SAMPLERS.register("dcdp")
class DCDP:
    """DCDP (module docstring): ``num_steps`` K outer iterations, ``grad_steps`` J gradient steps of size
    ``step_size`` η with momentum β (``momentum``) each, purification from ``t_start`` T_0 to ``t_end`` T_K with at
    most ``purification_steps`` P DDIM steps."""

    requires: ClassVar[frozenset[str]] = frozenset()
    spaces: ClassVar[frozenset[str]] = frozenset({"pixel", "latent"})

    def __init__(self, num_steps: int = 10, grad_steps: int = 10, step_size: float = 0.08, momentum: float = 0.9,
                 t_start: int = 400, t_end: int = 0, purification_steps: int = 20) -> None:
        self.num_steps = positive_int("num_steps", num_steps)
        self.grad_steps = positive_int("grad_steps", grad_steps, minimum=0)
        self.step_size = real("step_size", step_size, 0, low_open=True)
        self.momentum = real("momentum", momentum, 0, 1, high_open=True)
        self.t_start = positive_int("t_start", t_start)
        self.t_end = positive_int("t_end", t_end, minimum=0)
        if self.t_end > self.t_start:
            raise SettingError("t_end", t_end, f"need an integer in [0, {self.t_start}] (at most t_start)")
        self.purification_steps = positive_int("purification_steps", purification_steps)

    def check(self, model: DiffusionModel, operator: Operator) -> None:
        """Refuse, before sampling, a start timestep beyond the model's T."""
        if self.t_start > len(model.betas):
            raise SettingError("t_start", self.t_start, f"need an integer in [1, {len(model.betas)}] (the model's "
                                                        f"diffusion steps T)")

    @property
    def schedule(self) -> list[int]:
        """τ_1 ≥ … ≥ τ_K."""
        return purification_schedule(self.num_steps, self.t_start, self.t_end)

    @property
    def model_calls(self) -> int:
        """Network evaluations per sample: Σ_k min(τ_k, P)."""
        return sum(len(ddim_timesteps(tau, self.purification_steps)) for tau in self.schedule)

    def data_consistency(self, model: DiffusionModel, operator: Operator, x: torch.Tensor,
                         y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """J heavy-ball steps on Σ_b ‖A(D(x_b)) − y_b‖² from x (per-sample terms, so samples never couple); returns
        x and the per-sample residual norm at the last gradient evaluation."""
        velocity = torch.zeros_like(x)
        residual = torch.full((x.shape[0],), float("nan"), device=x.device)
        for _ in range(self.grad_steps):
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                loss = operator.loss(model.decode(x_in).float(), y)
                (grad,) = torch.autograd.grad(loss.sum(), x_in)
            velocity = self.momentum * velocity + grad
            x = x - self.step_size * velocity
            residual = loss.detach().sqrt()
        return x, residual

    @torch.no_grad()
    def sample(self, model: DiffusionModel, operator: Operator, y: torch.Tensor, *,
               generators: Sequence[torch.Generator], callback: Callback | None = None) -> SampleResult:
        """One estimate per generator (sample i draws only from ``generators[i]``)."""
        self.check(model, operator)
        shape, device = model.sample_shape, y.device
        tracker = DivergenceTracker(len(generators))
        schedule = self.schedule
        x = torch.zeros((len(generators), *shape), device=device)
        for step, tau in enumerate(schedule):
            x_dc, residual = self.data_consistency(model, operator, x, y)
            x_dc = tracker.check(x_dc, step)
            x = tracker.check(purify(model, x_dc, tau, self.purification_steps,
                                     randn(shape, generators, device=device)), step)
            if callback is not None:
                callback({"step": step, "num_steps": len(schedule), "finite": tracker.finite,
                          "decode": model.decode, "t": tau - 1, "sigma": sigma_of(model, tau - 1), "x_t": x_dc,
                          "x0hat": x, "residual": residual})
        return tracker.result(model.decode(x).float())
