r"""Posterior uncertainty from n ≥ 2 samples x̂_1..x̂_n of p(x | y) per image.

Per pixel j:  mean  m_j = (1/n) Σ_r x̂_{r,j},   std  s_j = sqrt( Σ_r (x̂_{r,j} − m_j)² / (n − 1) ).

Calibration. If the samples are exact and the posterior is Gaussian, the truth x and the samples are n + 1
independent draws, so (x_j − m_j) / (s_j √(1 + 1/n)) follows Student's t with n − 1 degrees of freedom:

    P(|x_j − m_j| ≤ k s_j) = P(|T_{n−1}| ≤ k / √(1 + 1/n))      (→ 2Φ(k) − 1 as n → ∞: 68 %, 95 %).

:func:`coverage` measures the left side over the pixels (the fraction of pixels whose error lies within k
std); :func:`calibrated_coverage` gives the right side, :func:`gaussian_coverage` the n → ∞ limit. Below
the reference the sampler is over-confident (too little spread), above it under-confident.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

#: the multiples of the std at which coverage is reported (the figure uses a finer grid)
LEVELS = (1.0, 2.0)
FIGURE_LEVELS = tuple(round(0.1 * i, 1) for i in range(31))


def moments(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased std) over the first axis of (n, ...) samples, n ≥ 2, in float64."""
    if samples.shape[0] < 2:
        raise ValueError(f"posterior moments need at least 2 samples per image, got {samples.shape[0]}")
    samples = samples.double()
    return samples.mean(0), samples.std(0, unbiased=True)


def coverage(truth: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
             levels: Sequence[float] = LEVELS) -> list[float]:
    """Fraction of entries with |truth − mean| ≤ k·std, for each k in ``levels``."""
    error = (truth.double() - mean.double()).abs()
    return [float((error <= k * std.double()).double().mean()) for k in levels]


def gaussian_coverage(levels: Sequence[float] = LEVELS) -> list[float]:
    """2Φ(k) − 1 = erf(k/√2): 0.683 at k = 1, 0.954 at k = 2."""
    return [math.erf(k / math.sqrt(2)) for k in levels]


def calibrated_coverage(runs: int, levels: Sequence[float] = LEVELS) -> list[float]:
    """P(|T_{n−1}| ≤ k/√(1 + 1/n)): the expected coverage of an exact sampler with ``runs`` = n samples."""
    from scipy.stats import t

    scale = math.sqrt(1 + 1 / runs)
    return [float(2 * t.cdf(k / scale, df=runs - 1) - 1) for k in levels]


def std_relative_error(runs: int) -> float:
    """1/√(2(n − 1)): the relative standard error of a std estimated from n = ``runs`` Gaussian samples (the std map's
    own sampling noise: 0.41 at n = 4, 0.18 at n = 16, 0.07 at n = 100)."""
    return 1 / math.sqrt(2 * (runs - 1))


def std_magnitude(std: torch.Tensor) -> torch.Tensor:
    """(C, H, W) per-channel std -> (H, W) root-mean-square over channels."""
    return std.double().pow(2).mean(0).sqrt()


def heat_map(std: torch.Tensor, vmax: float) -> torch.Tensor:
    """(C, H, W) std -> (3, H, W) image in [-1, 1]: black (0) → red → yellow → white (≥ ``vmax``)."""
    v = (std_magnitude(std) / max(vmax, 1e-12)).clamp(0, 1).float()
    red, green, blue = (3 * v).clamp(0, 1), (3 * v - 1).clamp(0, 1), (3 * v - 2).clamp(0, 1)
    return torch.stack([red, green, blue]) * 2 - 1
