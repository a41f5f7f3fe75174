"""Tiny CompVis latent diffusion checkpoints written locally, for end-to-end runs of the ``ldm`` model.

* unconditional: the small reference LDM of the fixtures (``ldm_unet_small.pt`` UNet, ``vq_f4_small.pt`` VQ-f4
  autoencoder): 32 × 32 images, 3 × 8 × 8 latents, in the LatentDiffusion state-dict layout;
* class-conditional: the same autoencoder with a UNet of the same widths plus spatial transformers (cross-attention
  to a 16-dim class embedding, 1001 classes so that the configs' unconditional token 1000 exists), random weights
  N(0, 0.05²) drawn from a seeded generator.

:func:`model_overrides` turns a tiny configuration into Hydra overrides of the real ``ffhq256ldm`` /
``imagenet256ldm`` model configs (every key overridden exists there), so the CLI builds the tiny model through
the same config files as the full-size one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.models.ldm import LatentDiffusion, ldm_schedule
from common.models.schedules import ddpm_betas
from tests.helpers.fixtures import load_fixture

TINY_CONTEXT_DIM = 16
TINY_CLASSES = 1001


def small_ldm_config() -> dict[str, Any]:
    """Our ``ldm`` arguments for the reference's small LatentDiffusion (``latent_diffusion_config_used_for_vp``)."""
    ref = load_fixture("ldm_unet_small.pt")["config"]["latent_diffusion_config_used_for_vp"]["params"]
    first_stage = {k: v for k, v in ref["first_stage_config"]["params"].items() if k != "lossconfig"}
    return dict(resolution=first_stage["ddconfig"]["resolution"],
                unet_config={k: v for k, v in ref["unet_config"]["params"].items() if k != "image_size"},
                first_stage_config=first_stage, linear_start=ref["linear_start"], linear_end=ref["linear_end"],
                timesteps=ref["timesteps"])


def small_ldm_state() -> dict[str, torch.Tensor]:
    """The small LatentDiffusion state dict: schedule buffers, ``model.diffusion_model.*``, ``first_stage_model.*``."""
    cfg = small_ldm_config()
    schedule = ldm_schedule(ddpm_betas("scaled_linear", cfg["timesteps"], cfg["linear_start"], cfg["linear_end"]))
    state = {k: v.float() for k, v in schedule.items()}
    state.update({f"model.diffusion_model.{k}": v for k, v in load_fixture("ldm_unet_small.pt")["state_dict"].items()})
    state.update({f"first_stage_model.{k}": v for k, v in load_fixture("vq_f4_small.pt")["state_dict"].items()})
    return state


def conditional_ldm_config(class_label: int = TINY_CLASSES - 1) -> dict[str, Any]:
    """A class-conditional variant of :func:`small_ldm_config` (spatial transformers, class embedder)."""
    cfg = small_ldm_config()
    unet = {k: v for k, v in cfg["unet_config"].items() if k != "num_head_channels"}
    cfg["unet_config"] = {**unet, "num_heads": 1, "use_spatial_transformer": True, "transformer_depth": 1,
                          "context_dim": TINY_CONTEXT_DIM}
    return {**cfg, "cond_stage_config": {"n_classes": TINY_CLASSES, "embed_dim": TINY_CONTEXT_DIM},
            "class_label": class_label}


def conditional_ldm_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of :func:`conditional_ldm_config`: the small reference autoencoder; UNet parameters N(0, 0.05²),
    normalisation scales 1 + N(0, 0.05²) and class embeddings N(0, 1), drawn from ``seed``, so that the class
    reaches the output (as the reference fixtures' random initialisation, plus a unit-scale embedding)."""
    model = LatentDiffusion(checkpoint=None, allow_random_weights=True, **conditional_ldm_config())
    generator = torch.Generator().manual_seed(seed)
    for module in (*model.unet.modules(), *model.cond_stage_model.modules()):
        for name, param in module.named_parameters(recurse=False):
            noise = torch.randn(param.shape, generator=generator)
            if isinstance(module, nn.Embedding):
                param.copy_(noise)
            elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)) and name == "weight":
                param.copy_(1 + 0.05 * noise)
            else:
                param.copy_(0.05 * noise)
    state = model.state_dict()
    first_stage = load_fixture("vq_f4_small.pt")["state_dict"]
    state.update({f"first_stage_model.{k}": v.float() for k, v in first_stage.items()})
    return state


def write_checkpoint(path: Path, conditional: bool = False) -> Path:
    """Writes a tiny LatentDiffusion checkpoint (Lightning layout, weights under ``"state_dict"``) to ``path``."""
    state = conditional_ldm_state() if conditional else small_ldm_state()
    torch.save({"state_dict": state}, path)
    return path


def _flatten(prefix: str, value: Any) -> list[str]:
    if isinstance(value, dict):
        return [item for key, sub in value.items() for item in _flatten(f"{prefix}.{key}", sub)]
    if isinstance(value, (list, tuple)):
        return [f"{prefix}=[{','.join(str(v) for v in value)}]"]
    return [f"{prefix}={value}"]


def model_overrides(checkpoint: Path, conditional: bool = False) -> list[str]:
    """Hydra overrides that turn ``model=ffhq256ldm`` (or ``imagenet256ldm`` when ``conditional``) into the
    tiny model stored at ``checkpoint`` (the class label is left at the config's value)."""
    cfg = conditional_ldm_config() if conditional else small_ldm_config()
    cfg.pop("class_label", None)
    return [f"model.checkpoint={checkpoint}", *_flatten("model", cfg)]
