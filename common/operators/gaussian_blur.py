"""Gaussian deblurring: y = k ⋆ x + n with a fixed isotropic Gaussian kernel (61×61, σ = 3 in the papers).

The kernel is the reference's ``scipy.ndimage.gaussian_filter`` (σ = ``intensity``, truncate 4, mode
'reflect') of a centred unit impulse in a k×k array:

    k[i, j] = g[i] · g[j],   g = fold( exp(−t²/(2σ²)) / Σ exp(−t²/(2σ²)) ),   t ∈ {−r…r}, r = ⌊4σ + ½⌋

where ``fold`` adds the taps falling outside the k×k window back by half-sample reflection (nothing
folds when 2r + 1 ≤ k, e.g. 25 taps inside 61). It is computed in float64 and stored as float32.

The kernel is separable, so A X = M X Mᵀ per channel with M the 1-D reflect-padded correlation with g
(:func:`~common.operators.convolution.reflect_correlation_matrix`), banded: M[i, j] = 0 for |i − j| > 4σ + ½
(12 for σ = 3), however large the window. ``method: fast`` (the default) computes exactly that product
(:func:`~common.operators.convolution.banded_sandwich`, M in float64 cast to the input's dtype, VJP Mᵀ G M);
``method: direct`` correlates with the stored float32 k×k kernel
(:func:`~common.operators.convolution.reflect_correlate`, the reference's arithmetic, 3,721 multiply-adds per
pixel at k = 61; adjoint by autograd). A = M ⊗ M has the Kronecker SVD of M
(:class:`~common.operators.linalg.KroneckerSVD`), exact for ``fast`` in any dtype; the stored float32 kernel is the
rounding of g gᵀ (not exactly rank one), so the two methods agree to float32 precision.
"""
from __future__ import annotations

import torch

from common.errors import MAX_RESOLUTION, real
from common.operators.base import SeparableOperator
from common.operators.convolution import ReflectBlur, band_radius, banded_sandwich, reflect_correlation_matrix
from common.operators.noise import NoiseModel
from common.registry import OPERATORS


def gaussian_profile(size: int, sigma: float) -> torch.Tensor:
    """The (size,) float64 folded 1-D profile g of the module docstring."""
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 / (sigma * sigma) * offsets**2)
    taps = taps / taps.sum()
    # impulse at c = size//2: output i collects tap t where reflect(i + t) == c
    positions = torch.arange(size)[:, None] + offsets.long()[None, :]
    positions = positions % (2 * size)
    positions = torch.where(positions >= size, 2 * size - 1 - positions, positions)
    return ((positions == size // 2) * taps).sum(dim=1)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """The (size, size) float64 Gaussian kernel k = g gᵀ described in the module docstring."""
    profile = gaussian_profile(size, sigma)
    return torch.outer(profile, profile)


@OPERATORS.register("gaussian_blur")
class GaussianBlur(ReflectBlur, SeparableOperator):
    """y = k ⋆ x + n, k the Gaussian kernel of std ``intensity`` in a ``kernel_size`` window."""

    def __init__(self, noise: NoiseModel, resolution: int, kernel_size: int = 61, intensity: float = 3.0,
                 method: str = "fast") -> None:
        super().__init__(noise, resolution, kernel_size, method)
        # the Gaussian std in pixels: beyond the largest image side the kernel is flat anyway
        self.intensity = real("intensity", intensity, 0.0, MAX_RESOLUTION, low_open=True)
        self.register_buffer("kernel", gaussian_kernel(self.kernel_size, self.intensity).float())
        matrix = reflect_correlation_matrix(gaussian_profile(self.kernel_size, self.intensity), self.resolution)
        self.register_buffer("band_matrix", matrix, persistent=False)  # M in float64 (derived: not in state_dict)
        self.band = band_radius(matrix)
        self.set_separable_map(matrix)

    def blur_kernel(self) -> torch.Tensor:
        return self.kernel

    def fast_blur(self, x: torch.Tensor) -> torch.Tensor:
        """A X = M X Mᵀ through the band of M."""
        return banded_sandwich(x, self.band_matrix, self.band)

    def fast_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Aᵀ Y = Mᵀ Y M (Mᵀ has the same band)."""
        return banded_sandwich(y, self.band_matrix.T, self.band)
