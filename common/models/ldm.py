r"""Latent diffusion prior (Rombach et al. 2022): the CompVis FFHQ and class-conditional ImageNet LDMs of DAPS.

The sampler works on latents z (3 × H/4 × W/4); images are x = decode(z):

* ``encode(x)`` = s · quant_conv(E(x))  (not quantised),  s = ``scale_factor``;
* ``decode(z)`` = G(post_quant_conv(z_q)),  z_q = straight-through quantisation of z / s (differentiable);
* ``tweedie(z, σ)`` = z − σ ε̂_θ(z / sqrt(σ² + 1), 999 t(σ), c): the same VP preconditioning as the pixel DDPMs
  (:mod:`common.models.precond`, β_min = 0.1, β_d = 19.9), not derived from the LDM's own β schedule (as DAPS);
* ``ddpm_output(z_t, t)`` = (ε̂_θ(z_t, t, c), None) at integer t of the LDM's own schedule
  β_t = (sqrt(β_start) + (t / (T − 1)) (sqrt(β_end) − sqrt(β_start)))², the ``betas`` buffer (DPS's latent path);
* c: for the class-conditional model the cross-attention context c = Embed(``class_label``) of shape (B, 1, 512);
  class 1000 is the extra "unconditional" row that DAPS always uses.

State dict = the CompVis ``LatentDiffusion`` layout: the 12 schedule buffers (``betas`` … ``posterior_mean_coef2``,
the q(x_{t−1} | x_t, x_0) coefficients of Ho et al. 2020), ``model.diffusion_model.*`` (UNet),
``first_stage_model.*`` (VQ autoencoder), ``cond_stage_model.embedding.weight`` (ImageNet). The FFHQ checkpoint also
holds ``model_ema.*``, the training-time EMA shadow of the UNet: it is training-only state listed in
:data:`TRAINING_ONLY_PREFIXES`, dropped before the strict load and not held by this module (DAPS samples with the
``model.diffusion_model`` weights too).
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager, Mapping

import torch
from torch import nn

from common.errors import ConfigError
from common.models.base import DiffusionModel
from common.models.checkpoints import CheckpointError, load_state_dict, load_strict, require_file
from common.models.ldm_unet import LDMUNet
from common.models.precision import autocast, compute_dtype
from common.models.precond import vp_denoise
from common.models.schedules import ddpm_betas
from common.models.vq_autoencoder import VQModelInterface
from common.registry import MODELS

#: checkpoint entries that are training state, dropped (by prefix) before the strict load
TRAINING_ONLY_PREFIXES: tuple[str, ...] = ("model_ema.",)
SCHEDULE_KEYS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                 "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2")


def ldm_schedule(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The 12 DDPM schedule tensors of the LatentDiffusion state dict (float64), in state-dict order.

    ᾱ_t = Π_{s≤t}(1 − β_s), ᾱ_{t−1} (ᾱ_{−1} = 1); posterior q(x_{t−1} | x_t, x_0): variance
    β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t), log β̃_t clipped at 1e-20, mean coefficients
    β_t sqrt(ᾱ_{t−1}) / (1 − ᾱ_t) (on x_0) and (1 − ᾱ_{t−1}) sqrt(α_t) / (1 − ᾱ_t) (on x_t).
    """
    betas = betas.double()
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    values = (betas, abar, abar_prev, abar.sqrt(), (1 - abar).sqrt(), (1 - abar).log(), (1 / abar).sqrt(),
              (1 / abar - 1).sqrt(), post_var, post_var.clamp(min=1e-20).log(),
              betas * abar_prev.sqrt() / (1 - abar), (1 - abar_prev) * alphas.sqrt() / (1 - abar))
    return dict(zip(SCHEDULE_KEYS, values))


@MODELS.register("ldm")
class LatentDiffusion(DiffusionModel):
    """CompVis latent diffusion prior on (3, resolution, resolution) images in [−1, 1] (module docstring).

    Args:
        resolution: image side; latents are (embed_dim, resolution / f, resolution / f), f = 4 for the VQ-f4.
        checkpoint: the LatentDiffusion weights: Lightning ``.ckpt`` (state dict under ``"state_dict"``, also
            when renamed ``.pt``), ``.pt`` or ``.safetensors``; strict after dropping
            :data:`TRAINING_ONLY_PREFIXES`. ``None`` only together with ``allow_random_weights=True``.
        unet_config: :class:`~common.models.ldm_unet.LDMUNet` arguments.
        first_stage_config: ``embed_dim``, ``n_embed`` and the CompVis ``ddconfig`` of the VQ autoencoder.
        cond_stage_config: ``n_classes`` and ``embed_dim`` of the class embedder (class-conditional models only).
        class_label: the class whose embedding conditions the UNet (required with ``cond_stage_config``).
        scale_factor: latent scaling s.
        linear_start, linear_end, timesteps: the LDM's β schedule (``betas`` buffer, used by ``ddpm_output``).
        precision: ``fp32`` | ``fp16`` | ``bf16``: autocast around the UNet and the decoder; outputs float32.
        download: the command that fetches missing checkpoints (shown in the error).
        name: label used in error messages.
        allow_random_weights: build with random weights when ``checkpoint`` is None (tests, benchmarks).

    The networks are frozen (``eval()``, ``requires_grad=False``); gradients flow to the inputs.
    """

    latent = True
    task_groups = ("ldm",)

    def __init__(self, resolution: int, checkpoint: str | Path | None, unet_config: Mapping[str, Any],
                 first_stage_config: Mapping[str, Any], cond_stage_config: Mapping[str, Any] | None = None,
                 class_label: int | None = None, scale_factor: float = 1.0, linear_start: float = 0.0015,
                 linear_end: float = 0.0195, timesteps: int = 1000, precision: str = "fp32",
                 download: str = "bash download.sh models", name: str | None = None,
                 allow_random_weights: bool = False) -> None:
        dtype = compute_dtype(precision)
        if (cond_stage_config is None) != (class_label is None):
            raise ConfigError(f"class_label ({class_label}) must be set exactly when cond_stage_config is given "
                             f"(class-conditional model)")
        if cond_stage_config is not None and not 0 <= class_label < cond_stage_config["n_classes"]:
            raise ConfigError(f"class_label {class_label} out of range; valid: 0 .. "
                             f"{cond_stage_config['n_classes'] - 1}")
        what = f"model '{name or 'ldm'}'"
        path = None
        if checkpoint is None:
            if not allow_random_weights:
                raise CheckpointError(f"no checkpoint given for {what}: set `checkpoint:` to the weights file "
                                      f"(fetched by `{download}`); random weights need allow_random_weights=True")
        else:
            path = require_file(checkpoint, what, download)  # before building the big networks

        betas = ddpm_betas("scaled_linear", timesteps, linear_start, linear_end)
        schedule = ldm_schedule(betas)
        with torch.device("meta") if path is not None else nullcontext():
            unet = LDMUNet(**unet_config)
            vq = VQModelInterface(**first_stage_config)
            embedder = (nn.Embedding(cond_stage_config["n_classes"], cond_stage_config["embed_dim"])
                        if cond_stage_config is not None else None)
        f = vq.downsample_factor
        if resolution % f:
            raise ConfigError(f"resolution {resolution} is not divisible by the autoencoder's factor {f}")
        super().__init__(sample_shape=(first_stage_config["embed_dim"], resolution // f, resolution // f),
                         image_shape=(3, resolution, resolution), betas=schedule["betas"])
        for key, value in schedule.items():
            self.register_buffer(key, value)  # persistent: they are part of the checkpoint layout
        self.model = nn.ModuleDict({"diffusion_model": unet})
        self.first_stage_model = vq
        if embedder is not None:
            self.cond_stage_model = nn.ModuleDict({"embedding": embedder})
        self.class_label = class_label
        self.scale_factor = float(scale_factor)
        self.precision, self.compute_dtype = precision, dtype
        if path is not None:
            state = load_state_dict(path, what, download, key="state_dict")
            self.to_empty(device="cpu")  # storage for the weights read next; no random initialisation
            load_strict(self, state, what, drop_prefixes=TRAINING_ONLY_PREFIXES)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], **config: Any) -> "LatentDiffusion":
        """A model holding ``state_dict`` (LatentDiffusion layout, strict after the training-only drop)."""
        model = cls(checkpoint=None, allow_random_weights=True, **config)
        load_strict(model, state_dict, "model 'ldm' (in-memory state dict)", drop_prefixes=TRAINING_ONLY_PREFIXES)
        return model

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t, the state-dict buffer (shadows the base class's value computed from ``betas``)."""
        return nn.Module.__getattr__(self, "alphas_cumprod")

    @property
    def unet(self) -> LDMUNet:
        return self.model.diffusion_model

    def _autocast(self, device: torch.device) -> ContextManager:
        return autocast(device, self.compute_dtype)

    def context(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """Cross-attention context c = Embed(class_label), shape (batch, 1, embed_dim); None if unconditional."""
        if self.class_label is None:
            return None
        labels = torch.full((batch,), self.class_label, dtype=torch.long, device=device)
        return self.cond_stage_model.embedding(labels)[:, None]

    def network(self, z: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """ε̂_θ(z, timesteps, c) in float32, run at the configured precision."""
        context = self.context(z.shape[0], z.device)
        with self._autocast(z.device):
            out = self.unet(z, timesteps, context)
        return out.float()

    def tweedie(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """D(z; σ) = z − σ ε̂_θ(c_in z, c_noise, c) (VP preconditioning, no channel split)."""
        return vp_denoise(self.network, x, sigma)

    def ddpm_output(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ε̂_θ(z_t, t, c), None) at integer timesteps ``t`` of the LDM schedule (no learned variance)."""
        return self.network(x_t.float(), t), None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z = s · quant_conv(E(x)) for images x in [−1, 1] (not quantised), float32."""
        return self.scale_factor * self.first_stage_model.encode(x.float())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x = G(post_quant_conv(z_q)), z_q the straight-through quantisation of z / s; differentiable, float32."""
        quant = self.first_stage_model.quantize(z.float() / self.scale_factor)[0]
        with self._autocast(z.device):
            x = self.first_stage_model.decode_quantized(quant)
        return x.float()
