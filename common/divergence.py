"""Per-sample divergence bookkeeping shared by the samplers.

A chain that produces NaN/inf is not silently repaired: the first step at which each sample stopped being
finite is recorded, the sample is zeroed in the working state so that the rest of the batch carries on,
and it is returned as NaN so that the run marks that image failed (with the step).
"""
from __future__ import annotations

import torch


class DivergenceTracker:
    """Tracks, for a batch of chains, the first step at which each became non-finite."""

    def __init__(self, batch_size: int) -> None:
        self.failed_at: list[int | None] = [None] * batch_size

    def check(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Record newly diverged samples at ``step``; return x with diverged samples set to 0."""
        finite = torch.isfinite(x).flatten(1).all(1)
        for i, ok in enumerate(finite.tolist()):
            if not ok and self.failed_at[i] is None:
                self.failed_at[i] = step
        return torch.where(finite.view(-1, *[1] * (x.ndim - 1)), x, torch.zeros_like(x))

    @property
    def finite(self) -> torch.Tensor:
        return torch.tensor([s is None for s in self.failed_at])

    def mark(self, x: torch.Tensor) -> torch.Tensor:
        """The final output with diverged samples replaced by NaN."""
        bad = ~self.finite.to(x.device)
        return torch.where(bad.view(-1, *[1] * (x.ndim - 1)), torch.full_like(x, float("nan")), x)
