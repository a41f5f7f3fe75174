"""High dynamic range reconstruction: y = clip(s·x, −1, 1) + n (s = ``scale`` = 2 in the DAPS paper).

Over-exposure by the factor s saturates everything brighter than ±1/s; the map is non-linear (its
gradient is s inside the unsaturated range and 0 where the clip is active).
"""
from __future__ import annotations

import torch

from common.errors import image_side, real
from common.operators.base import Operator
from common.operators.noise import NoiseModel
from common.registry import OPERATORS


@OPERATORS.register("high_dynamic_range")
class HighDynamicRange(Operator):
    """y = clip(scale · x, −1, 1) + n."""

    def __init__(self, noise: NoiseModel, resolution: int, scale: float = 2.0) -> None:
        super().__init__(noise)
        self.scale = real("scale", scale, 0.0, low_open=True)  # the exposure factor
        self.resolution = image_side("resolution", resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.scale * x).clamp(-1.0, 1.0)
