"""Motion deblurring: y = k ⋆ x + n with a random camera-shake kernel k per image (61×61, intensity 0.5).

k is drawn per image from that image's generator by :func:`~common.operators.motion_kernel.motion_kernel`
(the reference's trajectory algorithm, our seeded draws) and is operator *state*: ``draw_state`` returns
{"kernel": (k, k)}, ``set_state`` installs a batch (B, k, k), and the kernels are saved with the results.
The blur is :func:`~common.operators.convolution.reflect_correlate` (reflect padding k//2, no kernel flip).
The adjoint is autograd's VJP.
"""
from __future__ import annotations

import torch

from common.operators._checks import require_state
from common.operators.convolution import ReflectBlur
from common.operators.motion_kernel import TorchRandomSource, motion_kernel
from common.operators.noise import NoiseModel
from common.registry import OPERATORS


@OPERATORS.register("motion_blur")
class MotionBlur(ReflectBlur):
    """y = k_b ⋆ x_b + n with a per-image random motion kernel k_b."""

    def __init__(self, noise: NoiseModel, resolution: int, kernel_size: int = 61, intensity: float = 0.5) -> None:
        super().__init__(noise, resolution, kernel_size)
        if not 0.0 <= intensity <= 1.0:
            raise ValueError(f"intensity (shake strength) must lie in [0, 1], got {intensity!r}")
        self.intensity = float(intensity)

    def draw_state(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """{"kernel": float32 (k, k), non-negative, sums to 1} for one image."""
        return {"kernel": motion_kernel(self.kernel_size, self.intensity, TorchRandomSource(generator))}

    def blur_kernel(self) -> torch.Tensor:
        return require_state(self, "kernel")
