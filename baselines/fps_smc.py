r"""FPS-SMC: Filtering Posterior Sampling with sequential Monte Carlo (Dou & Song, ICLR 2024, "Diffusion posterior
sampling for linear inverse problem solving: a filtering perspective", Algorithms 1–2), linear y = A x0 + σ_y n.

Duplex diffusion. With the same ε as x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε, the noised measurements

    y_t = sqrt(ᾱ_t) y + sqrt(1 − ᾱ_t) A ε = A x_t + sqrt(ᾱ_t) σ_y n,   so   p(y_t | x_t) = N(A x_t, ᾱ_t σ_y² I).

The sequence y_{t_N}, …, y_{t_1} is drawn once, before the particle filter, by a DDIM-type bridge in measurement space
that ends at y (the paper's "backward diffusion" of y; the authors' ``p_sample_loop``), with c ∈ (0, 1] (``c_rate``):

    y_{t_N} = sqrt(ᾱ_{t_N}) y + sqrt(1 − ᾱ_{t_N}) A z,
    y_s = sqrt(ᾱ_s) y + sqrt((1 − c)(1 − ᾱ_s)/(1 − ᾱ_t)) (y_t − sqrt(ᾱ_t) y) + sqrt(c (1 − ᾱ_s)) A z,   z ~ N(0, I)

for consecutive timesteps t > s of DDIM's uniform skip t_N > … > t_1 = 0 (each y_s has the marginal above).

Particle filter over the DDIM chain p_θ(x_s | x_t) = N(μ_t, s_t² I) with s_t² = c (1 − ᾱ_s) and
μ_t = sqrt(ᾱ_s) x̂0 + sqrt((1 − c)(1 − ᾱ_s)) ε̂ (the authors' ``posterior_variance = (1 − ᾱ_prev) c_rate``), with the
observation p(y_s | x_s) = N(A x_s, v_s I), v_s = ᾱ_s σ_y². Per posterior sample, M particles x^(j):

    x_{t_N}^(j) ~ p(x | y_{t_N}) ∝ N(x; 0, I) N(y_{t_N}; A x, v_{t_N} I)                     (equal weights)
    for t = t_N … t_2, s the next timestep:
        x̂0, ε̂ = denoiser(x_t^(j), t);   μ^(j) = sqrt(ᾱ_s) x̂0 + sqrt((1 − c)(1 − ᾱ_s)) ε̂
        proposal  x_s^(j) ~ q(x_s | x_t, y_s) ∝ N(x_s; μ^(j), s_t² I) N(y_s; A x_s, v_s I)    (the optimal proposal)
        weight    w^(j) ∝ p(y_s | x_t^(j)) = N(y_s; A μ^(j), s_t² A Aᵀ + v_s I)
        resample  M indices ~ Multinomial(w)                                                 (every step, as the code)
    x0 = x̂0(x_{t_1}^(1), t_1 = 0)                           (the last step is the plain DDIM step to ᾱ = 1)

The Gaussian pieces need only A and the data proximal map (capability ``prox``: closed form through the SVD where the
operator has one, conjugate gradients otherwise). With γ = v_s / s_t² and prox(x, u) = argmin_z ‖A z − u‖² + γ‖z − x‖²:

* the proposal mean is m = prox(μ, y_s) and a draw is prox(μ + s_t ξ, y_s + sqrt(v_s) ν), ξ, ν ~ N(0, I)
  (perturb-and-optimise: exact for a Gaussian product);
* log w = −½ (y_s − A μ)ᵀ (s_t² A Aᵀ + v_s I)⁻¹ (y_s − A μ) + const = −⟨y_s − A μ, y_s − A m⟩ / (2 v_s) + const, since
  y_s − A m = v_s (s_t² A Aᵀ + v_s I)⁻¹ (y_s − A μ) (the Kalman residual identity); the constant is the same for the
  M particles of one sample. (The authors' code evaluates the same weight as p(y_s | x_s) p(x_s | x_t) / q(x_s) at
  the drawn x_s.)

M = 1 is the paper's FPS (Algorithm 1: no resampling). Model calls per sample: M N (the last step denoises the whole
batch of particles, as the authors' code, and keeps particle 1); memory per sample grows
linearly with M (the denoiser sees B·M images at once). Deviations from the authors' code: DDIM's uniform skip of N
steps instead of their 1000-step chain (num_steps = 1000 gives theirs); y_{t_N} includes sqrt(ᾱ_{t_N}) y (their
code starts the bridge at A z, ᾱ_T ≈ 4e−5 for the linear schedule); the observation variance at step s is ᾱ_s σ_y²
(their code mixes ᾱ_t and ᾱ_{t−1}); the output is particle 1 after the last resampling, as theirs.

Accuracy (docs/accuracy.md, issue-27 rows): the filter treats y_{t_N}, …, y_{t_1} as observations that are independent
given the x_t, but they share the measurement noise n, so p(y | x) is counted once per step; the particle weights are
exact for that model, not for the posterior. On the exact-posterior problems FPS-SMC is under-dispersed at every M
(std ratio 0.4–0.9), its mean error falls with M where the M = 1 chain is biased (inpainting, the mixture's mode
weights) and it never reaches the calibration band.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from common.errors import ConfigError, positive_int, real
from common.models.base import DiffusionModel
from common.operators.base import Operator
from common.random import randn
from common.registry import SAMPLERS
from common.sampling import Callback, DivergenceTracker, SampleResult
from common.sampling.guidance import gaussian_noise_sigma
from common.sampling.vp import abar, denoise, sigma_of, skip_timesteps, transitions


def measurement_bridge(operator: Operator, y: torch.Tensor, steps: Sequence[int], model: DiffusionModel, c: float,
                       generators: Sequence[torch.Generator]) -> dict[int, torch.Tensor]:
    """{t: y_t} for every timestep t of ``steps`` (descending), drawn by the module docstring's bridge; sample i draws
    only from ``generators[i]``."""
    shape = model.sample_shape
    ys: dict[int, torch.Tensor] = {}
    a_first = abar(model, steps[0])
    z = randn(shape, generators, device=y.device)
    ys[steps[0]] = a_first ** 0.5 * y + (1 - a_first) ** 0.5 * operator(z)
    for t, s in zip(steps, steps[1:]):
        a_t, a_s = abar(model, t), abar(model, s)
        z = randn(shape, generators, device=y.device)
        keep = ((1 - c) * (1 - a_s) / (1 - a_t)) ** 0.5
        ys[s] = a_s ** 0.5 * y + keep * (ys[t] - a_t ** 0.5 * y) + (c * (1 - a_s)) ** 0.5 * operator(z)
    return ys


def gaussian_update(operator: Operator, mu: torch.Tensor, y_s: torch.Tensor, s2: float, v: float,
                    xi: torch.Tensor, nu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One particle per sample (B, …): (a draw of q(x_s | x_t, y_s) ∝ N(μ, s2 I) N(y_s; A x, v I), its log weight
    log p(y_s | x_t) up to a per-sample constant), with ξ, ν the standard normal draws (module docstring)."""
    gamma = v / s2
    mean = operator.prox(mu, y_s, gamma)
    draw = operator.prox(mu + s2 ** 0.5 * xi, y_s + v ** 0.5 * nu, gamma)
    log_w = -((y_s - operator(mu)) * (y_s - operator(mean))).flatten(1).sum(1) / (2 * v)
    return draw, log_w


@SAMPLERS.register("fps_smc")
class FPSSMC:
    """FPS-SMC (module docstring): ``num_steps`` DDIM steps, ``num_particles`` M particles per posterior sample,
    ``c_rate`` c ∈ (0, 1] (the share of fresh noise in each step)."""

    requires: ClassVar[frozenset[str]] = frozenset({"linear", "prox"})
    spaces: ClassVar[frozenset[str]] = frozenset({"pixel"})

    def __init__(self, num_steps: int = 1000, num_particles: int = 5, c_rate: float = 0.95) -> None:
        self.num_steps = positive_int("num_steps", num_steps)
        self.num_particles = positive_int("num_particles", num_particles, maximum=100_000)
        self.c_rate = real("c_rate", c_rate, 0, 1, low_open=True)

    @property
    def model_calls(self) -> int:
        """Network evaluations per posterior sample: M per step (the last step denoises every particle)."""
        return self.num_particles * self.num_steps

    def check(self, model: DiffusionModel, operator: Operator) -> None:
        """Before sampling: a step count the model's T allows, Gaussian measurement noise with σ_y > 0."""
        skip_timesteps(self.num_steps, len(model.betas))
        if gaussian_noise_sigma(operator, "fps_smc") <= 0:
            raise ConfigError("sampler 'fps_smc' needs measurement noise sigma > 0 (its observation model "
                              "p(y_t | x_t) = N(A x_t, abar_t sigma_y^2 I) is degenerate at sigma_y = 0)")

    @torch.no_grad()
    def sample(self, model: DiffusionModel, operator: Operator, y: torch.Tensor, *,
               generators: Sequence[torch.Generator], callback: Callback | None = None) -> SampleResult:
        """One posterior sample per generator; its M particles draw only from that generator."""
        self.check(model, operator)
        sigma_y = gaussian_noise_sigma(operator, "fps_smc")
        steps = skip_timesteps(self.num_steps, len(model.betas))
        shape, device, m_count, batch = model.sample_shape, y.device, self.num_particles, len(generators)
        c = self.c_rate
        tracker = DivergenceTracker(batch)
        ys = measurement_bridge(operator, y, steps, model, c, generators)

        def particle_noise(like_shape: Sequence[int]) -> torch.Tensor:
            """(B, M, *like_shape) standard normals, sample i's from generators[i]."""
            return randn((m_count, *like_shape), generators, device=device)

        # x_{t_N} ~ p(x | y_{t_N}) with the N(0, I) prior: prox with γ = v / 1
        v_first = abar(model, steps[0]) * sigma_y ** 2
        xi, nu = particle_noise(shape), particle_noise(y.shape[1:])
        x = torch.stack([gaussian_update(operator, torch.zeros_like(xi[:, j]), ys[steps[0]], 1.0, v_first,
                                         xi[:, j], nu[:, j])[0] for j in range(m_count)], 1)
        for step, (t, s) in enumerate(transitions(steps)):
            x0hat, eps = denoise(model, x.flatten(0, 1), t)
            x0hat, eps = x0hat.view_as(x), eps.view_as(x)
            if s < 0:  # the last step: DDIM to ᾱ = 1 is x̂0 (particle 1 after the last resampling)
                out = tracker.check(x0hat[:, 0], step)
                if callback is not None:
                    callback({"step": step, "num_steps": len(steps), "finite": tracker.finite,
                              "decode": model.decode, "t": t, "sigma": sigma_of(model, t), "x_t": x[:, 0],
                              "x0hat": x0hat[:, 0]})
                return tracker.result(model.decode(out).float())
            a_s = abar(model, s)
            s2, v = c * (1 - a_s), a_s * sigma_y ** 2
            mu = a_s ** 0.5 * x0hat + ((1 - c) * (1 - a_s)) ** 0.5 * eps
            xi, nu = particle_noise(shape), particle_noise(y.shape[1:])
            draws, log_w = zip(*(gaussian_update(operator, mu[:, j], ys[s], s2, v, xi[:, j], nu[:, j])
                                 for j in range(m_count)))
            proposed, log_w = torch.stack(draws, 1), torch.stack(log_w, 1)
            x = self.resample(proposed, log_w, generators)
            flat_ok = tracker.check(x.flatten(1), step)
            x = flat_ok.view_as(x)
            if callback is not None:
                callback({"step": step, "num_steps": len(steps), "finite": tracker.finite, "decode": model.decode,
                          "t": t, "sigma": sigma_of(model, t), "x_t": x[:, 0], "x0hat": x0hat[:, 0]})
        raise AssertionError("unreachable: the schedule ends with s = -1")  # pragma: no cover

    def resample(self, particles: torch.Tensor, log_w: torch.Tensor,
                 generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Multinomial resampling of (B, M, …) particles by their (B, M) log weights, indices of sample i drawn from
        ``generators[i]`` (M = 1: unchanged, no draw)."""
        if self.num_particles == 1:
            return particles
        weights = torch.softmax(log_w.double(), dim=1)
        weights = torch.where(torch.isfinite(weights), weights, 1.0)  # a diverged sample: keep uniform weights
        index = torch.stack([torch.multinomial(w.to(g.device), self.num_particles, replacement=True, generator=g)
                             for w, g in zip(weights, generators)]).to(particles.device)
        return torch.gather(particles, 1, index.view(*index.shape, *[1] * (particles.ndim - 2)).expand_as(particles))
