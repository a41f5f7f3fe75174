"""Measurement noise models n in y = A(x) + n (values in [-1, 1] image units, as in both papers)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from common.errors import MAX_POISSON_RATE, real
from common.random import randn
from common.registry import NOISES


class NoiseModel(nn.Module):
    """Adds noise to a clean measurement batch, sample i using ``generators[i]``."""

    def forward(self, clean: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@NOISES.register("gaussian")
class GaussianNoise(NoiseModel):
    """y = A(x) + σ n, n ~ N(0, I). σ is the std in [-1, 1] units (half of it in [0, 1] units)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = real("sigma", sigma, 0.0)

    def forward(self, clean: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        if self.sigma == 0:
            return clean
        return clean + self.sigma * randn(clean.shape[1:], generators, device=clean.device, dtype=clean.dtype)


@NOISES.register("poisson")
class PoissonNoise(NoiseModel):
    """DPS's Poisson (shot) noise at ``rate`` photons per 8-bit level:

        x₀₁ = clip((A(x) + 1)/2, 0, 1),   y₀₁ = Poisson(255·rate·x₀₁) / (255·rate),   y = clip(2y₀₁ − 1, −1, 1)

    so E[y₀₁] = x₀₁ and Var[y₀₁] = x₀₁/(255·rate) (before the final clip). Meant for measurements in
    [−1, 1]; the counts of sample i are drawn from ``generators[i]``.
    """

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = real("rate", rate, 0.0, MAX_POISSON_RATE, low_open=True)

    def forward(self, clean: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        intensity = ((clean + 1.0) / 2.0).clamp(0.0, 1.0) * (255.0 * self.rate)
        counts = torch.stack([
            torch.poisson(sample.to(g.device), generator=g).to(clean.device)
            for sample, g in zip(intensity, generators)])
        return (counts / (255.0 * self.rate) * 2.0 - 1.0).clamp(-1.0, 1.0)
