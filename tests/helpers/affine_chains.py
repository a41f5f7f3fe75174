r"""Exact output moments of samplers whose every step is affine in the state plus fresh Gaussian noise.

On a Gaussian prior N(μ, Σ) with its exact (linear) denoiser and a linear A, a guided DDIM step with an exact
(converged or closed-form) linear solve maps the state x to W x + w + c z, z ~ N(0, I). The output is then Gaussian,
with mean and covariance from the float64 recursion m' = W m + w, S' = W S Wᵀ + c² I started from the initial
N(0, s0² I). The tests write each step's (W, w, c) from the papers' equations in dense form, independently of the
samplers' code, and compare (a) the samplers' Monte-Carlo moments with the recursion and (b) the recursion with the
exact posterior (the method's own approximation and discretisation error, no Monte-Carlo noise).
"""
from __future__ import annotations

from typing import Iterable

import torch

#: z-score bound for a per-coordinate sample mean: P(max over ≤ 200 coordinates |z| > 4.5) ≤ 200 · 6.8e-6 < 1.4e-3
Z_MAX = 4.5


def propagate(start_std: float, steps: Iterable[tuple[torch.Tensor, torch.Tensor, float]],
              dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, covariance) after the affine steps (W, w, c) from N(0, start_std² I), float64."""
    mean = torch.zeros(dim, dtype=torch.float64)
    cov = start_std ** 2 * torch.eye(dim, dtype=torch.float64)
    for weight, shift, noise_std in steps:
        mean = weight @ mean + shift
        cov = weight @ cov @ weight.T + noise_std ** 2 * torch.eye(dim, dtype=torch.float64)
    return mean, cov


def assert_samples_match(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> None:
    """Per coordinate: |x̄ − m| ≤ Z_MAX sqrt(S_ii/n), and the sample variance within 5 standard deviations of the χ²
    law, |ŝ²/S_ii − 1| ≤ 5 sqrt(2/(n − 1)) (same union-bound margin)."""
    x = samples.double().flatten(1)
    n = x.shape[0]
    var = cov.diagonal()
    z = (x.mean(0) - mean) / (var / n).sqrt()
    assert z.abs().max() <= Z_MAX, f"max |z| of the sample mean = {z.abs().max():.2f}"
    ratio = x.var(0) / var
    assert (ratio - 1).abs().max() <= 5 * (2 / (n - 1)) ** 0.5, \
        f"variance ratios in [{ratio.min():.3f}, {ratio.max():.3f}]"


def moments_vs_posterior(mean: torch.Tensor, cov: torch.Tensor, post_mean: torch.Tensor,
                         post_cov: torch.Tensor) -> tuple[float, float]:
    """(mean_z, std_ratio) of common.evaluation.exact_posterior.sample_metrics for exact output moments instead of
    samples."""
    var = post_cov.diagonal()
    mean_z = float(((mean - post_mean) ** 2 / var).mean().sqrt())
    std_ratio = float((cov.diagonal().sqrt() / var.sqrt()).mean())
    return mean_z, std_ratio
