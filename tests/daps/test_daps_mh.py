r"""DAPS's Metropolis–Hastings kernel samples its target exactly.

With a linear A the inner target of DAPS (Gaussian approximation of p(x0 | x_t), our un-halved data term)

    π(x) ∝ exp(−‖A x − y‖²/τ² − ‖x − x̂0‖²/(2σ²))

is Gaussian with precision Λ = 2AᵀA/τ² + I/σ² and mean Λ⁻¹(2Aᵀy/τ² + x̂0/σ²). For a diagonal A (a mask m) each
pixel is independent: Λ_i = 2 m_i/τ² + 1/σ². Random-walk MH is exact for π, so after burn-in n independent chains
give per-pixel means with standard error sqrt(1/(Λ_i n)) (z-scores: |z| < 4.5 over 12 pixels) and per-pixel
variances whose ratio to 1/Λ_i has standard error about sqrt(2/(n−1)) = 0.09 at n = 256 (accepted within 0.35,
4 standard errors). A kernel that halved the data term (as the reference's MH does) targets Λ_i = m_i/τ² + 1/σ²:
on observed pixels its variance ratio would be (8 + 4)/(4 + 4) = 1.5, outside the bound.
"""
from __future__ import annotations

import torch

from common.models.gaussian import GaussianPrior
from common.operators.base import LinearOperator
from common.operators.noise import GaussianNoise
from common.random import make_generator
from daps.mcmc import MCMCSampler, MeasurementFit

SIGMA, TAU, N = 0.5, 0.5, 256


class Mask(LinearOperator):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(GaussianNoise(0.0))
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def test_metropolis_hastings_samples_its_gaussian_target():
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
    operator = Mask(mask)
    model = GaussianPrior(2, [0.0] * 3, [0.1] * 3, [2.0] * 3)  # decode only: MH uses the Gaussian approximation
    x0hat = torch.linspace(-0.5, 0.5, 12).reshape(1, 3, 2, 2).expand(N, -1, -1, -1)
    y = torch.full((N, 3, 2, 2), 0.8) * mask
    precision = 2 * mask / TAU ** 2 + 1 / SIGMA ** 2
    mean = (2 * mask * y[:1] / TAU ** 2 + x0hat[:1] / SIGMA ** 2) / precision
    chain = MCMCSampler(num_steps=3000, lr=0.04, tau=TAU, lr_min_ratio=1.0, mc_algo="mh")
    x, _ = chain.sample(model, MeasurementFit(model, operator, y), x0hat, x0hat, torch.tensor(SIGMA), 0.0,
                        [make_generator(9, i) for i in range(N)])
    variance = (1 / precision).expand_as(mean)
    z = (x.mean(0) - mean[0]) / (variance[0] / N).sqrt()
    assert z.abs().max() < 4.5, float(z.abs().max())
    ratio = x.var(0) / variance[0]
    assert (ratio - 1).abs().max() < 0.35, ratio.flatten().tolist()
