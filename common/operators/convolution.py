"""Depthwise blur shared by the blur tasks: reflect padding, then cross-correlation with a k×k kernel.

    (A x)_{b,c}[i, j] = Σ_{u,v} k_b[u, v] · pad(x_{b,c})[i + u, j + v],   pad = reflect by k//2

The same kernel acts on every channel (no flip: PyTorch ``conv2d`` is a correlation); each sample may
carry its own kernel. The output keeps the input size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
