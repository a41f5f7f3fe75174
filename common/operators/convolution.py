"""Depthwise blur shared by the blur tasks: reflect padding, then cross-correlation with a k×k kernel.

    (A x)_{b,c}[i, j] = Σ_{u,v} k_b[u, v] · pad(x_{b,c})[i + u, j + v],   pad = reflect by k//2

The same kernel acts on every channel (no flip: PyTorch ``conv2d`` is a correlation); each sample may
carry its own kernel. The output keeps the input size. A separable kernel k[u, v] = g[u]·g[v] makes the map
A X = M X Mᵀ per channel with the 1-D matrix M of :func:`reflect_correlation_matrix`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from common.errors import image_side
from common.operators._checks import odd_kernel_fits
from common.operators.base import LinearOperator
from common.operators.noise import NoiseModel


def reflect_correlate(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Blur ``x`` (B, C, H, W) with ``kernel`` (k, k) shared by the batch or (B, k, k) / (1, k, k) per sample."""
    batch, channels, height, width = x.shape
    if kernel.dim() == 2:
        kernel = kernel[None]
    size = kernel.shape[-1]
    pad = size // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    kernel = kernel.to(device=x.device, dtype=x.dtype).expand(batch, size, size)
    weight = kernel.repeat_interleave(channels, dim=0)[:, None]          # (B·C, 1, k, k)
    out = F.conv2d(padded.reshape(1, batch * channels, *padded.shape[-2:]), weight, groups=batch * channels)
    return out.reshape(batch, channels, height, width)


def reflect_correlation_matrix(taps: torch.Tensor, size: int) -> torch.Tensor:
    """M (size × size), float64: 1-D correlation with ``taps`` (odd length k) after reflect padding by r = k//2.

        (M x)[i] = Σ_u taps[u] · x[reflect(i + u − r)],   reflect(−j) = j,  reflect(size − 1 + j) = size − 1 − j

    (PyTorch's ``reflect`` mode: the edge pixel is not repeated), the taps of reflected indices added up.
    """
    radius = taps.shape[0] // 2
    index = torch.arange(size)[:, None] + torch.arange(-radius, radius + 1)[None, :]
    index = torch.where(index < 0, -index, index)
    index = torch.where(index >= size, 2 * (size - 1) - index, index)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    return matrix.scatter_add_(1, index, taps.double().expand(size, -1).contiguous())


class ReflectBlur(LinearOperator):
    """y = k ⋆ x + n with :func:`reflect_correlate`; subclasses say where k comes from (:meth:`blur_kernel`).

    Checks the resolution and that the odd k×k window fits the image; the adjoint is autograd's VJP.
    """

    def __init__(self, noise: NoiseModel, resolution: int, kernel_size: int) -> None:
        super().__init__(noise)
        self.resolution = image_side("resolution", resolution)
        self.kernel_size = odd_kernel_fits(kernel_size, self.resolution)

    def blur_kernel(self) -> torch.Tensor:  # pragma: no cover - abstract
        """(k, k) shared by the batch, or (B, k, k) per sample."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reflect_correlate(x, self.blur_kernel())

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return tuple(y.shape)
