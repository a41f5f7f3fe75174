"""Gaussian deblurring: y = k ⋆ x + n with a fixed isotropic Gaussian kernel (61×61, σ = 3 in the papers).

The kernel is the reference's ``scipy.ndimage.gaussian_filter`` (σ = ``intensity``, truncate 4, mode
'reflect') of a centred unit impulse in a k×k array:

    k[i, j] = g[i] · g[j],   g = fold( exp(−t²/(2σ²)) / Σ exp(−t²/(2σ²)) ),   t ∈ {−r…r}, r = ⌊4σ + ½⌋

where ``fold`` adds the taps falling outside the k×k window back by half-sample reflection (nothing
folds when 2r + 1 ≤ k, e.g. 25 taps inside 61). It is computed in float64 and stored as float32; the blur
itself is :func:`~common.operators.convolution.reflect_correlate`. The adjoint is autograd's VJP.
"""
from __future__ import annotations

import math

import torch

from common.operators.convolution import ReflectBlur
from common.operators.noise import NoiseModel
from common.registry import OPERATORS


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """The (size, size) float64 Gaussian kernel described in the module docstring."""
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 / (sigma * sigma) * offsets**2)
    taps = taps / taps.sum()
    # impulse at c = size//2: output i collects tap t where reflect(i + t) == c
    positions = torch.arange(size)[:, None] + offsets.long()[None, :]
    positions = positions % (2 * size)
    positions = torch.where(positions >= size, 2 * size - 1 - positions, positions)
    profile = ((positions == size // 2) * taps).sum(dim=1)
    return torch.outer(profile, profile)


@OPERATORS.register("gaussian_blur")
class GaussianBlur(ReflectBlur):
    """y = k ⋆ x + n, k the Gaussian kernel of std ``intensity`` in a ``kernel_size`` window."""

    def __init__(self, noise: NoiseModel, resolution: int, kernel_size: int = 61, intensity: float = 3.0) -> None:
        super().__init__(noise, resolution, kernel_size)
        if not (isinstance(intensity, (int, float)) and math.isfinite(intensity) and intensity > 0):
            raise ValueError(f"intensity (the Gaussian std in pixels) must be > 0, got {intensity!r}")
        self.intensity = float(intensity)
        self.register_buffer("kernel", gaussian_kernel(self.kernel_size, self.intensity).float())

    def blur_kernel(self) -> torch.Tensor:
        return self.kernel
