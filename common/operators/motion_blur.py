"""Motion deblurring: y = k ⋆ x + n with a random camera-shake kernel k per image (61×61, intensity 0.5).

k is drawn per image from that image's generator by :func:`~common.operators.motion_kernel.motion_kernel`
(the reference's trajectory algorithm, our seeded draws) and is operator *state*: ``draw_state`` returns
{"kernel": (k, k)}, ``set_state`` installs a batch (B, k, k), and the kernels are saved with the results.
The blur is the reflect-padded correlation of :mod:`~common.operators.convolution` (padding k//2, no kernel
flip): ``method: fast`` (the default) by the FFT where that is cheaper (a 61×61 kernel at any resolution, drawn or
loaded), ``method: direct`` the reference's dense correlation. The adjoint is autograd's VJP. A random kernel
is not separable: there is no closed-form SVD, and A⁺ and the proximal map are the conjugate-gradient solves of
:class:`~common.operators.base.LinearOperator`.
"""
from __future__ import annotations

import torch

from common.errors import real
from common.operators._checks import require_state
from common.operators.convolution import ReflectBlur
from common.operators.motion_kernel import TorchRandomSource, motion_kernel
from common.operators.noise import NoiseModel
from common.registry import OPERATORS


@OPERATORS.register("motion_blur")
class MotionBlur(ReflectBlur):
    """y = k_b ⋆ x_b + n with a per-image random motion kernel k_b."""

    def __init__(self, noise: NoiseModel, resolution: int, kernel_size: int = 61, intensity: float = 0.5,
                 method: str = "fast") -> None:
        super().__init__(noise, resolution, kernel_size, method)
        self.intensity = real("intensity", intensity, 0.0, 1.0)  # shake strength

    def draw_state(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """{"kernel": float32 (k, k), non-negative, sums to 1} for one image."""
        return {"kernel": motion_kernel(self.kernel_size, self.intensity, TorchRandomSource(generator))}

    def state_problems(self, state: dict[str, torch.Tensor]) -> list[str]:
        """The kernel k must be a blur: k ≥ 0 and Σ k = 1 (to float32 rounding, |Σ k − 1| ≤ 1e-4)."""
        kernel = state["kernel"].double()
        problems = []
        if bool((kernel < 0).any()):
            problems.append(f"'kernel' has negative entries (min {float(kernel.min()):g}); a blur kernel is >= 0")
        if abs(float(kernel.sum()) - 1.0) > 1e-4:
            problems.append(f"'kernel' sums to {float(kernel.sum()):g}; a blur kernel sums to 1")
        return problems

    def blur_kernel(self) -> torch.Tensor:
        return require_state(self, "kernel")
