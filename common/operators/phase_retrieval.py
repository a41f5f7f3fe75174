"""Phase retrieval: y = |F P x₀₁| + n, the Fourier magnitude of the zero-padded [0, 1] image.

    x₀₁ = x/2 + ½,   P = zero padding by p = ⌊oversample/8 · n⌋ pixels on every side (64 at n = 256, 2×),
    F = centred orthonormal 2-D DFT (ifftshift → fft2(norm="ortho") → fftshift)

per sample and channel; the output is (B, C, n + 2p, n + 2p). The noise is added to the magnitude,
which can therefore become negative (as in the reference). Non-linear: no adjoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from common.errors import image_side, real
from common.operators.base import Operator
from common.operators.noise import NoiseModel
from common.registry import OPERATORS

#: the largest oversampling accepted: padding p = n on every side, measurements of 3n × 3n
MAX_OVERSAMPLE = 8.0


@OPERATORS.register("phase_retrieval")
class PhaseRetrieval(Operator):
    """y = |F pad(x/2 + ½)| + n."""

    #: declares the map above (``pad`` pixels per side), for Fourier phase-retrieval solvers (HIO)
    capabilities = frozenset({"fourier_magnitude"})

    def __init__(self, noise: NoiseModel, resolution: int, oversample: float = 2.0) -> None:
        super().__init__(noise)
        self.resolution = image_side("resolution", resolution)
        self.oversample = real("oversample", oversample, 0.0, MAX_OVERSAMPLE)
        self.pad = int(self.oversample / 8.0 * self.resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x * 0.5 + 0.5, (self.pad,) * 4)
        complex_dtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        spectrum = torch.fft.fftshift(
            torch.fft.fft2(torch.fft.ifftshift(padded.to(complex_dtype), dim=(-2, -1)), norm="ortho"),
            dim=(-2, -1))
        return spectrum.abs()
