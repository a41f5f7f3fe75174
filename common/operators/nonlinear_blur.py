"""Non-linear deblurring: y = clip(2·B(x/2 + ½, z) − 1, −1, 1) + n, B the learned blur of a bkse KernelWizard.

B (see :mod:`common.operators.kernel_wizard`) is frozen, loaded strictly from the public GOPRO_wVAE.pth.
The blur latent z is fixed for every image, run and instance, as in the reference:

    z = 1.2 · randn(1, 8nf, n/128, n/128)  from numpy's legacy stream seeded with 0, cast to float32

(the reference seeds numpy's *global* RNG; we draw the identical numbers from a private
``numpy.random.RandomState(0)`` so no global state is touched). Only its positive entries matter (a ReLU
follows). The network needs an image size that is a multiple of 128 (256 in the papers, z then 2×2); any other
size n is padded to N = 128·⌈n/128⌉ first, ⌊(N − n)/2⌋ pixels before and the rest after, by replicating the
edge pixels (a 64-px demo image becomes 128 px, z 1×1), and B's output is cropped back to n × n. At n = 256
nothing is padded: the reference's operator.
Gradients flow to x; the network's parameters are frozen.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import image_side
from common.models.checkpoints import load_state_dict, load_strict, require_file
from common.operators.base import Operator
from common.operators.kernel_wizard import KernelWizard
from common.operators.noise import NoiseModel
from common.registry import OPERATORS

DOWNLOAD = "bash download.sh models"
LATENT_SEED = 0
LATENT_SCALE = 1.2


def fixed_latent(channels: int, height: int, width: int) -> torch.Tensor:
    """The reference's blur latent: 1.2 · N(0, 1) draws of numpy's legacy stream with seed 0, float32."""
    draws = np.random.RandomState(LATENT_SEED).randn(1, channels, height, width) * LATENT_SCALE
    return torch.from_numpy(draws).float()


@OPERATORS.register("nonlinear_blur")
class NonlinearBlur(Operator):
    """y = clip(2·B(x/2 + ½, z) − 1, −1, 1) + n with the fixed latent z."""

    def __init__(self, noise: NoiseModel, resolution: int, checkpoint: str = "checkpoints/GOPRO_wVAE.pth",
                 network: dict[str, Any] | None = None) -> None:
        super().__init__(noise)
        self.resolution = image_side("resolution", resolution)
        what = "the nonlinear_blur operator (bkse KernelWizard, GOPRO_wVAE.pth)"
        path = require_file(checkpoint, what, DOWNLOAD, key="task.<task_group>.operator.checkpoint")
        self.net = KernelWizard(**(network or {})).eval()
        load_strict(self.net, load_state_dict(path, what, DOWNLOAD), what)
        self.net.requires_grad_(False)
        side = -(-self.resolution // 128)  # ⌈n / 128⌉
        padding = side * 128 - self.resolution
        self.padding = (padding // 2, padding - padding // 2) * 2  # (left, right, top, bottom) for F.pad
        self.register_buffer("latent", fixed_latent(8 * self.net.nf, side, side))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latent = self.latent.to(x.dtype).expand(x.shape[0], -1, -1, -1)
        padded = F.pad((x + 1.0) / 2.0, self.padding, mode="replicate") if any(self.padding) else (x + 1.0) / 2.0
        left, top = self.padding[0], self.padding[2]
        blurred = self.net.adapt_kernel(padded, latent)[..., top:top + x.shape[-2], left:left + x.shape[-1]]
        return (blurred * 2.0 - 1.0).clamp(-1.0, 1.0)
