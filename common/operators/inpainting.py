"""Inpainting: y = m ⊙ x + n with a binary mask m (1 = observed), the same for every channel.

Missing pixels become 0 (mid-grey in [−1, 1]). A is an orthogonal projection, so Aᵀ = A⁺ = A:
Aᵀy = A⁺y = m ⊙ y. Its SVD is diagonal (U = I on the observed pixels, s = m, V = I), which gives the proximal map
prox_γ(x, y) = (m ⊙ y + γx) / (m + γ) (x on the missing pixels, also for γ = 0).

The mask is per-image state drawn from that image's generator, installed as (B, 1, n, n):

* ``box``: an h×w hole (h, w drawn uniformly from ``mask_len_range`` = [lo, hi), 128×128 in the papers)
  whose top-left corner is uniform in [margin, n − margin − h) × [margin, n − margin − w), margin = n/8
  (32 px at 256, as the reference), so the hole lies inside the margin but is not centred.
* ``random``: a fraction p ~ U(``mask_prob_range``) of the n² pixels, int(n²·p) of them chosen uniformly
  without replacement, is removed (≈70 % missing in the papers).
"""
from __future__ import annotations

from typing import Sequence

import torch

from common.errors import SettingError, image_side, one_of
from common.operators._checks import int_range, real_range, require_state
from common.operators.base import SVDOperator
from common.operators.linalg import DiagonalSVD
from common.operators.noise import NoiseModel
from common.registry import OPERATORS

MASK_TYPES = ("box", "random")


def _uniform_int(low: int, high: int, generator: torch.Generator) -> int:
    """An integer uniform in [low, high)."""
    return int(torch.randint(low, high, (), generator=generator, device=generator.device))


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, device=generator.device,
                                                 dtype=torch.float64))


@OPERATORS.register("inpainting")
class Inpainting(SVDOperator):
    """y = m ⊙ x + n with a per-image box or random-pixel mask m."""

    def __init__(self, noise: NoiseModel, resolution: int, mask_type: str = "box",
                 mask_len_range: Sequence[int] = (128, 129),
                 mask_prob_range: Sequence[float] = (0.70, 0.71)) -> None:
        super().__init__(noise)
        self.resolution = image_side("resolution", resolution)
        self.mask_type = one_of("mask_type", mask_type, MASK_TYPES)
        self.margin = self.resolution // 8
        lo, hi = int_range("mask_len_range", mask_len_range)
        if mask_type == "box" and not hi - 1 < self.resolution - 2 * self.margin:
            raise SettingError("mask_len_range", list(mask_len_range), f"does not fit resolution "
                               f"{self.resolution}: need hi - 1 < {self.resolution - 2 * self.margin} (the image "
                               f"minus a {self.margin}-px margin on each side)")
        p_lo, p_hi = real_range("mask_prob_range", mask_prob_range, 0.0, 1.0)
        if mask_type == "random" and int(self.resolution ** 2 * p_hi) >= self.resolution ** 2:
            raise SettingError("mask_prob_range", list(mask_prob_range), f"removes every pixel of a "
                               f"{self.resolution}x{self.resolution} image at hi = {p_hi:g}: need hi < 1 (the "
                               f"fraction of pixels removed)")
        self.mask_len_range = (lo, hi)
        self.mask_prob_range = (p_lo, p_hi)

    def draw_state(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """{"mask": bool (1, n, n), True = observed} for one image."""
        n = self.resolution
        if self.mask_type == "box":
            height = _uniform_int(*self.mask_len_range, generator)
            width = _uniform_int(*self.mask_len_range, generator)
            top = _uniform_int(self.margin, n - self.margin - height, generator)
            left = _uniform_int(self.margin, n - self.margin - width, generator)
            mask = torch.ones(n, n, dtype=torch.bool)
            mask[top:top + height, left:left + width] = False
        else:
            fraction = _uniform(*self.mask_prob_range, generator)
            removed = torch.randperm(n * n, generator=generator, device=generator.device)[:int(n * n * fraction)]
            mask = torch.ones(n * n, dtype=torch.bool)
            mask[removed.cpu()] = False
            mask = mask.view(n, n)
        return {"mask": mask[None]}

    def state_problems(self, state: dict[str, torch.Tensor]) -> list[str]:
        """The mask m must be binary (1 = observed, 0 = missing)."""
        mask = state["mask"]
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            return [f"'mask' must hold only 0 and 1 (1 = observed), got values in "
                    f"[{float(mask.min()):g}, {float(mask.max()):g}]"]
        return []

    def mask(self, like: torch.Tensor) -> torch.Tensor:
        """The installed mask m as a float tensor broadcastable to ``like``."""
        return require_state(self, "mask").to(device=like.device, dtype=like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Aᵀ y = m ⊙ y (A is an orthogonal projection, so Aᵀ = A)."""
        return self.forward(y)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """A⁺ y = m ⊙ y (A is an orthogonal projection, so A⁺ = A)."""
        return self.forward(y)

    def svd(self, channels: int = 3, dtype: torch.dtype = torch.float32) -> DiagonalSVD:
        """A = diag(m) for the installed masks: V = I, s = m per sample (B or 1, C·n·n), U = I on observed pixels."""
        return DiagonalSVD(require_state(self, "mask").to(dtype), (channels, self.resolution, self.resolution))

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return tuple(y.shape)
