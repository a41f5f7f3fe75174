"""The model seam: an EDM-style denoiser D(x; σ) ≈ E[x_0 | x_σ = x], x_σ = x_0 + σ ε (Karras et al. 2022).

Every prior is a :class:`DiffusionModel` (analytic Gaussian, ADM DDPM, LDM, Stable Diffusion), so every
sampler runs on every model unchanged:

* ``tweedie(x, σ)`` = D(x; σ), float32 out, σ a float, a 0-dim tensor or one value per sample;
* ``score(x, σ)`` = ∇_x log p_σ(x) = (D(x; σ) − x) / σ²  (Tweedie's formula);
* ``sample_shape``: shape (C, H, W) of one sample in the space the sampler works in (latents for latent
  models), ``image_shape``: shape of one decoded image;
* ``encode`` / ``decode``: identity for pixel models; latent models map images <-> latents, ``decode``
  differentiable;
* the DDPM view that DPS needs, ``ddpm_output(x_t, t)`` at integer timesteps t of ``betas``: (ε̂, v) with v
  the learned-variance channels or ``None``. The default derives ε̂ from D through the VP↔VE change of
  variables x_t = sqrt(ᾱ_t) (x_0 + σ_t ε), σ_t = sqrt(1/ᾱ_t − 1):  ε̂ = (x_t/sqrt(ᾱ_t) − D(x_t/sqrt(ᾱ_t); σ_t)) / σ_t.
"""
from __future__ import annotations

import torch
from torch import nn

from common.models.schedules import ddpm_betas


def sigma_like(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """σ as a float32 tensor broadcastable against x: (B, 1, 1, 1) for per-sample σ, else 0-dim."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class DiffusionModel(nn.Module):
    """Base class of all priors. Subclasses implement :meth:`tweedie` and set the shapes."""

    #: latent models sample in a latent space and decode to images
    latent: bool = False
    #: the task-config groups tuned for this kind of model (validation refuses the others)
    task_groups: tuple[str, ...] = ("pixel", "pixel_hmc")

    def __init__(self, sample_shape: tuple[int, ...], image_shape: tuple[int, ...] | None = None,
                 betas: torch.Tensor | None = None) -> None:
        super().__init__()
        self.sample_shape = tuple(sample_shape)
        self.image_shape = tuple(image_shape or sample_shape)
        self.register_buffer("betas", ddpm_betas("linear") if betas is None else betas.double(), persistent=False)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1 - self.betas, 0)

    @property
    def learn_sigma(self) -> bool:
        """Whether :meth:`ddpm_output` returns learned-variance channels."""
        return False

    def tweedie(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """D(x; σ) = E[x_0 | x_σ = x]."""
        raise NotImplementedError

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """∇_x log p_σ(x) = (D(x; σ) − x) / σ²."""
        return (self.tweedie(x, sigma) - x) / sigma_like(sigma, x) ** 2

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] -> sample space (identity for pixel models)."""
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Sample space -> image in [-1, 1] (identity for pixel models); differentiable."""
        return z

    def ddpm_output(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ε̂(x_t, t), learned-variance channels or None) at integer timesteps ``t`` (shape (B,))."""
        abar = self.alphas_cumprod.to(x_t.device)[t].float().reshape(-1, *([1] * (x_t.ndim - 1)))
        sigma = (1 / abar - 1).sqrt()
        x = x_t / abar.sqrt()
        return (x - self.tweedie(x, sigma.flatten())) / sigma, None
