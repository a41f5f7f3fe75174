r"""The latent-diffusion ε-UNet (CompVis ``openaimodel.UNetModel``, Rombach et al. 2022), as used by the FFHQ and
class-conditional ImageNet LDMs of DAPS, with the state-dict layout of their checkpoints.

It is the guided-diffusion UNet of :mod:`common.models.adm_unet` in its plain configuration (no scale-shift norm,
conv resampling, embedding added after the first conv of each ResBlock, legacy multi-head self-attention), with
one option added: ``use_spatial_transformer`` replaces every self-attention block by a :class:`SpatialTransformer`
that also attends to a conditioning sequence c (cross-attention):

* SpatialTransformer  h = x + proj_out(T(proj_in(GN(x))))  over the H·W tokens, GN with 32 groups and ε = 1e-6;
* each transformer block T:  u ← u + SelfAttn(LN₁(u)),  u ← u + CrossAttn(LN₂(u), c),  u ← u + FF(LN₃(u)),
  attention  softmax(q kᵀ / sqrt(d)) v  with q = W_q u, k = W_k c, v = W_v c (no biases), per head of width d;
* FF(u) = W₂ (a ⊙ GELU(g)), (a, g) = W₁ u  (GEGLU, inner width 4·C).

The ImageNet LDM uses one head whose width is the full channel count (the reference's ``legacy`` head rule
d = C / heads). ``attention_resolutions`` are downsample rates (1, 2, 4, …), as in the CompVis configs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ConfigError
from common.models.adm_unet import ADMUNet, AttentionBlock, ResBlock, timestep_embedding


class CrossAttention(nn.Module):
    """Multi-head attention of queries from u (B, N, C) to keys/values from c (B, M, C_c); c defaults to u."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (self._split_heads(t) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / sqrt(d)) v
        return self.to_out(out.transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    """(a, g) = proj(u);  a ⊙ GELU(g)  (exact GELU)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """FF(u) = W₂ GEGLU(u) with inner width ``mult``·C (the reference's ``net`` layout: GEGLU, dropout, linear)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Identity(), nn.Linear(mult * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention to ``context``, GEGLU feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """x + proj_out(blocks(proj_in(GN(x)) as H·W tokens, context)); without context, cross- is self-attention."""

    def __init__(self, channels: int, heads: int, depth: int, context_dim: int | None) -> None:
        super().__init__()
        dim_head = channels // heads
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, dim_head, context_dim) for _ in range(depth)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))


class LDMUNet(ADMUNet):
    """``forward(x, timesteps, context=None)`` -> ε̂ (B, out_channels, H, W); see the module docstring.

    Args:
        attention_resolutions: downsample rates at which attention follows the ResBlocks.
        num_heads / num_head_channels: exactly one of them set (the other −1); heads = C / num_head_channels.
        use_spatial_transformer, transformer_depth, context_dim: cross-attention blocks of ``transformer_depth``
            transformer blocks attending to a context of width ``context_dim`` (required with the option).
    """

    def __init__(self, in_channels: int, model_channels: int, out_channels: int, num_res_blocks: int,
                 attention_resolutions: Sequence[int], channel_mult: Sequence[int], num_heads: int = -1,
                 num_head_channels: int = -1, use_spatial_transformer: bool = False, transformer_depth: int = 1,
                 context_dim: int | None = None, dropout: float = 0.0) -> None:
        if (num_heads == -1) == (num_head_channels == -1):
            raise ConfigError(f"set exactly one of num_heads ({num_heads}) and num_head_channels "
                             f"({num_head_channels}); the other must be -1")
        if channel_mult[0] != 1:
            raise ConfigError(f"channel_mult must start with 1 (the first conv has model_channels outputs), "
                             f"got {list(channel_mult)}")
        if use_spatial_transformer != (context_dim is not None):
            raise ConfigError(f"context_dim ({context_dim}) must be given exactly when use_spatial_transformer "
                             f"({use_spatial_transformer}) is set")
        super().__init__(in_channels, model_channels, out_channels, num_res_blocks,
                         attention_ds=tuple(attention_resolutions), channel_mult=tuple(channel_mult),
                         dropout=dropout, num_heads=num_heads, num_head_channels=num_head_channels)
        if use_spatial_transformer:
            for seq in (*self.input_blocks, self.middle_block, *self.output_blocks):
                for i, layer in enumerate(seq):
                    if isinstance(layer, AttentionBlock):
                        seq[i] = SpatialTransformer(layer.qkv.in_channels, layer.num_heads, transformer_depth,
                                                    context_dim)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor,  # type: ignore[override]
                context: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂ at (possibly fractional) ``timesteps`` (shape (B,) or one for the batch); ``context`` (B, M, C_c)."""
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1)
        if timesteps.numel() not in (1, x.shape[0]):
            raise ConfigError(f"timesteps must hold 1 or batch-size ({x.shape[0]}) values, got {timesteps.numel()}")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype))

        def run(block: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
            for layer in block:
                if isinstance(layer, ResBlock):
                    h = layer(h, emb)
                elif isinstance(layer, SpatialTransformer):
                    h = layer(h, context)
                else:
                    h = layer(h)
            return h

        skips = []
        h = x
        for block in self.input_blocks:
            h = run(block, h)
            skips.append(h)
        h = run(self.middle_block, h)
        for block in self.output_blocks:
            h = run(block, torch.cat([h, skips.pop()], dim=1))
        return self.out(h)
