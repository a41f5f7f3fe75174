"""Measurement noise models n in y = A(x) + n (values in [-1, 1] image units, as in both papers)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

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
        if sigma < 0:
            raise ValueError(f"noise sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, clean: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        if self.sigma == 0:
            return clean
        return clean + self.sigma * randn(clean.shape[1:], generators, device=clean.device, dtype=clean.dtype)
