r"""The guided-diffusion ("ADM", Dhariwal & Nichol 2021) ε-prediction UNet, with the state-dict layout of the
public checkpoints (``ffhq_10m.pt`` of DPS, ``256x256_diffusion_uncond.pt`` of OpenAI) used by DPS and DAPS.

Network ε̂_θ(x_t, t) (plus learned-variance channels v when ``learn_sigma``), written in our own code:

* timestep embedding  e(t) = [cos(t ω_i) | sin(t ω_i)],  ω_i = exp(−ln(10000) · i / half), i < half = C/2
  (t may be fractional), then MLP  emb = W₂ SiLU(W₁ e(t) + b₁) + b₂  of width 4C;
* ResBlock  h = conv₁(SiLU(GN(x))),  h = GN(h) (1 + s) + b  with (s, b) = Linear(SiLU(emb)) (scale-shift norm;
  otherwise h + Linear(SiLU(emb)) before the norm),  out = skip(x) + conv₂(Dropout(SiLU(h))); up/down
  ResBlocks resample (nearest ×2 / 2×2 average) both branches, after GN+SiLU on the residual one;
* attention  softmax(q kᵀ / sqrt(d)) v  per head of width d over the H·W positions, with the legacy channel
  order of the fused qkv projection (split into heads first, then into q, k, v), residual ``x + proj_out(·)``;
* GroupNorm with 32 groups, ε = 1e-5, always computed in float32.

``attention_resolutions`` follows the reference ``create_model`` convention: image resolutions ("32,16,8" or
an int) turned into downsample rates ``image_size // res``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ConfigError

#: default channel multipliers per image size when ``channel_mult`` is "" (as in guided-diffusion)
DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
NUM_CLASSES = 1000


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t ω) | sin(t ω)], ω_i = max_period^(−i/half), shape (len(t), dim), float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
                      / half)
    args = timesteps.reshape(-1, 1).float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups) evaluated in at least float32 precision, returned in the input dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(torch.promote_types(x.dtype, torch.float32))).to(x.dtype)


class Downsample(nn.Module):
    """×½ resampling: 3×3 stride-2 conv (``op``) or, without ``use_conv``, 2×2 average pooling."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """×2 nearest-neighbour resampling, followed by a 3×3 conv (``conv``) when ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding (see module docstring); ``resample`` in {None, 'up', 'down'}."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float,
                 use_scale_shift_norm: bool, resample: str | None = None) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (
            2 if use_scale_shift_norm else 1)))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))
        if resample == "up":
            self.resample: nn.Module = Upsample(channels, use_conv=False)
        elif resample == "down":
            self.resample = Downsample(channels, use_conv=False)
        elif resample is None:
            self.resample = nn.Identity()
        else:
            raise ConfigError(f"resample must be None, 'up' or 'down', got {resample!r}")

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm, act, conv = self.in_layers
        h = conv(self.resample(act(norm(x))))
        x = self.resample(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = out_rest(out_norm(h + emb_out))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions, x + proj_out(attn(qkv(GN(x)))), fused SDPA kernel.

    ``legacy_order`` (the public checkpoints): the 3·C qkv channels are grouped per head as [q_h, k_h, v_h];
    otherwise as [q_1..q_H, k_1..k_H, v_1..v_H]. The reference scales q and k by d^(−1/4) each, which is the
    1/sqrt(d) scale of :func:`torch.nn.functional.scaled_dot_product_attention`.
    """

    def __init__(self, channels: int, num_heads: int, num_head_channels: int, legacy_order: bool = True) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        elif channels % num_head_channels:
            raise ConfigError(f"attention channels {channels} are not divisible by num_head_channels "
                             f"{num_head_channels}")
        else:
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ConfigError(f"attention channels {channels} are not divisible by num_heads {self.num_heads}")
        self.legacy_order = legacy_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        flat = x.reshape(b, c, hgt * wid)
        qkv = self.qkv(self.norm(flat))
        d = c // self.num_heads
        if self.legacy_order:
            q, k, v = qkv.reshape(b, self.num_heads, 3 * d, hgt * wid).split(d, dim=2)
        else:
            q, k, v = (t.reshape(b, self.num_heads, d, hgt * wid) for t in qkv.chunk(3, dim=1))
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        a = a.transpose(-1, -2).reshape(b, c, hgt * wid)
        return (flat + self.proj_out(a)).reshape(b, c, hgt, wid)


class TimestepSequential(nn.Sequential):
    """A sequence of layers; ResBlocks also receive the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """The guided-diffusion UNet: ``forward(x, timesteps, y=None)`` -> (B, out_channels, H, W).

    ``attention_ds`` are the downsample rates (1, 2, 4, …) at which attention blocks follow the ResBlocks.
    """

    def __init__(self, in_channels: int, model_channels: int, out_channels: int, num_res_blocks: int,
                 attention_ds: Sequence[int], channel_mult: Sequence[float], dropout: float = 0.0,
                 num_classes: int | None = None, num_heads: int = 1, num_head_channels: int = -1,
                 num_heads_upsample: int = -1, use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 legacy_attention_order: bool = True, conv_resample: bool = True) -> None:
        super().__init__()
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        emb_ch = 4 * model_channels
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, emb_ch, cout, dropout, use_scale_shift_norm, resample)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, num_head_channels, legacy_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_ch)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                cout = int(mult * model_channels)
                layers: list[nn.Module] = [res(ch, cout)]
                ch = cout
                if ds in attention_ds:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, "down") if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(TimestepSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                cout = int(mult * model_channels)
                layers = [res(ch + skip_chans.pop(), cout)]
                ch = cout
                if ds in attention_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, "up") if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Network output at (possibly fractional) ``timesteps``: shape (B,), or one value for the whole batch."""
        if (y is None) != (self.num_classes is None):
            raise ConfigError("class labels y must be given exactly when the UNet is class-conditional "
                             f"(num_classes={self.num_classes})")
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1)
        if timesteps.numel() not in (1, x.shape[0]):
            raise ConfigError(f"timesteps must hold 1 or batch-size ({x.shape[0]}) values, got {timesteps.numel()}")
        sinusoid = timestep_embedding(timesteps, self.model_channels)
        emb = self.time_embed(sinusoid.to(self.time_embed[0].weight.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def create_adm_unet(image_size: int, num_channels: int, num_res_blocks: int, channel_mult: str | Sequence[float] = "",
                    learn_sigma: bool = False, class_cond: bool = False, use_checkpoint: bool = False,
                    attention_resolutions: str | int | Sequence[int] = "16", num_heads: int = 1,
                    num_head_channels: int = -1, num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
                    dropout: float = 0.0, resblock_updown: bool = False, use_fp16: bool = False,
                    use_new_attention_order: bool = False) -> ADMUNet:
    """An :class:`ADMUNet` from the reference ``create_model`` keyword arguments (same names and defaults).

    * ``channel_mult``: "1,2,2" (or a sequence); "" picks the guided-diffusion default for ``image_size``.
    * ``attention_resolutions``: feature-map resolutions "32,16,8", an int, or a sequence; attention runs at
      downsample rates ``image_size // res``.
    * ``learn_sigma``: 6 output channels (ε̂ and the variance interpolation v) instead of 3.
    * ``class_cond``: adds a 1000-class label embedding.
    * ``use_checkpoint`` (gradient checkpointing during training) is accepted and has no effect.
    * ``use_fp16`` must be False: parameters stay float32; reduced precision is run-time autocast (the
      ``precision`` option of the ``ddpm`` model).
    """
    if use_fp16:
        raise ConfigError("use_fp16=True is not supported: the UNet keeps float32 weights; set the model's "
                         "`precision: fp16` (autocast) instead")
    if channel_mult == "" or channel_mult is None:
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ConfigError(f"no default channel_mult for image_size {image_size}; valid: "
                             f"{sorted(DEFAULT_CHANNEL_MULT)}, or give channel_mult like '1,2,2'")
        mult = DEFAULT_CHANNEL_MULT[image_size]
    elif isinstance(channel_mult, str):
        mult = tuple(int(m) for m in channel_mult.split(","))
    else:
        mult = tuple(channel_mult)
    if isinstance(attention_resolutions, int):
        resolutions: Sequence[int] = [attention_resolutions]
    elif isinstance(attention_resolutions, str):
        resolutions = [int(r) for r in attention_resolutions.split(",") if r.strip()]
    else:
        resolutions = [int(r) for r in attention_resolutions]
    return ADMUNet(in_channels=3, model_channels=num_channels, out_channels=6 if learn_sigma else 3,
                   num_res_blocks=num_res_blocks, attention_ds=tuple(image_size // r for r in resolutions),
                   channel_mult=mult, dropout=dropout, num_classes=NUM_CLASSES if class_cond else None,
                   num_heads=num_heads, num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
                   use_scale_shift_norm=use_scale_shift_norm, resblock_updown=resblock_updown,
                   legacy_attention_order=not use_new_attention_order)
