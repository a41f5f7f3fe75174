"""Depthwise blur shared by the blur tasks: reflect padding, then cross-correlation with a k×k kernel.

    (A x)_{b,c}[i, j] = Σ_{u,v} k_b[u, v] · pad(x_{b,c})[i + u, j + v],   pad = reflect by r = k//2

The same kernel acts on every channel (no flip: PyTorch ``conv2d`` is a correlation); each sample may
carry its own kernel. The output keeps the input size. Three ways compute the same map (operator setting
``method``: ``direct`` is the first, ``fast`` the cheaper of the others), equal up to float rounding:

* :func:`reflect_correlate`, the reference's dense correlation (``conv2d``): k² multiply-adds per pixel;
* :func:`reflect_correlate_fft`, the FFT of the padded image: O(log N) per pixel whatever k (chosen by
  :func:`fft_pays` for a dense kernel, e.g. a motion kernel);
* :func:`banded_sandwich` for a separable kernel k[u, v] = g[u]·g[v]: A X = M X Mᵀ per channel with the 1-D
  matrix M of :func:`reflect_correlation_matrix`, banded (M[i, j] = 0 for |i − j| > r).

Every path is differentiable with the exact adjoint of the map it computes (autograd's VJP; Aᵀ G = Mᵀ G M for
the banded one).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from common.errors import image_side, one_of
from common.operators._checks import odd_kernel_fits
from common.operators.base import LinearOperator
from common.operators.noise import NoiseModel

#: the operator setting ``method``: ``direct`` = :func:`reflect_correlate` (the reference's arithmetic, bit for bit),
#: ``fast`` = the separable or FFT form (the same map up to float rounding)
METHODS = ("direct", "fast")
#: :func:`fft_pays` takes the FFT once k² > FFT_CROSSOVER · log₂(L_h·L_w): the measured crossover of forward + VJP
#: on one CPU thread (k = 11 at 256 px, k = 7 at 64 px); either side is the same map, so it only affects speed
FFT_CROSSOVER = 8.0
#: the fewest rows per block of :func:`banded_sandwich` (smaller products lose more to overhead than they save)
MIN_BAND_BLOCK = 64


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


def fft_size(n: int) -> int:
    """The smallest L ≥ n with no prime factor above 5 (sizes the FFT handles fastest)."""
    while True:
        rest = n
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return n
        n += 1


def reflect_correlate_fft(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """:func:`reflect_correlate` by the FFT (same arguments).

    With P the reflect-padded image, (H + 2r) × (W + 2r), and a grid L_h × L_w ≥ that size, the circular
    correlation c = F⁻¹(conj(F k) · F P) (k and P zero-padded to the grid) is the linear one wherever nothing
    wraps: c[i, j] = Σ_{u,v} k[u, v] P[i + u, j + v] for i < H, j < W, since i + u ≤ H − 1 + 2r < L_h.
    """
    height, width = x.shape[-2:]
    if kernel.dim() == 2:
        kernel = kernel[None]
    radius = kernel.shape[-1] // 2
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    grid = (fft_size(height + 2 * radius), fft_size(width + 2 * radius))
    spectrum = torch.fft.rfft2(kernel.to(device=x.device, dtype=x.dtype), s=grid).conj()[:, None]  # (B | 1, 1, ·, ·)
    return torch.fft.irfft2(torch.fft.rfft2(padded, s=grid) * spectrum, s=grid)[..., :height, :width]


def fft_pays(kernel_size: int, height: int, width: int) -> bool:
    """Whether :func:`reflect_correlate_fft` beats the k² multiply-adds per pixel of :func:`reflect_correlate`:
    k² > :data:`FFT_CROSSOVER` · log₂(L_h·L_w), the FFT's cost per pixel on its grid."""
    radius = kernel_size // 2
    grid = fft_size(height + 2 * radius) * fft_size(width + 2 * radius)
    return kernel_size ** 2 > FFT_CROSSOVER * math.log2(grid)


def reflect_correlate_fast(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """:func:`reflect_correlate_fft` where :func:`fft_pays`, else :func:`reflect_correlate` (same arguments)."""
    if fft_pays(kernel.shape[-1], *x.shape[-2:]):
        return reflect_correlate_fft(x, kernel)
    return reflect_correlate(x, kernel)


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


def band_radius(matrix: torch.Tensor) -> int:
    """The smallest r with M[i, j] = 0 for |i − j| > r (a reflect-padded correlation: at most the taps' radius,
    less where the outer taps are zero, as a Gaussian's beyond 4σ)."""
    rows, cols = torch.nonzero(matrix, as_tuple=True)
    return int((rows - cols).abs().max()) if rows.numel() else 0


def _band_blocks(size: int, radius: int) -> list[tuple[int, int, int, int]]:
    """(first, end, lo, hi): output rows [first, end) of a band-``radius`` matrix read its columns [lo, hi)."""
    block = max(MIN_BAND_BLOCK, 2 * radius)
    return [(first, min(size, first + block), max(0, first - radius), min(size, first + block + radius))
            for first in range(0, size, block)]


def _banded_sandwich(x: torch.Tensor, matrix: torch.Tensor, radius: int) -> torch.Tensor:
    """M X Mᵀ over the last two dims, block by block (the forward of :class:`_BandedSandwich`)."""
    blocks = _band_blocks(matrix.shape[0], radius)
    rows = torch.cat([x[..., lo:hi] @ matrix[first:end, lo:hi].T for first, end, lo, hi in blocks], dim=-1)
    return torch.cat([matrix[first:end, lo:hi] @ rows[..., lo:hi, :] for first, end, lo, hi in blocks], dim=-2)


class _BandedSandwich(torch.autograd.Function):
    """X ↦ M X Mᵀ with its adjoint G ↦ Mᵀ G M (Mᵀ has the same band), both by :func:`_banded_sandwich`."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, matrix: torch.Tensor,
                radius: int) -> torch.Tensor:
        ctx.save_for_backward(matrix)
        ctx.radius = radius
        return _banded_sandwich(x, matrix, radius)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (matrix,) = ctx.saved_tensors
        return _BandedSandwich.apply(grad, matrix.T, ctx.radius), None, None


def banded_sandwich(x: torch.Tensor, matrix: torch.Tensor, radius: int) -> torch.Tensor:
    """A X = M X Mᵀ per sample and channel (x (…, n, n), M (n × n) with M[i, j] = 0 for |i − j| > ``radius``).

    Output rows are taken in blocks of b = max(:data:`MIN_BAND_BLOCK`, 2r); a block reads only the b + 2r input rows
    its band reaches, so each pass costs at most n²(b + 2r) multiply-adds instead of n³ (the blocks keep the products
    large enough for BLAS). The VJP is the same product with Mᵀ: the exact adjoint of the map computed.
    """
    return _BandedSandwich.apply(x, matrix.to(device=x.device, dtype=x.dtype), radius)


class ReflectBlur(LinearOperator):
    """y = k ⋆ x + n (reflect padding, correlation); subclasses say where k comes from (:meth:`blur_kernel`).

    Checks the resolution, that the odd k×k window fits the image and ``method`` (:data:`METHODS`): ``direct`` is
    :func:`reflect_correlate`, ``fast`` is :meth:`fast_blur`. The adjoint is autograd's VJP.
    """

    def __init__(self, noise: NoiseModel, resolution: int, kernel_size: int, method: str) -> None:
        super().__init__(noise)
        self.resolution = image_side("resolution", resolution)
        self.kernel_size = odd_kernel_fits(kernel_size, self.resolution)
        self.method = one_of("method", method, METHODS)

    def blur_kernel(self) -> torch.Tensor:  # pragma: no cover - abstract
        """(k, k) shared by the batch, or (B, k, k) per sample."""
        raise NotImplementedError

    def fast_blur(self, x: torch.Tensor) -> torch.Tensor:
        """The blur of ``method: fast``: :func:`reflect_correlate_fast` (subclasses with structure override it)."""
        return reflect_correlate_fast(x, self.blur_kernel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "direct":
            return reflect_correlate(x, self.blur_kernel())
        return self.fast_blur(x)

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return tuple(y.shape)
