r"""The VQ-regularised autoencoder of the latent diffusion models (CompVis ``VQModelInterface``, f = 4 for the
FFHQ/ImageNet LDMs), with the state-dict layout of their checkpoints.

* ``encode``:  z = quant_conv(E(x)), **not** quantised (the latent the diffusion model works on);
* ``quantize``: k(z) = argmin_j ‖z − e_j‖², evaluated as ‖z‖² + ‖e_j‖² − 2 zᵀe_j per latent position, with the
  straight-through value  z_q = z + sg(e_k − z)  (forward: the codebook vector e_k; gradient: identity in z);
* ``decode``:  x̂ = G(post_quant_conv(z_q))  (quantisation skipped with ``force_not_quantize``).

Encoder E / decoder G: ResNet blocks (GN with 32 groups and ε = 1e-6, swish), one single-head self-attention
block softmax(q kᵀ / sqrt(C)) v in the middle of each; downsampling pads by one pixel on the right and bottom
and applies a stride-2 3×3 conv, upsampling is nearest ×2 then a 3×3 conv. ``decoder.up[i]`` is the level at
resolution index i (``up[0]`` full resolution), run from the last level to the first.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ConfigError

#: CompVis ``ddconfig`` keys; the last three must keep the values the public f4 models use
DDCONFIG_KEYS = ("in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "z_channels", "resolution",
                 "double_z", "attn_resolutions", "dropout")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """out = shortcut(x) + conv₂(swish(GN(conv₁(swish(GN(x)))))); shortcut is a 1×1 conv when channels change."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """x + proj_out(softmax(q kᵀ / sqrt(C)) v) over the H·W positions, q, k, v 1×1 convs of GN(x); one head."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (conv(n).flatten(2).transpose(1, 2)[:, None] for conv in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)[:, 0]
        return x + self.proj_out(a.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Zero-pad one pixel right and bottom, then a stride-2 3×3 conv without padding (H -> H/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    """x (B, in_channels, H, W) -> (B, z_channels, H/f, W/f), f = 2^(len(ch_mult) − 1)."""

    def __init__(self, in_channels: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 z_channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(ch_mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, ch * mult))
                block_in = ch * mult
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = _mid(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for block in level.block:
                h = block(h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z (B, z_channels, h, w) -> (B, out_ch, h·f, w·f); ``up[i]`` holds num_res_blocks + 1 blocks of level i."""

    def __init__(self, out_ch: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in)
        levels = []
        for i in reversed(range(len(ch_mult))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, ch * ch_mult[i]))
                block_in = ch * ch_mult[i]
            if i != 0:
                level.upsample = Upsample(block_in)
            levels.append(level)
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for i in reversed(range(len(self.up))):
            for block in self.up[i].block:
                h = block(h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantisation with the straight-through estimator (module docstring)."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_q = z + sg(e_k − z), indices k of shape (B, H, W)) for z of shape (B, D, H, W)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        codebook = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
        indices = dist.argmin(dim=1)
        e = self.embedding(indices).reshape(b, h, w, d).permute(0, 3, 1, 2)
        return z + (e - z).detach(), indices.reshape(b, h, w)


class VQModelInterface(nn.Module):
    """Encoder, decoder, codebook and the 1×1 ``quant_conv`` / ``post_quant_conv`` (module docstring)."""

    def __init__(self, embed_dim: int, n_embed: int, ddconfig: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = _check_ddconfig(ddconfig)
        self.encoder = Encoder(cfg["in_channels"], cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"],
                               cfg["z_channels"])
        self.decoder = Decoder(cfg["out_ch"], cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"], cfg["z_channels"])
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(cfg["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, cfg["z_channels"], 1)
        self.downsample_factor = 2 ** (len(cfg["ch_mult"]) - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z = quant_conv(E(x)), not quantised."""
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """x̂ = G(post_quant_conv(z_q)), z_q the straight-through quantisation of z (or z itself if forced)."""
        quant = z if force_not_quantize else self.quantize(z)[0]
        return self.decode_quantized(quant)

    def decode_quantized(self, quant: torch.Tensor) -> torch.Tensor:
        """x̂ = G(post_quant_conv(quant)) for an already quantised latent."""
        return self.decoder(self.post_quant_conv(quant))


def _check_ddconfig(ddconfig: Mapping[str, Any]) -> dict[str, Any]:
    """The CompVis ``ddconfig`` with the options this implementation does not cover rejected by name.

    ``resolution`` is descriptive (the network is fully convolutional); ``dropout`` is inactive at inference.
    """
    cfg = dict(ddconfig)
    unknown = sorted(set(cfg) - set(DDCONFIG_KEYS))
    missing = [k for k in DDCONFIG_KEYS[:6] if k not in cfg]
    if unknown or missing:
        raise ConfigError(f"ddconfig: unknown keys {unknown}, missing keys {missing}; valid: {', '.join(DDCONFIG_KEYS)}")
    if cfg.get("double_z", False):
        raise ConfigError("ddconfig double_z=True (a KL autoencoder) is not supported; the VQ models use false")
    if list(cfg.get("attn_resolutions", [])):
        raise ConfigError(f"ddconfig attn_resolutions={list(cfg['attn_resolutions'])} is not supported; the f4 VQ "
                         "models use [] (only the middle attention blocks)")
    return cfg
