"""A pixel-space prior seen as a latent model whose autoencoder is the identity (E = D = id).

Latent samplers (latent DAPS and DPS, PSLD, ReSample) then run on the analytic priors, whose exact posteriors are known:
with an identity autoencoder the latent posterior is the pixel posterior, so the accuracy tool scores them on the same
problems as the pixel samplers (``python -m commands.accuracy``).
"""
from __future__ import annotations

import torch

from common.models.base import DiffusionModel


class IdentityAutoencoder(DiffusionModel):
    """``prior`` with ``latent = True`` and identity ``encode``/``decode``; every denoiser call goes to ``prior``."""

    latent = True
    task_groups = ("ldm",)

    def __init__(self, prior: DiffusionModel) -> None:
        super().__init__(prior.sample_shape, prior.image_shape, prior.betas)
        self.prior = prior

    def tweedie(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        return self.prior.tweedie(x, sigma)

    def ddpm_output(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.prior.ddpm_output(x_t, t)
