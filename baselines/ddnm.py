r"""DDNM / DDNM+: Zero-Shot Image Restoration Using Denoising Diffusion Null-Space Model (Wang, Yu & Zhang, ICLR 2023).

DDNM keeps the denoiser's estimate in the null space of A and replaces its range-space part by the measurement:
x̂0|t = x0|t − A⁺(A x0|t − y) (eq. 13). DDNM+ (§3.3) handles noisy y = A x + σ_y n by a scaled correction and a
matching noise adjustment (eq. 17–19), x̂0|t = x0|t − Σ_t A⁺(A x0|t − y), with Σ_t = V diag(λ_t) Vᵀ and the noise
covariance Φ_t = V diag(γ_t) Vᵀ chosen so that the noise ȳ carries plus the noise added equals the noise level the
next state must have. In the EDM-scaled VP view of :mod:`common.sampling.vp` (x̄ = x/sqrt(ᾱ) = x0 + σ ε, σ = sqrt(1/ᾱ − 1)),
a DDIM step with parameter η from σ to σ' is, following the authors' code (wyhuai/DDNM functions/svd_ddnm.py
``ddnm_plus_diffusion`` with the ``Lambda``/``Lambda_noise`` of functions/svd_operators.py),

    x̂0, ε̂ = denoiser(x_t, t),   x̂0|t = x̂0 − Σ_t A⁺(A x̂0 − y),
    x_{t'} = sqrt(ᾱ_{t'}) (x̂0|t + V [d1 ⊙ Vᵀz + d2 ⊙ Vᵀε̂]),   z ~ N(0, I)

with, per right-singular direction i (singular value s_i):

    s_i = 0:                  λ_i = 1 (no correction there), d1 = η σ', d2 = sqrt(1 − η²) σ'        (plain DDIM)
    σ' ≥ σ_y / s_i:           λ_i = 1,                         d1 = sqrt(σ'² − σ_y²/s_i²), d2 = 0
    σ' < σ_y / s_i:           λ_i = sqrt(1 − η²) s_i σ' / σ_y, d1 = η σ',                  d2 = 0
    σ_y = 0 (plain DDNM):     λ_i = 1,                         d1 = η σ', d2 = sqrt(1 − η²) σ' for every i

(the paper's eq. 19, λ = σ_t/(a_t σ_y) and γ = 0 below the crossing, is the η = 0 case of the third row; the authors'
code, which this follows, splits the remaining noise between ȳ (weight sqrt(1 − η²)) and fresh noise (η σ'); for
σ_y > 0 the per-direction rule coincides with DDRM's at η_b = 1, see :mod:`baselines.ddrm`). x_T ~ N(0, I).

Σ_t and Φ_t need the SVD. When the operator offers one (capability ``svd``), it is used. With only A⁺ this module
uses the scalar form of the paper's "simplified" DDNM+ (Σ_t = λ_t I), i.e. the table above with every nonzero
singular value taken as 1, which is exact when A Aᵀ = I (inpainting): the correction is λ_t A⁺(A x̂0 − y), the
range-space noise (projector P = A⁺A) gets the weights (d1, d2) of s = 1 and the null space plain DDIM noise,

    noise = n + P (d1 z + d2 ε̂ − n),   n = η σ' z + sqrt(1 − η²) σ' ε̂.

The authors' simplified code instead scales the whole noise by γ_t, including the null space (and spells σ_t as
sqrt(1 − ᾱ²) and a_t as ᾱ); we keep the null space at its DDIM noise so that the scalar path equals the SVD path
wherever the nonzero singular values are 1 (tested on inpainting).

Time travel (§3.3, RePaint's schedule; off by default, as in the authors' configs: travel_length = 1,
travel_repeat = 1): after arriving at step index k (a multiple of L, k < N − L), the chain jumps back L steps,
x_{t_{k+L}} ~ q(x_{t_{k+L}} | x_{t_k}) = N(sqrt(ᾱ_{k+L}/ᾱ_k) x_{t_k}, (1 − ᾱ_{k+L}/ᾱ_k) I), and descends again,
r − 1 times per such k; this costs (r − 1)·L extra model calls per jump. (The authors' code re-noises the last
x0|t from scratch at each backward step instead of diffusing the current x_t forward, as the paper writes it.)
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from baselines.ddrm import Spectrum
from common.errors import SettingError, positive_int, real
from common.models.base import DiffusionModel
from common.operators.base import Operator
from common.random import randn
from common.registry import SAMPLERS
from common.sampling import Callback, DivergenceTracker, SampleResult
from common.sampling.guidance import gaussian_noise_sigma
from common.sampling.vp import abar, denoise, sigma_of, skip_timesteps


def travel_schedule(num_steps: int, travel_length: int, travel_repeat: int) -> list[int]:
    """RePaint's jump schedule of step indices: N − 1, N − 2, …, 0, −1 (−1 = the clean end), where after arriving at
    each k in range(0, N − L, L) the list climbs back k + 1, …, k + L and descends again, r − 1 times."""
    jumps = {k: travel_repeat - 1 for k in range(0, num_steps - travel_length, travel_length)}
    schedule, k = [], num_steps
    while k >= 1:
        k -= 1
        schedule.append(k)
        if jumps.get(k, 0) > 0:
            jumps[k] -= 1
            schedule.extend(range(k + 1, k + travel_length + 1))
            k += travel_length
    return schedule + [-1]


def ddnm_weights(s: torch.Tensor | float, sigma_next: float, sigma_y: float,
                 eta: float) -> tuple[torch.Tensor | float, torch.Tensor | float, torch.Tensor | float]:
    """(λ, d1, d2) of the module docstring's table for range-space directions with singular values s > 0."""
    if sigma_y == 0:
        return 1.0, eta * sigma_next, (1 - eta ** 2) ** 0.5 * sigma_next
    s = torch.as_tensor(s, dtype=torch.float32)
    below = sigma_next < sigma_y / s
    lam = torch.where(below, (1 - eta ** 2) ** 0.5 * s * sigma_next / sigma_y, 1.0)
    d1 = torch.where(below, eta * sigma_next, (sigma_next ** 2 - (sigma_y / s) ** 2).clamp_min(0).sqrt())
    return lam, d1, torch.zeros_like(d1)


@SAMPLERS.register("ddnm")
class DDNM:
    """DDNM+ (module docstring): ``num_steps`` DDIM steps (authors: 100) with η (0.85), time travel of length
    ``travel_length`` repeated ``travel_repeat`` times (authors: 1 and 1, i.e. off)."""

    requires: ClassVar[frozenset[str]] = frozenset({"pinv"})
    spaces: ClassVar[frozenset[str]] = frozenset({"pixel"})

    def __init__(self, num_steps: int = 100, eta: float = 0.85, travel_length: int = 1,
                 travel_repeat: int = 1) -> None:
        self.num_steps = positive_int("num_steps", num_steps)
        self.eta = real("eta", eta, 0, 1)
        self.travel_length = positive_int("travel_length", travel_length)
        self.travel_repeat = positive_int("travel_repeat", travel_repeat)
        if self.travel_repeat > 1 and self.travel_length >= self.num_steps:
            raise SettingError("travel_length", travel_length, f"need an integer in [1, {self.num_steps - 1}] "
                                                               f"(below num_steps) when travel_repeat > 1")
        self.schedule = travel_schedule(self.num_steps, self.travel_length, self.travel_repeat)

    def check(self, model: DiffusionModel, operator: Operator) -> None:
        """Refuse more steps than the model's T and non-Gaussian measurement noise, before sampling."""
        skip_timesteps(self.num_steps, len(model.betas))
        gaussian_noise_sigma(operator, "ddnm")

    @torch.no_grad()
    def sample(self, model: DiffusionModel, operator: Operator, y: torch.Tensor, *,
               generators: Sequence[torch.Generator], callback: Callback | None = None) -> SampleResult:
        """Posterior samples, one per generator (NaN where a chain diverged)."""
        self.check(model, operator)
        sigma_y = gaussian_noise_sigma(operator, "ddnm")
        shape, device = model.sample_shape, y.device
        spectrum = Spectrum.of(operator, y, shape) if "svd" in operator.capabilities else None
        timesteps = skip_timesteps(self.num_steps, len(model.betas))[::-1]  # ascending: index k -> timestep
        num_calls = sum(j < i for i, j in zip(self.schedule, self.schedule[1:]))
        tracker = DivergenceTracker(len(generators))
        x_t = randn(shape, generators, device=device)
        call = 0
        for i, j in zip(self.schedule, self.schedule[1:]):
            t, t_next = timesteps[i], (timesteps[j] if j >= 0 else -1)
            z = randn(shape, generators, device=device)
            if j > i:  # time travel: diffuse forward from t to t_next
                ratio = abar(model, t_next) / abar(model, t)
                x_t = ratio ** 0.5 * x_t + (1 - ratio) ** 0.5 * z
                continue
            x0hat, eps = denoise(model, x_t, t)
            sigma_next = sigma_of(model, t_next)
            if spectrum is not None:
                corrected = self._spectral_step(spectrum, x0hat, eps, z, sigma_next, sigma_y)
            else:
                corrected = self._scalar_step(operator, y, x0hat, eps, z, sigma_next, sigma_y)
            x_next = tracker.check(abar(model, t_next) ** 0.5 * corrected, call)
            if callback is not None:
                callback({"step": call, "num_steps": num_calls, "t": t, "sigma": sigma_of(model, t), "x_t": x_t,
                          "x0hat": x0hat, "residual": (operator(x0hat) - y).flatten(1).norm(dim=1),
                          "finite": tracker.finite, "decode": model.decode})
            x_t, call = x_next, call + 1
        return tracker.result(x_t)

    def _spectral_step(self, spectrum: Spectrum, x0hat: torch.Tensor, eps: torch.Tensor, z: torch.Tensor,
                       sigma_next: float, sigma_y: float) -> torch.Tensor:
        """x̂0|t + V[d1 ⊙ Vᵀz + d2 ⊙ Vᵀε̂] with the per-direction (λ, d1, d2) of the table (SVD path)."""
        svd, observed = spectrum.svd, spectrum.observed
        lam, d1, d2 = ddnm_weights(torch.where(observed, spectrum.s, 1), sigma_next, sigma_y, self.eta)
        null_d1, null_d2 = self.eta * sigma_next, (1 - self.eta ** 2) ** 0.5 * sigma_next
        c0 = svd.vt(x0hat)
        corrected = torch.where(observed, c0 - lam * (c0 - spectrum.ybar), c0)
        noise = (torch.where(observed, d1, null_d1) * svd.vt(z)
                 + torch.where(observed, d2, null_d2) * svd.vt(eps))
        return svd.v(corrected + noise)

    def _scalar_step(self, operator: Operator, y: torch.Tensor, x0hat: torch.Tensor, eps: torch.Tensor,
                     z: torch.Tensor, sigma_next: float, sigma_y: float) -> torch.Tensor:
        """x̂0 − λ A⁺(A x̂0 − y) + n + P(d1 z + d2 ε̂ − n) with the weights of s = 1 (A⁺-only path)."""
        lam, d1, d2 = ddnm_weights(1.0, sigma_next, sigma_y, self.eta)
        corrected = x0hat - lam * operator.pinv(operator(x0hat) - y)
        ddim_noise = self.eta * sigma_next * z + (1 - self.eta ** 2) ** 0.5 * sigma_next * eps
        if sigma_y == 0:  # the range-space weights equal the DDIM ones
            return corrected + ddim_noise
        difference = d1 * z + d2 * eps - ddim_noise
        return corrected + ddim_noise + operator.pinv(operator(difference))
