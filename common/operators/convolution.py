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

Every path is differentiable, its VJP the exact adjoint of the map it computes (the FFT path's: the full convolution
k ∗ G folded back by the padding's adjoint; the banded one's: Mᵀ G M); the ``*_adjoint`` functions compute the same
Aᵀ without an autograd graph.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

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
#: bytes of spectrum per chunk of the FFT path on a CPU (about a core's L2 cache)
FFT_CHUNK_BYTES = 2 ** 21
#: the fewest rows per block of :func:`banded_sandwich` (smaller products lose more to overhead than they save)
MIN_BAND_BLOCK = 64


def _depthwise_weight(kernel: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The grouped-convolution weight (B·C, 1, k, k) of ``kernel`` for the batch ``like`` (B, C, H, W)."""
    batch, channels = like.shape[:2]
    if kernel.dim() == 2:
        kernel = kernel[None]
    size = kernel.shape[-1]
    kernel = kernel.to(device=like.device, dtype=like.dtype).expand(batch, size, size)
    return kernel.repeat_interleave(channels, dim=0)[:, None]


def reflect_correlate(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Blur ``x`` (B, C, H, W) with ``kernel`` (k, k) shared by the batch or (B, k, k) / (1, k, k) per sample."""
    batch, channels, height, width = x.shape
    weight = _depthwise_weight(kernel, x)                                  # (B·C, 1, k, k)
    pad = weight.shape[-1] // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(padded.reshape(1, batch * channels, *padded.shape[-2:]), weight, groups=batch * channels)
    return out.reshape(batch, channels, height, width)


def fft_size(n: int) -> int:
    """The smallest L ≥ n of the form 2ᵃ, 3·2ᵃ or 5·2ᵃ (less than 4n/3): the FFT sizes measured fastest (odd or
    5²-multiple lengths such as 125 cost twice as much per point as 128)."""
    return min(m << (-(-n // m) - 1).bit_length() for m in (1, 3, 5))


def _spectral_product(tensor: torch.Tensor, spectrum: torch.Tensor, grid: tuple[int, int],
                      size: tuple[int, int]) -> torch.Tensor:
    """F⁻¹(spectrum · F t) on ``grid`` (t zero-padded to it), cropped to ``size``; ``spectrum`` (B | 1, 1, ·, ·).

    On a CPU the batch goes through in chunks of about :data:`FFT_CHUNK_BYTES` of spectrum (cache blocking: one
    transform of a batch of ten 256-px images took 1.4× longer than ten of one)."""
    per_sample = tensor[0].numel() // (tensor.shape[-2] * tensor.shape[-1]) * grid[0] * (grid[1] // 2 + 1)
    per_sample *= 2 * tensor.element_size()
    step = tensor.shape[0] if tensor.device.type != "cpu" else max(1, FFT_CHUNK_BYTES // per_sample)
    parts = [torch.fft.irfft2(torch.fft.rfft2(tensor[start:start + step], s=grid)
                              * (spectrum if spectrum.shape[0] == 1 else spectrum[start:start + step]), s=grid)
             [..., :size[0], :size[1]] for start in range(0, tensor.shape[0], step)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _reflect_pad_adjoint(grad: torch.Tensor, radius: int) -> torch.Tensor:
    """The adjoint of ``F.pad(·, (r, r, r, r), mode="reflect")``: the centre of ``grad`` plus its borders folded back
    (pad[r − m] = x[m] and pad[r + n − 1 + m] = x[n − 1 − m] for m = 1…r, on each axis)."""
    for dim in (-2, -1):
        size = grad.shape[dim] - 2 * radius
        core = grad.narrow(dim, radius, size).clone()
        core.narrow(dim, 1, radius).add_(grad.narrow(dim, 0, radius).flip(dim))
        core.narrow(dim, size - 1 - radius, radius).add_(grad.narrow(dim, radius + size, radius).flip(dim))
        grad = core
    return grad


class _ReflectCorrelation(torch.autograd.Function):
    """x ↦ F⁻¹(conj(K̂) · F P) cropped to x's size, P the reflect-padded x (:func:`reflect_correlate_fft`), and its
    adjoint G ↦ the reflect padding's adjoint of F⁻¹(K̂ · F G) cropped to P's size (the full convolution k ∗ G: with
    j = i + u nothing wraps either, as j − i ≥ −(H − 1) > 2r − L_h). K̂, the kernel's spectrum on the grid, is a
    constant: no gradient reaches the kernel, which is operator state."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, spectrum: torch.Tensor, radius: int,
                grid: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(spectrum)
        ctx.radius, ctx.grid = radius, grid
        padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
        return _spectral_product(padded, spectrum.conj(), grid, tuple(x.shape[-2:]))

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (spectrum,) = ctx.saved_tensors
        return _reflect_convolve(grad, spectrum, ctx.radius, ctx.grid), None, None, None


class FFTPlan(NamedTuple):
    """What the FFT path needs of a kernel for one image size: K̂ (B | 1, 1, L_h, L_w/2 + 1), r and (L_h, L_w)."""

    spectrum: torch.Tensor
    radius: int
    grid: tuple[int, int]


def fft_plan(kernel: torch.Tensor, like: torch.Tensor) -> FFTPlan:
    """The :class:`FFTPlan` of ``kernel`` ((k, k) or (B | 1, k, k)) for images like ``like`` (…, H, W)."""
    if kernel.dim() == 2:
        kernel = kernel[None]
    radius = kernel.shape[-1] // 2
    grid = (fft_size(like.shape[-2] + 2 * radius), fft_size(like.shape[-1] + 2 * radius))
    spectrum = torch.fft.rfft2(kernel.detach().to(device=like.device, dtype=like.dtype), s=grid)[:, None]
    return FFTPlan(spectrum, radius, grid)


def _reflect_convolve(y: torch.Tensor, spectrum: torch.Tensor, radius: int, grid: tuple[int, int]) -> torch.Tensor:
    """The adjoint of :class:`_ReflectCorrelation`: the reflect padding's adjoint of F⁻¹(K̂ · F y) cropped to the
    padded size (the full convolution k ∗ y)."""
    padded_size = (y.shape[-2] + 2 * radius, y.shape[-1] + 2 * radius)
    return _reflect_pad_adjoint(_spectral_product(y, spectrum, grid, padded_size), radius)


def reflect_correlate_fft(x: torch.Tensor, plan: FFTPlan) -> torch.Tensor:
    """:func:`reflect_correlate` by the FFT, the kernel given by its :func:`fft_plan` (it gets no gradient).

    With P the reflect-padded image, (H + 2r) × (W + 2r), and a grid L_h × L_w ≥ that size, the circular
    correlation c = F⁻¹(conj(F k) · F P) (k and P zero-padded to the grid) is the linear one wherever nothing
    wraps: c[i, j] = Σ_{u,v} k[u, v] P[i + u, j + v] for i < H, j < W, since i + u ≤ H − 1 + 2r < L_h.
    """
    return _ReflectCorrelation.apply(x, *plan)


def reflect_correlate_fft_adjoint(y: torch.Tensor, plan: FFTPlan) -> torch.Tensor:
    """Aᵀy for :func:`reflect_correlate_fft` (its VJP, without an autograd graph)."""
    return _reflect_convolve(y, *plan)


def reflect_correlate_adjoint(y: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Aᵀy for :func:`reflect_correlate`: the full convolution k ∗ y (``conv_transpose2d``, the input gradient of
    ``conv2d``), folded back by the reflect padding's adjoint."""
    batch, channels, height, width = y.shape
    weight = _depthwise_weight(kernel, y)
    full = F.conv_transpose2d(y.reshape(1, batch * channels, height, width), weight, groups=batch * channels)
    return _reflect_pad_adjoint(full.reshape(batch, channels, *full.shape[-2:]), weight.shape[-1] // 2)


def fft_pays(kernel_size: int, height: int, width: int) -> bool:
    """Whether :func:`reflect_correlate_fft` beats the k² multiply-adds per pixel of :func:`reflect_correlate`:
    k² > :data:`FFT_CROSSOVER` · log₂(L_h·L_w), the FFT's cost per pixel on its grid."""
    radius = kernel_size // 2
    grid = fft_size(height + 2 * radius) * fft_size(width + 2 * radius)
    return kernel_size ** 2 > FFT_CROSSOVER * math.log2(grid)


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
    if len(blocks) == 1:
        return matrix @ x @ matrix.T
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
    :func:`reflect_correlate` with autograd's VJP as adjoint (the reference's arithmetic); ``fast`` is
    :meth:`fast_blur` with the explicit adjoint :meth:`fast_adjoint` (the same VJP, computed without a graph), and
    :meth:`gradient` then makes one blur and one adjoint.
    """

    def __init__(self, noise: NoiseModel, resolution: int, kernel_size: int, method: str) -> None:
        super().__init__(noise)
        self.resolution = image_side("resolution", resolution)
        self.kernel_size = odd_kernel_fits(kernel_size, self.resolution)
        self.method = one_of("method", method, METHODS)
        self._plan: tuple[torch.Tensor, tuple[Any, ...], FFTPlan] | None = None   # (kernel, its key, its plan)

    def blur_kernel(self) -> torch.Tensor:  # pragma: no cover - abstract
        """(k, k) shared by the batch, or (B, k, k) per sample."""
        raise NotImplementedError

    def fft_plan(self, kernel: torch.Tensor, like: torch.Tensor) -> FFTPlan | None:
        """:func:`fft_plan` where :func:`fft_pays`, else None; kept while the same kernel tensor stays installed and
        unchanged (a DAPS run applies one batch of kernels thousands of times)."""
        if not fft_pays(kernel.shape[-1], *like.shape[-2:]):
            return None
        key = (kernel._version, tuple(like.shape[-2:]), like.dtype, like.device)
        if self._plan is None or self._plan[0] is not kernel or self._plan[1] != key:
            self._plan = (kernel, key, fft_plan(kernel, like))
        return self._plan[2]

    def fast_blur(self, x: torch.Tensor) -> torch.Tensor:
        """The blur of ``method: fast``: :func:`reflect_correlate_fft` where it pays, else :func:`reflect_correlate`
        (subclasses with structure override it)."""
        kernel = self.blur_kernel()
        plan = self.fft_plan(kernel, x)
        return reflect_correlate(x, kernel) if plan is None else reflect_correlate_fft(x, plan)

    def fast_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`fast_blur`, by the same path (subclasses that override one override both)."""
        kernel = self.blur_kernel()
        plan = self.fft_plan(kernel, y)
        return reflect_correlate_adjoint(y, kernel) if plan is None else reflect_correlate_fft_adjoint(y, plan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "direct":
            return reflect_correlate(x, self.blur_kernel())
        return self.fast_blur(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Aᵀy: :meth:`fast_adjoint`, or for ``method: direct`` autograd's VJP."""
        return super().adjoint(y) if self.method == "direct" else self.fast_adjoint(y)

    def gradient(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(2 Aᵀ(A x − y), ‖A x − y‖² per sample); ``method: direct`` through autograd as every operator."""
        if self.method == "direct":
            return super().gradient(x, y)
        with torch.no_grad():
            residual = self.fast_blur(x.detach()) - y
            return 2 * self.fast_adjoint(residual), residual.pow(2).flatten(1).sum(-1)

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return tuple(y.shape)
