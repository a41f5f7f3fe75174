"""Inpainting: y = m ⊙ x + n with a binary mask m (1 = observed), the same for every channel.

Missing pixels become 0 (mid-grey in [−1, 1]). A is an orthogonal projection, so Aᵀ = A⁺ = A:
Aᵀy = A⁺y = m ⊙ y. The mask is per-image state drawn from that image's generator:

* ``box``: an h×w hole (h, w drawn uniformly from ``mask_len_range`` = [lo, hi), 128×128 in the papers)
  whose top-left corner is uniform in [margin, n − margin − h) × [margin, n − margin − w), margin = n/8
  (32 px at 256, as the reference), so the hole lies inside the margin but is not centred.
* ``random``: a fraction p ~ U(``mask_prob_range``) of the n² pixels, int(n²·p) of them chosen uniformly
  without replacement, is removed (≈70 % missing in the papers).
"""
from __future__ import annotations

from typing import Sequence

import torch

from common.operators._checks import positive_int, require_state
from common.operators.base import LinearOperator
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
class Inpainting(LinearOperator):
    """y = m ⊙ x + n with a per-image box or random-pixel mask m."""

    def __init__(self, noise: NoiseModel, resolution: int, mask_type: str = "box",
                 mask_len_range: Sequence[int] = (128, 129),
                 mask_prob_range: Sequence[float] = (0.70, 0.71)) -> None:
        super().__init__(noise)
        self.resolution = positive_int("resolution", resolution)
        if mask_type not in MASK_TYPES:
            raise ValueError(f"unknown mask_type {mask_type!r}; valid: {', '.join(MASK_TYPES)}")
        self.mask_type = mask_type
        self.margin = self.resolution // 8
        lo, hi = (int(v) for v in mask_len_range)
        if mask_type == "box" and not (1 <= lo < hi and hi - 1 < self.resolution - 2 * self.margin):
            raise ValueError(f"mask_len_range {list(mask_len_range)} does not fit resolution {self.resolution}: "
                             f"need 1 <= lo < hi and hi - 1 < {self.resolution - 2 * self.margin} "
                             f"(the image minus a {self.margin}-px margin on each side)")
        p_lo, p_hi = (float(v) for v in mask_prob_range)
        if mask_type == "random" and not 0.0 <= p_lo <= p_hi <= 1.0:
            raise ValueError(f"mask_prob_range {list(mask_prob_range)} must satisfy 0 <= lo <= hi <= 1")
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

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return tuple(y.shape)
