"""The exact-posterior formulas of common.evaluation.exact_posterior against brute force, and its metrics against
closed forms.

* 2-D Gaussian prior, y = M x + n: self-normalised importance sampling of prior draws with weights
  N(y; M x, s²) estimates the posterior mean and covariance; its error is bounded by the effective sample
  size (tolerance 5 Monte-Carlo standard errors).
* 2-D mixture: posterior weights and mean by numerical integration on a fine grid (trapezoid rule).
* The dense operator matrix reproduces the operators, and the Kalman form equals the information form.
"""
import math

import pytest
import torch

from common.evaluation.exact_posterior import (
    GaussianMixture,
    bures_w2,
    dense_operator,
    linear_gaussian_posterior,
    prior_mixture,
    sample_metrics,
)
from common.models.gaussian import GaussianPrior
from common.operators import build_operator
from common.random import make_generator


def _mixture(weights, means, covs):
    return GaussianMixture(torch.tensor(weights, dtype=torch.float64), torch.tensor(means, dtype=torch.float64),
                           torch.tensor(covs, dtype=torch.float64))


def test_gaussian_posterior_matches_importance_sampling():
    prior = _mixture([1.0], [[0.3, -0.5]], [[[1.0, 0.6], [0.6, 0.8]]])
    matrix = torch.tensor([[1.0, -0.7]], dtype=torch.float64)
    y, s = torch.tensor([0.9], dtype=torch.float64), 0.4
    post = linear_gaussian_posterior(prior, matrix, y, s)
    g = torch.Generator().manual_seed(0)
    chol = torch.linalg.cholesky(prior.covs[0])
    x = prior.means[0] + torch.randn(400_000, 2, generator=g, dtype=torch.float64) @ chol.T
    logw = -0.5 * ((x @ matrix.T - y) ** 2).sum(1) / s ** 2
    w = torch.softmax(logw, 0)
    ess = 1 / w.pow(2).sum()
    mean = w @ x
    centred = x - mean
    cov = (w[:, None] * centred).T @ centred
    se_mean = (post.covs[0].diagonal() / ess).sqrt()
    assert ((mean - post.means[0]).abs() < 5 * se_mean).all(), (mean, post.means[0], se_mean)
    # covariance entries: standard error ~ sqrt((P_ii P_jj + P_ij²)/ESS)
    p = post.covs[0]
    se_cov = ((p.diagonal()[:, None] * p.diagonal()[None] + p ** 2) / ess).sqrt()
    assert ((cov - p).abs() < 5 * se_cov).all(), (cov, p)
    assert post.weights.tolist() == [1.0]


def test_mixture_weights_and_mean_match_numerical_integration():
    prior = _mixture([0.5, 0.3, 0.2], [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.5]],
                     [[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.5]], [[0.4, -0.2], [-0.2, 0.3]]])
    matrix = torch.tensor([[0.8, 0.6]], dtype=torch.float64)
    y, s = torch.tensor([0.2], dtype=torch.float64), 0.3
    post = linear_gaussian_posterior(prior, matrix, y, s)
    grid = torch.linspace(-6, 6, 1201, dtype=torch.float64)
    gx, gy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([gx, gy], -1).reshape(-1, 2)
    like = torch.exp(-0.5 * ((pts @ matrix.T - y) ** 2).sum(1) / s ** 2)
    masses = []
    for w, mu, cov in zip(prior.weights, prior.means, prior.covs):
        d = pts - mu
        quad = (d @ torch.linalg.inv(cov) * d).sum(1)
        dens = w * torch.exp(-0.5 * quad) / (2 * math.pi * torch.linalg.det(cov).sqrt())
        masses.append(dens * like)
    def integrate(f):
        return torch.trapezoid(torch.trapezoid(f.reshape(len(grid), len(grid)), grid, dim=1), grid)
    z = [integrate(m) for m in masses]
    weights = torch.stack(z) / sum(z)
    torch.testing.assert_close(post.weights, weights, atol=1e-6, rtol=0)
    total = sum(masses)
    mean = torch.stack([integrate(total * pts[:, i]) for i in range(2)]) / sum(z)
    torch.testing.assert_close(post.mean, mean, atol=1e-6, rtol=0)


def test_exact_draws_and_mode_weights():
    post = _mixture([0.6, 0.4], [[-3.0, 0.0], [3.0, 1.0]], [[[0.5, 0.1], [0.1, 0.3]], [[0.2, 0.0], [0.0, 0.4]]])
    n = 4000
    x = post.sample([make_generator(3, i) for i in range(n)])
    # mode fractions: binomial error sqrt(0.24/n) = 0.0077; modes 6 std apart so classification is exact
    frac = post.mode_weights(x)
    assert abs(float(frac[0]) - 0.6) < 5 * math.sqrt(0.24 / n)
    cov = post.covariance
    se = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - post.mean).abs() < 5 * se).all()
    assert torch.allclose(torch.cov(x.T), cov, rtol=0.1, atol=0.05)


def test_bures_w2_closed_forms():
    m1, m2 = torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
    c1 = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    c2 = torch.diag(torch.tensor([1.0, 9.0], dtype=torch.float64))
    # commuting covariances: W2² = |Δm|² + Σ (√a − √b)²
    assert bures_w2(m1, c1, m2, c2) == pytest.approx(math.sqrt(1 + 1 + 4), rel=1e-10)
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64)
    assert bures_w2(m1, rot @ c1 @ rot.T, m1, rot @ c1 @ rot.T) == pytest.approx(0.0, abs=1e-6)
    # symmetric in its arguments
    c3 = rot @ c2 @ rot.T
    assert bures_w2(m1, c1, m2, c3) == pytest.approx(bures_w2(m2, c3, m1, c1), rel=1e-8)


def test_metrics_of_exact_samples_sit_at_the_monte_carlo_floor():
    post = _mixture([1.0], [[0.0] * 6], [torch.diag(torch.linspace(0.1, 2.0, 6, dtype=torch.float64)).tolist()])
    n = 2000
    metrics = sample_metrics(post.sample([make_generator(4, i) for i in range(n)]), post)
    assert metrics["mean_z"] < 4 / math.sqrt(n)          # E[mean_z²] = 1/n
    assert abs(metrics["std_ratio"] - 1) < 0.05           # std error of a std: 1/sqrt(2n) = 0.016
    assert metrics["diverged"] == 0 and "mode_tv" not in metrics
    shrunk = sample_metrics(0.5 * post.sample([make_generator(4, i) for i in range(n)]), post)
    assert abs(shrunk["std_ratio"] - 0.5) < 0.03          # over-confidence is seen as a ratio < 1
    with_nan = post.sample([make_generator(5, i) for i in range(10)])
    with_nan[0, 0] = float("nan")
    assert sample_metrics(with_nan, post)["diverged"] == pytest.approx(0.1)


@pytest.mark.parametrize("task", [
    dict(name="down_sampling", scale_factor=4),
    dict(name="inpainting", mask_type="box", mask_len_range=[4, 5]),
    dict(name="inpainting", mask_type="random", mask_prob_range=[0.7, 0.71]),
    dict(name="gaussian_blur", kernel_size=5, intensity=1.0),
])
def test_dense_operator_reproduces_the_operator(task):
    op = build_operator(sigma=0.05, resolution=8, **task)
    op.set_state({k: v[None] for k, v in op.draw_state(make_generator(0, 0)).items()})
    matrix = dense_operator(op, (3, 8, 8))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(matrix.float() @ x.reshape(2, -1).T, op(x).reshape(2, -1).T, atol=1e-5, rtol=0)
    y = torch.randn(op(x).shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close((matrix.T.float() @ y.reshape(2, -1).T).T, op.adjoint(y).reshape(2, -1),
                               atol=1e-5, rtol=0)


def test_kalman_form_equals_information_form_on_the_demo_prior():
    prior_model = GaussianPrior(4, mean=[0.1, -0.2, 0.0], variance=[0.25, 0.1, 0.05], alpha=[2.0, 2.5, 1.5], f0=0.2)
    prior = prior_mixture(prior_model)
    op = build_operator("down_sampling", sigma=0.1, resolution=4, scale_factor=2)
    matrix = dense_operator(op, (3, 4, 4))
    y = op.measure(prior_model.sample([make_generator(0, 1)]), [make_generator(0, 2)])
    post = linear_gaussian_posterior(prior, matrix, y, 0.1)
    cov, mu = prior.covs[0], prior.means[0]
    precision = torch.linalg.inv(cov) + matrix.T @ matrix / 0.01
    p = torch.linalg.inv(precision)
    m = p @ (torch.linalg.solve(cov, mu) + matrix.T @ y.double().reshape(-1) / 0.01)
    torch.testing.assert_close(post.means[0], m, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(post.covs[0], p, atol=1e-9, rtol=1e-7)


def test_bad_inputs_are_refused():
    prior = _mixture([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, 1.0]]])
    with pytest.raises(ValueError, match="sigma_y"):
        linear_gaussian_posterior(prior, torch.eye(2, dtype=torch.float64), torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="not linear"):
        dense_operator(build_operator("phase_retrieval", sigma=0.05, resolution=4, oversample=0.0), (1, 4, 4))
    with pytest.raises(ValueError, match="closed-form"):
        prior_mixture(torch.nn.Identity())
