"""Depthwise blur shared by the blur tasks: reflect padding, then cross-correlation with a k×k kernel.

    (A x)_{b,c}[i, j] = Σ_{u,v} k_b[u, v] · pad(x_{b,c})[i + u, j + v],   pad = reflect by k//2

The same kernel acts on every channel (no flip: PyTorch ``conv2d`` is a correlation); each sample may
carry its own kernel. The output keeps the input size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from common.operators._checks import odd_kernel_fits, positive_int
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


class ReflectBlur(LinearOperator):
    """y = k ⋆ x + n with :func:`reflect_correlate`; subclasses say where k comes from (:meth:`blur_kernel`).

    Checks the resolution and that the odd k×k window fits the image; the adjoint is autograd's VJP.
    """

    def __init__(self, noise: NoiseModel, resolution: int, kernel_size: int) -> None:
        super().__init__(noise)
        self.resolution = positive_int("resolution", resolution)
        self.kernel_size = odd_kernel_fits(kernel_size, self.resolution)

    def blur_kernel(self) -> torch.Tensor:  # pragma: no cover - abstract
        """(k, k) shared by the batch, or (B, k, k) per sample."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reflect_correlate(x, self.blur_kernel())

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return tuple(y.shape)
