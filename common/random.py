"""Per-sample randomness: every draw comes from a generator derived from (seed, image id, run).

Results then depend neither on the batch size nor on the number of processes, nor on whether a run
was resumed. A batch carries a list of generators, one per sample; :func:`randn` stacks their draws.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings (stable across processes and Python versions)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(*parts: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``parts`` (e.g. ``(seed, image_id, run)``)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(*parts))
    return generator


def randn(shape: Sequence[int], generators: Sequence[torch.Generator], *,
          device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal draws of shape ``(len(generators), *shape)``, sample i from ``generators[i]``."""
    out = torch.empty((len(generators), *shape), dtype=dtype, device=generators[0].device)
    for g, row in zip(generators, out):
        torch.randn(tuple(shape), generator=g, dtype=dtype, out=row)
    return out.to(device or generators[0].device)


def rand(shape: Sequence[int], generators: Sequence[torch.Generator], *,
         device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) draws of shape ``(len(generators), *shape)``, sample i from ``generators[i]``."""
    return torch.stack([
        torch.rand(tuple(shape), generator=g, device=g.device, dtype=dtype) for g in generators
    ]).to(device or generators[0].device)
