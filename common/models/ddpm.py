r"""Pixel-space DDPM prior: the guided-diffusion ε-UNet (:mod:`common.models.adm_unet`) as a :class:`DiffusionModel`.

Two views of the same network ε̂_θ(x, t) (first 3 output channels; channels 3..5 are the learned-variance
interpolation v when ``learn_sigma``):

* denoiser for DAPS, through the VP preconditioning (:func:`common.models.precond.vp_denoise`):
  D(x; σ) = x − σ ε̂_θ(x / sqrt(σ² + 1), 999 t(σ));
* DDPM view for DPS, at integer timesteps of the linear β schedule (1e-4 → 0.02, T = 1000), no rescaling:
  ``ddpm_output(x_t, t)`` = (ε̂_θ(x_t, t), v).

Weights come from the public checkpoints (``ffhq_10m.pt`` → ``checkpoints/ffhq256.pt``,
``256x256_diffusion_uncond.pt`` → ``checkpoints/imagenet256.pt``), loaded safely and strictly.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping

import torch

from common.errors import ConfigError
from common.models.adm_unet import ADMUNet, create_adm_unet
from common.models.base import DiffusionModel
from common.models.checkpoints import CheckpointError, load_state_dict, load_strict, require_file
from common.models.precision import autocast, compute_dtype
from common.models.precond import vp_denoise
from common.registry import MODELS

UNET_KWARGS = tuple(inspect.signature(create_adm_unet).parameters)


def _unet_from_config(model_config: Mapping[str, Any], device: str = "cpu") -> ADMUNet:
    """``create_adm_unet(**model_config)`` built on ``device`` ("meta": shapes only), unknown keys -> ValueError."""
    unknown = sorted(set(model_config) - set(UNET_KWARGS))
    if unknown:
        raise ConfigError(f"unknown ddpm model_config keys {unknown}; valid: {', '.join(UNET_KWARGS)}")
    with torch.device(device):
        return create_adm_unet(**model_config)


@MODELS.register("ddpm")
class DDPMModel(DiffusionModel):
    """Guided-diffusion DDPM prior on (3, resolution, resolution) images in [−1, 1].

    Args:
        resolution: image side; must equal ``model_config['image_size']``.
        checkpoint: state-dict file (``.pt``/``.pth`` loaded with ``weights_only=True``, or ``.safetensors``);
            all keys must match (strict). ``None`` only together with ``allow_random_weights=True``.
        model_config: the reference ``create_model`` keyword arguments (:func:`create_adm_unet`).
        precision: ``fp32`` | ``fp16`` | ``bf16``. The weights stay float32; fp16/bf16 run the UNet under
            ``torch.autocast`` on the input's device (both work on CPU and CUDA, fp16 on CPU is slow).
            GroupNorm and the softmax stay float32; every output is float32.
        download: the command that fetches missing checkpoints (shown in the error).
        name: label used in error messages.
        allow_random_weights: build with random weights when ``checkpoint`` is None (tests, speed benchmarks).
        channels_last: keep the UNet's conv weights and inputs in channels-last memory format.

    The network is frozen (``eval()``, ``requires_grad=False``); gradients still flow to the inputs (DPS).
    To use in-memory weights, e.g. the ``adm_small.pt`` fixture::

        DDPMModel.from_state_dict(d["config"]["create_model_kwargs"], d["state_dict"])
    """

    def __init__(self, resolution: int, checkpoint: str | Path | None, model_config: Mapping[str, Any],
                 precision: str = "fp32", download: str = "bash download.sh models", name: str | None = None,
                 allow_random_weights: bool = False, channels_last: bool = False) -> None:
        super().__init__(sample_shape=(3, resolution, resolution))
        dtype = compute_dtype(precision)
        if model_config.get("image_size") != resolution:
            raise ConfigError(f"resolution {resolution} differs from model_config image_size "
                             f"{model_config.get('image_size')!r}")
        if model_config.get("class_cond", False):
            raise ConfigError("class_cond=True is not supported by the ddpm model (the DPS/DAPS ADM priors are "
                             "unconditional)")
        self.precision, self.compute_dtype = precision, dtype
        self.channels_last = channels_last
        self._learn_sigma = bool(model_config.get("learn_sigma", False))
        what = f"model '{name or 'ddpm'}'"
        if checkpoint is None:
            if not allow_random_weights:
                raise CheckpointError(f"no checkpoint given for {what}: set `checkpoint:` to the weights file "
                                      f"(fetched by `{download}`); random weights need allow_random_weights=True")
            unet = _unet_from_config(model_config)
        else:
            path = require_file(checkpoint, what, download)
            unet = _unet_from_config(model_config, device="meta")  # validate the config before reading the file
            state = load_state_dict(path, what, download)
            unet = unet.to_empty(device="cpu")  # skip random initialisation: every tensor is overwritten
            load_strict(unet, state, what)
        self.unet = unet
        self._freeze()

    @classmethod
    def from_state_dict(cls, model_config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                        resolution: int | None = None, **options: Any) -> "DDPMModel":
        """A model holding ``state_dict`` (strictly checked; float16 values are converted exactly).

        ``options``: ``precision``, ``channels_last``, ``name`` as in the constructor.
        """
        model = cls(resolution or model_config["image_size"], None, model_config, allow_random_weights=True,
                    **options)
        load_strict(model.unet, state_dict, "model 'ddpm' (in-memory state dict)")
        return model

    def _freeze(self) -> None:
        self.unet.requires_grad_(False)
        if self.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.eval()

    @property
    def learn_sigma(self) -> bool:
        return self._learn_sigma

    def network(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Raw UNet output (B, 3 or 6, H, W) in float32, run at the configured precision."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, self.compute_dtype):
            out = self.unet(x, timesteps)
        return out.float()

    def tweedie(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """D(x; σ) = x − σ ε̂_θ(c_in x, c_noise) (VP preconditioning; the variance channels are dropped)."""
        return vp_denoise(lambda xs, ts: self.network(xs, ts)[:, :3], x, sigma)

    def ddpm_output(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ε̂_θ(x_t, t), v or None) at integer timesteps ``t`` fed to the UNet unchanged."""
        out = self.network(x_t.float(), t)
        return out[:, :3], (out[:, 3:] if self._learn_sigma else None)
