r"""Stable Diffusion 1.5 / 2.1 (through diffusers) as a latent EDM denoiser, as DAPS uses it.

Components come from ``from_pretrained`` on a Hugging Face model id or a local folder in the diffusers layout
(``unet/ vae/ text_encoder/ tokenizer/ scheduler/``); ``HF_HOME`` decides the cache, and with
``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) only cached files are used.

Conditioning. A fixed prompt c and the empty prompt ∅ are encoded once by the CLIP text encoder (which is then
dropped); classifier-free guidance with scale w mixes the two noise predictions (Ho & Salimans 2022):

    ε̂(x, t) = ε(x, t, ∅) + w (ε(x, t, c) − ε(x, t, ∅)).

v-prediction networks (SD 2.1, ``prediction_type = v_prediction`` in the scheduler config) are converted with
v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x_0 and x = sqrt(ᾱ) x_0 + sqrt(1 − ᾱ) ε, i.e.  ε = sqrt(ᾱ) v + sqrt(1 − ᾱ) x.

Denoiser (VP preconditioning, EDM Table 1, as in the DAPS ``sdm`` model). SD's discrete scaled-linear schedule
β_i = (√β_start + i/(N−1) (√β_end − √β_start))² is read as the continuous rate β(t) = (a t + b)², t ∈ [0, 1],
with b = sqrt(N β_start), a = sqrt(N β_end) − b, so that ∫_0^t β = ((a t + b)³ − b³) / (3a) and
σ(t)² = exp(∫_0^t β) − 1. Inverting,

    t(σ) = ((3a ln(1 + σ²) + b³)^{1/3} − b) / a,    c_noise(σ) = N · t(σ)   (fractional, N = 1000),
    c_in(σ) = 1 / sqrt(σ² + 1) = sqrt(ᾱ),          D(z; σ) = z − σ ε̂(c_in z, c_noise).

Latents. encode: image in [−1, 1] at the target resolution → bilinear resize to the inner resolution (512 for
SD 1.5, 768 for SD 2.1) → VAE posterior mean × ``scaling_factor``. decode: z / ``scaling_factor`` → VAE decoder
→ bilinear resize to the target resolution (no clamping), differentiable.

Precision: fp16/bf16 autocast of the UNet and VAE on CUDA (weights stay fp32); fp32 on CPU. Outputs are float32.
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import urllib.parse
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from common.errors import ConfigError
from common.models.base import DiffusionModel, sigma_like
from common.models.checkpoints import CheckpointError, missing_checkpoint_message
from common.models.precision import autocast, compute_dtype
from common.models.schedules import ddpm_betas
from common.registry import MODELS

PREDICTION_TYPES = ("epsilon", "v_prediction")
_TRUE = {"1", "ON", "YES", "TRUE"}
#: files every diffusers Stable Diffusion folder has; all in the local cache = a local copy to load offline
COMPONENT_CONFIGS = ("unet/config.json", "vae/config.json", "text_encoder/config.json",
                     "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json")
#: seconds to wait for a TCP connection to the hub before taking it as unreachable
HUB_PROBE_TIMEOUT = 3.0


def sd_sigma_to_t(sigma: torch.Tensor, beta_start: float, beta_end: float, num_steps: int) -> torch.Tensor:
    """t(σ) = ((3a ln(1 + σ²) + b³)^{1/3} − b) / a of the continuous scaled-linear VP schedule (module doc)."""
    b = math.sqrt(num_steps * beta_start)
    a = math.sqrt(num_steps * beta_end) - b
    return ((3 * a * torch.log1p(sigma ** 2) + b ** 3) ** (1 / 3) - b) / a


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for cached files only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


@MODELS.register("stable_diffusion")
class StableDiffusion(DiffusionModel):
    """Latent SD prior: samples z of shape (4, inner/8, inner/8), images of shape (3, resolution, resolution)."""

    latent = True
    task_groups = ("sd",)

    def __init__(self, model_id: str, resolution: int = 256, inner_resolution: int = 512,
                 prompt: str = "a natural looking image", guidance_scale: float = 7.5, precision: str = "fp16",
                 local_files_only: bool | None = None, config_name: str = "stable_diffusion") -> None:
        dtype = compute_dtype(precision)
        if precision != "fp32" and not torch.cuda.is_available():
            warnings.warn(f"Stable Diffusion: precision={precision} needs CUDA; running in fp32 on the CPU")
        offline = hub_offline() if local_files_only is None else local_files_only
        if not offline and not _looks_local(model_id) and not hub_reachable():
            offline = True  # no hub: from_pretrained would spend about a minute in retries before failing
        if offline and not _looks_local(model_id):
            _require_cached(model_id, config_name)  # at once, before diffusers is even imported
        unet, vae, text_encoder, tokenizer, schedule = _load_components(model_id, config_name, offline)

        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if inner_resolution % factor:
            raise ConfigError(f"inner_resolution={inner_resolution} must be a multiple of the VAE's "
                             f"down-sampling factor {factor}")
        if schedule["beta_schedule"] != "scaled_linear":
            raise ConfigError(f"beta_schedule={schedule['beta_schedule']!r} of '{model_id}' is not supported; "
                             f"valid: scaled_linear (Stable Diffusion's)")
        if schedule["prediction_type"] not in PREDICTION_TYPES:
            raise ConfigError(f"prediction_type={schedule['prediction_type']!r} of '{model_id}' is not supported; "
                             f"valid: {', '.join(PREDICTION_TYPES)}")
        num_steps = schedule["num_train_timesteps"]
        super().__init__(sample_shape=(unet.config.in_channels, inner_resolution // factor,
                                       inner_resolution // factor),
                         image_shape=(3, resolution, resolution),
                         betas=ddpm_betas(schedule["beta_schedule"], num_steps, schedule["beta_start"],
                                          schedule["beta_end"]))
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.resolution, self.inner_resolution = resolution, inner_resolution
        self.prompt, self.guidance_scale = prompt, float(guidance_scale)
        self.compute_dtype = dtype
        self.latent_scale = float(vae.config.scaling_factor)
        self.prediction_type = schedule["prediction_type"]
        self.num_train_timesteps = num_steps
        self.beta_start, self.beta_end = schedule["beta_start"], schedule["beta_end"]
        cond, uncond = _encode_prompts(text_encoder, tokenizer, [prompt, ""])
        self.register_buffer("cond_embedding", cond, persistent=False)
        self.register_buffer("uncond_embedding", uncond, persistent=False)

    # ------------------------------------------------------------------ network
    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """fp16/bf16 autocast on CUDA; a no-op for fp32 and on the CPU."""
        return autocast(device, self.compute_dtype, cuda_only=True)

    def guided_eps(self, x: torch.Tensor, timesteps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """ε̂(x, t) = ε(x, t, ∅) + w (ε(x, t, c) − ε(x, t, ∅)) at the network input x (VP-scaled latent).

        ``timesteps``: one value per sample (shape (B,)); ``alpha_bar``: ᾱ broadcastable against x, used to turn
        a v-prediction into ε = sqrt(ᾱ) v + sqrt(1 − ᾱ) x. Float32 out.
        """
        b = x.shape[0]
        context = torch.cat([self.uncond_embedding.expand(b, -1, -1), self.cond_embedding.expand(b, -1, -1)])
        with self._autocast(x.device):
            out = self.unet(torch.cat([x, x]), timesteps.repeat(2), encoder_hidden_states=context,
                            return_dict=False)[0]
        out_uncond, out_cond = out.float().chunk(2)
        out = out_uncond + self.guidance_scale * (out_cond - out_uncond)
        if self.prediction_type == "v_prediction":
            out = alpha_bar.sqrt() * out + (1 - alpha_bar).sqrt() * x
        return out

    def tweedie(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """D(z; σ) = z − σ ε̂(c_in z, N t(σ)), c_in = 1/sqrt(σ² + 1) (module doc)."""
        z = x.float()
        s = sigma_like(sigma, z)
        t = sd_sigma_to_t(s, self.beta_start, self.beta_end, self.num_train_timesteps)
        timesteps = (self.num_train_timesteps * t).reshape(-1).expand(z.shape[0])
        alpha_bar = 1 / (1 + s ** 2)
        return z - s * self.guided_eps(alpha_bar.sqrt() * z, timesteps, alpha_bar)

    def ddpm_output(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, None]:
        """(ε̂(z_t, t), None) at integer timesteps t of SD's own β schedule (no learned variance)."""
        x_t = x_t.float()
        alpha_bar = self.alphas_cumprod.to(x_t.device)[t].float().reshape(-1, *([1] * (x_t.ndim - 1)))
        return self.guided_eps(x_t, t.to(x_t.device), alpha_bar), None

    # ------------------------------------------------------------------ autoencoder
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z = scaling_factor · mean of q(z | resize_inner(x)), x in [−1, 1] at the target resolution."""
        x = _resize(x.float(), self.inner_resolution)
        with self._autocast(x.device):
            mean = self.vae.encode(x).latent_dist.mean
        return mean.float() * self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x = resize_target(VAE decoder(z / scaling_factor)); differentiable, not clamped."""
        with self._autocast(z.device):
            x = self.vae.decode(z.float() / self.latent_scale).sample
        return _resize(x.float(), self.resolution)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize (half-pixel centres, no anti-aliasing) to size × size, as the reference does."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _load_components(model_id: str, config_name: str, local_files_only: bool) -> tuple[Any, ...]:
    """(unet, vae, text_encoder, tokenizer, scheduler config) in fp32, or a :class:`CheckpointError`."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from huggingface_hub.errors import HFValidationError
    from transformers import CLIPTextModel, CLIPTokenizer

    model_id = os.path.expanduser(model_id)
    common = {"local_files_only": local_files_only}
    try:
        unet = UNet2DConditionModel.from_pretrained(model_id, subfolder="unet", torch_dtype=torch.float32,
                                                    **common)
        vae = AutoencoderKL.from_pretrained(model_id, subfolder="vae", torch_dtype=torch.float32, **common)
        text_encoder = CLIPTextModel.from_pretrained(model_id, subfolder="text_encoder", dtype=torch.float32,
                                                     **common)
        tokenizer = CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer", **common)
        schedule = DDPMScheduler.from_pretrained(model_id, subfolder="scheduler", **common).config
    except (OSError, HFValidationError) as err:
        raise CheckpointError(_missing_message(model_id, config_name, local_files_only, err)) from err
    return unet, vae, text_encoder, tokenizer, dict(schedule)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether the Hugging Face endpoint (``$HF_ENDPOINT``, default https://huggingface.co) accepts a TCP
    connection within ``timeout`` seconds (one probe; no request is sent)."""
    from huggingface_hub.constants import ENDPOINT

    url = urllib.parse.urlsplit(ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _require_cached(model_id: str, config_name: str) -> None:
    """A :class:`CheckpointError` at once when a component config of ``model_id`` is not in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    missing = [name for name in COMPONENT_CONFIGS if not isinstance(try_to_load_from_cache(model_id, name), str)]
    if missing:
        reason = ("HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face hub cannot be reached")
        raise CheckpointError(_missing_message(model_id, config_name, True, FileNotFoundError(
            f"{reason}, and the local cache lacks {', '.join(missing)}")))


def _looks_local(model_id: str) -> bool:
    """A filesystem path rather than a hub id ``owner/name``."""
    return model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1 or os.path.exists(model_id)


def _missing_message(model_id: str, config_name: str, local_files_only: bool, err: Exception) -> str:
    """What is missing, where we looked, and the line that fetches it."""
    what = f"model '{config_name}' (Stable Diffusion through diffusers)"
    if _looks_local(model_id):
        return (f"no diffusers Stable Diffusion folder for {what} at '{model_id}' (expects unet/, vae/, "
                f"text_encoder/, tokenizer/, scheduler/). Point model_id at such a folder or at a Hugging Face "
                f"model id. ({type(err).__name__}: {err})")
    from huggingface_hub.constants import HF_HUB_CACHE

    where = "the local cache only (offline)" if local_files_only else "the Hugging Face hub and the local cache"
    return (missing_checkpoint_message(model_id, what, f"hf download {model_id}", key="model.model_id")
            + f" Looked in {where}; the cache ($HF_HOME/hub) is {HF_HUB_CACHE}. With internet access and "
            f"HF_HUB_OFFLINE unset, `from_pretrained` downloads it on first use. ({type(err).__name__}: {err})")


@torch.no_grad()
def _encode_prompts(text_encoder: Any, tokenizer: Any, prompts: list[str]) -> list[torch.Tensor]:
    """CLIP last hidden states (1, L, D), float32, of each prompt padded to the tokenizer's context length L."""
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    hidden = text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask if use_mask else None)[0]
    return list(hidden.float().split(1))
