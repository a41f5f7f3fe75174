"""Random motion-blur kernels: a camera-shake trajectory rasterised into a k×k PSF.

Same algorithm and draw order as the reference's ``motionblur`` kernels (size S, intensity I, eps = 0.1),
on a 2× canvas of width W = 2S with diagonal D = √(2W²):

1. path budget  L = ¾·D·(U(0,1) + U(0, I²));
2. step lengths s = Beta(1, 30)·(1 − I + eps)·D, kept only when s < L, until Σ s ≥ L (N steps);
3. headings     θ₁ ~ U(−a, a) with a ~ U(0, I·π) and a jitter probability q ~ Beta(2, 20); then each
                |θₖ| ~ Triangular(0, I·a, a + eps), with the sign of θₖ₋₁ flipped with probability q;
4. points       pₖ = Σ_{j≤k} sⱼ e^{iθⱼ}, centred on their mean, rotated by e^{iφ}, φ ~ U(0, π), moved
                to the canvas centre (W/2, W/2) (real part = column, imaginary part = row);
5. raster       a white polyline of width ⌊D/150⌋ (at least 1) through the points, Gaussian blur of
                radius ⌊D/100⌋, Lanczos resize to S×S, 8-bit grey, normalised to sum 1.

The draws come from any :class:`RandomSource`. :class:`TorchRandomSource` (the one the operators use)
draws from a ``torch.Generator``; a ``numpy.random.RandomState`` also satisfies the protocol and then
reproduces the reference kernels of the same seed bit for bit (used only in the tests).
Rasterisation uses Pillow, as the reference does.
"""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch

from common.errors import ConfigError

EPS = 0.1


class RandomSource(Protocol):
    """Scalar draws used by the generator (numpy's legacy ``RandomState`` signatures)."""

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float: ...

    def beta(self, a: float, b: float) -> float: ...

    def triangular(self, left: float, mode: float, right: float) -> float: ...


class TorchRandomSource:
    """:class:`RandomSource` on a ``torch.Generator`` (float64 uniforms)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def _rand(self, n: int = 1) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, device=self.generator.device, dtype=torch.float64).cpu()

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        return low + (high - low) * float(self._rand()[0])

    def beta(self, a: float, b: float) -> float:
        """Beta(a, b) for integer shapes: the a-th smallest of a + b − 1 uniforms (an exact identity)."""
        if int(a) != a or int(b) != b or a < 1 or b < 1:
            raise ConfigError(f"TorchRandomSource.beta needs integer shapes >= 1, got ({a}, {b})")
        return float(self._rand(int(a + b) - 1).sort().values[int(a) - 1])

    def triangular(self, left: float, mode: float, right: float) -> float:
        """Inverse-CDF draw from the triangular distribution on [left, right] with peak at ``mode``."""
        u = float(self._rand()[0])
        width = right - left
        if u < (mode - left) / width:
            return left + math.sqrt(u * width * (mode - left))
        return right - math.sqrt((1.0 - u) * width * (right - mode))


def _trajectory(size: int, intensity: float, source: RandomSource) -> list[tuple[float, float]]:
    """Steps 1–4: the N trajectory points (column, row) on the 2× canvas."""
    width = 2 * size
    diagonal = (width**2 + width**2) ** 0.5
    budget = 0.75 * diagonal * (source.uniform() + source.uniform(0, intensity**2))
    steps: list[float] = []
    total = 0.0
    while total < budget:
        step = source.beta(1, 30) * (1 - intensity + EPS) * diagonal
        if step < budget:
            steps.append(step)
            total += step
    max_angle = source.uniform(0, intensity * math.pi)
    jitter = source.beta(2, 20)
    angles = [source.uniform(-max_angle, max_angle)]
    while len(angles) < len(steps):
        magnitude = source.triangular(0, intensity * max_angle, max_angle + EPS)
        sign = -np.sign(angles[-1]) if source.uniform() < jitter else np.sign(angles[-1])
        angles.append(magnitude * sign)
    points = np.cumsum(np.asarray(steps) * np.exp(1j * np.asarray(angles)))
    points -= np.cumsum(points)[-1] / len(points)                       # sequential mean (centre of mass)
    points *= np.exp(1j * source.uniform(0, math.pi))
    points += (width + 1j * width) / 2
    return [(float(p.real), float(p.imag)) for p in points]


def motion_kernel(size: int, intensity: float, source: RandomSource) -> torch.Tensor:
    """One (size, size) float32 motion-blur kernel (non-negative, sums to 1) from ``source``."""
    from PIL import Image, ImageDraw, ImageFilter

    width = 2 * size
    diagonal = (width**2 + width**2) ** 0.5
    canvas = Image.new("RGB", (width, width))
    ImageDraw.Draw(canvas).line(_trajectory(size, intensity, source), fill=(255, 255, 255),
                                width=max(1, int(diagonal / 150)))
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=int(diagonal * 0.01)))
    canvas = canvas.resize((size, size), resample=Image.LANCZOS).convert("L")
    kernel = torch.from_numpy(np.asarray(canvas, dtype=np.float32).copy())
    return kernel / kernel.sum()
