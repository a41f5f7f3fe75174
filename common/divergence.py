"""Per-sample divergence bookkeeping shared by the samplers.

A chain that produces NaN/inf is not silently repaired: the first step at which each sample stopped being
finite is recorded, the sample is zeroed in the working state so that the rest of the batch carries on,
and it is returned as NaN so that the run marks that image failed (with the step).
"""
from __future__ import annotations

import torch


class DivergenceTracker:
    """Tracks, for a batch of chains, the first step at which each became non-finite.

    The record lives on the samples' device (``first_bad``, −1 while finite) so that checking costs no
    host–device synchronisation; :attr:`failed_at` reads it once, after sampling.
    """

    def __init__(self, batch_size: int) -> None:
        self.first_bad = torch.full((batch_size,), -1, dtype=torch.long)

    def check(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Record newly diverged samples at ``step``; return x with diverged samples set to 0."""
        finite = torch.isfinite(x).flatten(1).all(1)
        first_bad = self.first_bad.to(x.device)
        self.first_bad = torch.where(~finite & (first_bad < 0), step, first_bad)
        return torch.where(finite.view(-1, *[1] * (x.ndim - 1)), x, torch.zeros_like(x))

    @property
    def finite(self) -> torch.Tensor:
        """Per-sample bool on the samples' device: True while the chain has stayed finite."""
        return self.first_bad < 0

    @property
    def failed_at(self) -> list[int | None]:
        """First non-finite step per sample (None: never); synchronises, read it after sampling."""
        return [None if s < 0 else s for s in self.first_bad.tolist()]

    def mark(self, x: torch.Tensor) -> torch.Tensor:
        """The final output with diverged samples replaced by NaN."""
        bad = ~self.finite.to(x.device)
        return torch.where(bad.view(-1, *[1] * (x.ndim - 1)), torch.full_like(x, float("nan")), x)
