"""Super-resolution ×f: the antialiased bicubic resizer of the reference (Shocher's ``Resizer``).

Each spatial axis is resized by a matrix R ∈ R^{(n/f) × n}; the image map is separable:

    A x = R x Rᵀ    (per sample and channel, x an n×n image)

Row j of R holds the taps of Keys' cubic kernel (a = −0.5) stretched by f (antialiasing):

    R[j, i] ∝ cubic((c_j − i) / f),   c_j = f·j + (f − 1)/2   (pixel-centre aligned, 0-based)

normalised to sum to one over the 4f inputs it touches. Indices outside [0, n) are folded back by
half-sample symmetric reflection (−1 → 0, −2 → 1, n → n − 1), their weight added to the reflected pixel.
Being linear, A has the exact adjoint Aᵀy = Rᵀ y R and the pseudo-inverse A⁺y = R⁺ y R⁺ᵀ; with R = U_R S_R V_Rᵀ
its SVD is the Kronecker product A = (U_R ⊗ U_R)(S_R ⊗ S_R)(V_R ⊗ V_R)ᵀ (:class:`~common.operators.linalg.KroneckerSVD`,
factored from the stored float32 R, so it is exact for the map :meth:`DownSampling.forward` applies).
"""
from __future__ import annotations

import torch

from common.errors import SettingError, image_side
from common.operators._checks import positive_int
from common.operators.base import SeparableOperator
from common.operators.noise import NoiseModel
from common.registry import OPERATORS


def cubic(t: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = −0.5 (support |t| < 2)."""
    t = t.abs()
    near = 1.5 * t**3 - 2.5 * t**2 + 1
    far = -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def resize_matrix(size: int, factor: int) -> torch.Tensor:
    """R (size/factor × size), float64: antialiased cubic downscaling by ``factor`` with symmetric borders."""
    out = torch.arange(size // factor, dtype=torch.float64)
    centre = factor * out + (factor - 1) / 2
    first = torch.floor(centre - 2 * factor) + 1                       # leftmost input inside the support
    taps = first[:, None] + torch.arange(4 * factor, dtype=torch.float64)
    weights = cubic((centre[:, None] - taps) / factor)
    weights = weights / weights.sum(dim=1, keepdim=True)
    index = taps.long()
    index = torch.where(index < 0, -index - 1, index)                  # half-sample symmetric reflection
    index = torch.where(index >= size, 2 * size - 1 - index, index)
    matrix = torch.zeros(size // factor, size, dtype=torch.float64)
    return matrix.scatter_add_(1, index, weights)


@OPERATORS.register("down_sampling")
class DownSampling(SeparableOperator):
    """y = R x Rᵀ + n: bicubic antialiased downsampling of a square image by an integer factor."""

    def __init__(self, noise: NoiseModel, resolution: int, scale_factor: int = 4) -> None:
        super().__init__(noise)
        resolution = image_side("resolution", resolution)
        scale_factor = positive_int("scale_factor", scale_factor)
        if resolution % scale_factor or resolution < 2 * scale_factor:
            # the 4f cubic taps of an output pixel reach at most one reflection beyond the border iff n >= 2f
            raise SettingError("scale_factor", scale_factor, f"need a divisor of the resolution {resolution} "
                               f"(data.resolution) that is at most {resolution // 2}")
        self.resolution, self.scale_factor = resolution, scale_factor
        matrix = resize_matrix(resolution, scale_factor)
        self.register_buffer("matrix", matrix.float())
        self.register_buffer("matrix_pinv", torch.linalg.pinv(matrix).float())
        self.set_separable_map(self.matrix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x = R x Rᵀ (width first, then height, as the reference)."""
        matrix = self.matrix.to(x.dtype)
        return matrix @ (x @ matrix.T)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Aᵀ y = Rᵀ y R."""
        matrix = self.matrix.to(y.dtype)
        return matrix.T @ y @ matrix

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """A⁺ y = R⁺ y R⁺ᵀ (minimum-norm least-squares upsampling; A A⁺ = I)."""
        matrix_pinv = self.matrix_pinv.to(y.dtype)
        return matrix_pinv @ y @ matrix_pinv.T

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return (*y.shape[:-2], self.resolution, self.resolution)
