r"""Exact posteriors of Gaussian and Gaussian-mixture priors under linear-Gaussian measurements, and the
metrics that compare a sampler's output with them.

Measurement y = M x + n, n ~ N(0, s² I), M the operator as a dense (m, D) matrix (:func:`dense_operator`).
For one Gaussian component N(μ, Σ) (Kalman form, no inverse of Σ needed):

    S = M Σ Mᵀ + s² I,   K = Σ Mᵀ S⁻¹,
    p(x | y) = N(m, P),  m = μ + K (y − M μ),   P = Σ − K M Σ,
    p(y) = N(y; M μ, S)                                          (the evidence).

For a mixture p(x) = Σ_k w_k N(μ_k, Σ_k) each component updates as above and the weights by Bayes' rule:

    p(x | y) = Σ_k π_k N(m_k, P_k),   π_k ∝ w_k N(y; M μ_k, S_k).

Metrics of n samples x_1..x_n (flattened to D pixels) against an exact posterior with mean m̄ and
moment-matched covariance C = Σ_k π_k (P_k + m_k m_kᵀ) − m̄ m̄ᵀ:

* mean error: RMSE ‖x̄ − m̄‖/√D, and in posterior-std units z = sqrt(mean_i (x̄_i − m̄_i)² / C_ii)
  (≈ 1/√n for an exact sampler: the Monte-Carlo floor);
* calibration: std ratio = mean_i ŝ_i / sqrt(C_ii) (1 = calibrated, < 1 over-confident);
* Gaussian (Bures) 2-Wasserstein distance between N(x̄, Ĉ) and N(m̄, C), per pixel (divided by √D):
  W₂² = ‖x̄ − m̄‖² + tr Ĉ + tr C − 2 tr (C^½ Ĉ C^½)^½;
* mode weights (mixtures): each sample goes to its most probable exact component, argmax_k π_k N(x; m_k, P_k);
  the error is the total variation ½ Σ_k |n_k/n − π_k|.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from common.models.base import DiffusionModel
from common.operators.base import Operator
from common.random import rand, randn


@dataclass
class GaussianMixture:
    """Σ_k weights[k] N(means[k], covs[k]) on flattened images; float64; K = 1 for a Gaussian."""

    weights: torch.Tensor  # (K,)
    means: torch.Tensor    # (K, D)
    covs: torch.Tensor     # (K, D, D)

    @property
    def mean(self) -> torch.Tensor:
        """m̄ = Σ_k π_k m_k, shape (D,)."""
        return self.weights @ self.means

    @property
    def covariance(self) -> torch.Tensor:
        """C = Σ_k π_k (P_k + m_k m_kᵀ) − m̄ m̄ᵀ, shape (D, D)."""
        second = torch.einsum("k,kij->ij", self.weights, self.covs) \
            + torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        mean = self.mean
        return second - torch.outer(mean, mean)

    def _roots(self) -> torch.Tensor:
        """Symmetric square roots P_k^½ (eigenvalues clamped at 0 against round-off), shape (K, D, D)."""
        evals, evecs = torch.linalg.eigh(self.covs)
        return evecs @ (evals.clamp_min(0).sqrt()[..., None] * evecs.transpose(-1, -2))

    def sample(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Exact draws, one per generator: k ~ π (inverse CDF of a uniform), then m_k + P_k^½ z; shape (n, D)."""
        roots = self._roots()
        u = rand((), generators, dtype=torch.float64).cpu()
        which = torch.searchsorted(self.weights.cumsum(0)[:-1].contiguous(), u.contiguous(), right=True)
        z = randn((self.means.shape[1],), generators, dtype=torch.float64).cpu()
        out = torch.empty_like(z)
        for k in range(len(self.weights)):
            rows = which == k
            out[rows] = self.means[k] + z[rows] @ roots[k]
        return out

    def log_component_densities(self, x: torch.Tensor) -> torch.Tensor:
        """log π_k + log N(x; m_k, P_k), shape (n, K); a pseudo-inverse where P_k is singular."""
        evals, evecs = torch.linalg.eigh(self.covs)
        floor = evals.amax(-1, keepdim=True) * 1e-12
        keep = evals > floor
        inv = torch.where(keep, 1 / evals.clamp_min(1e-300), torch.zeros_like(evals))
        centred = x.double()[:, None, :] - self.means[None]                       # (n, K, D)
        proj = torch.einsum("kdj,nkd->nkj", evecs, centred)
        quad = (proj.pow(2) * inv[None]).sum(-1)
        log_det = torch.where(keep, evals.clamp_min(1e-300).log(), torch.zeros_like(evals)).sum(-1)
        return self.weights.log()[None] - 0.5 * quad - 0.5 * log_det[None]

    def mode_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Fraction of the samples x (n, D) whose most probable component is k, shape (K,)."""
        assign = self.log_component_densities(x).argmax(1)
        return torch.bincount(assign, minlength=len(self.weights)).double() / x.shape[0]


def prior_mixture(model: DiffusionModel) -> GaussianMixture:
    """The model's prior as a :class:`GaussianMixture` (Gaussian demo prior: K = 1; ``gmm``: its components)."""
    if hasattr(model, "gaussian_components"):
        parts = model.gaussian_components()
    elif hasattr(model, "dense_covariance"):
        mean = model.mean.double().expand(model.sample_shape).reshape(-1)
        parts = [(1.0, mean, model.dense_covariance())]
    else:
        raise ValueError(f"{type(model).__name__} has no closed-form prior; exact posteriors need a Gaussian "
                         f"(gaussian_demo) or Gaussian-mixture (gmm) model")
    return GaussianMixture(torch.tensor([p[0] for p in parts], dtype=torch.float64),
                           torch.stack([p[1] for p in parts]), torch.stack([p[2] for p in parts]))


@torch.no_grad()
def dense_operator(operator: Operator, shape: Sequence[int]) -> torch.Tensor:
    """M (m, D) float64 with M e_j = A(e_j) for the D = C·H·W basis images e_j (A linear, its state installed)."""
    if not operator.linear:
        raise ValueError(f"{type(operator).__name__} is not linear; exact posteriors need a linear operator")
    dim = math.prod(shape)
    basis = torch.eye(dim, dtype=torch.float64).reshape(dim, *shape)
    return operator(basis).reshape(dim, -1).T.contiguous()


def linear_gaussian_posterior(prior: GaussianMixture, matrix: torch.Tensor, y: torch.Tensor,
                              sigma_y: float) -> GaussianMixture:
    """p(x | y) for y = M x + N(0, s² I) (module docstring), ``y`` flattened to (m,), ``sigma_y`` = s > 0."""
    if not sigma_y > 0:
        raise ValueError(f"sigma_y={sigma_y!r} must be > 0 for a linear-Gaussian posterior")
    y = y.double().reshape(-1)
    m_mat = matrix.double()
    cov_m = prior.covs @ m_mat.T                                                 # Σ Mᵀ, (K, D, m)
    innov = m_mat @ cov_m + sigma_y ** 2 * torch.eye(len(y), dtype=torch.float64)  # S, (K, m, m)
    chol = torch.linalg.cholesky(innov)
    resid = y[None] - prior.means @ m_mat.T                                      # y − M μ_k, (K, m)
    gain_t = torch.cholesky_solve(cov_m.transpose(1, 2), chol)                   # S⁻¹ M Σ = Kᵀ
    means = prior.means + torch.einsum("kmd,km->kd", gain_t, resid)
    covs = prior.covs - cov_m @ gain_t
    covs = 0.5 * (covs + covs.transpose(1, 2))
    white = torch.linalg.solve_triangular(chol, resid[..., None], upper=False)[..., 0]
    log_evidence = -0.5 * white.pow(2).sum(-1) - torch.diagonal(chol, dim1=1, dim2=2).log().sum(-1)
    weights = torch.softmax(prior.weights.log() + log_evidence, 0)
    return GaussianMixture(weights, means, covs)


def bures_w2(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor) -> float:
    """W₂(N(a), N(b)) = sqrt(‖m_a − m_b‖² + tr C_a + tr C_b − 2 tr (C_b^½ C_a C_b^½)^½)."""
    evals, evecs = torch.linalg.eigh(cov_b.double())
    root_b = evecs @ (evals.clamp_min(0).sqrt()[:, None] * evecs.T)
    cross = torch.linalg.eigvalsh(root_b @ cov_a.double() @ root_b).clamp_min(0).sqrt().sum()
    w2 = (mean_a - mean_b).double().pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross
    return float(w2.clamp_min(0).sqrt())


def sample_metrics(samples: torch.Tensor, exact: GaussianMixture) -> dict[str, float]:
    """The metrics of the module docstring for samples (n, …) against ``exact``; ``mode_tv`` only when K > 1.

    Samples with a non-finite value (diverged chains) are left out; ``diverged`` is their fraction.
    """
    x = samples.double().reshape(samples.shape[0], -1)
    finite = torch.isfinite(x).all(1)
    x, dim = x[finite], x.shape[1]
    diverged = 1 - float(finite.double().mean())
    if x.shape[0] < 2:
        nan = float("nan")
        return {"mean_rmse": nan, "mean_z": nan, "std_ratio": nan, "w2": nan, "diverged": diverged,
                **({"mode_tv": nan} if len(exact.weights) > 1 else {})}
    mean, cov = exact.mean, exact.covariance
    var = cov.diagonal().clamp_min(1e-300)
    x_mean, x_cov = x.mean(0), torch.cov(x.T)
    err = x_mean - mean
    out = {
        "mean_rmse": float(err.pow(2).mean().sqrt()),
        "mean_z": float((err.pow(2) / var).mean().sqrt()),
        "std_ratio": float((x_cov.diagonal().clamp_min(0).sqrt() / var.sqrt()).mean()),
        "w2": bures_w2(x_mean, x_cov, mean, cov) / math.sqrt(dim),
        "diverged": diverged,
    }
    if len(exact.weights) > 1:
        out["mode_tv"] = float(0.5 * (exact.mode_weights(x) - exact.weights).abs().sum())
    return out
