"""Posterior mean/std maps and calibration: closed forms, and the exact Gaussian posterior through the loop.

With the Gaussian demo prior N(μ, Σ) and y = M x + n, n ~ N(0, s² I), the posterior covariance is
P = (Σ⁻¹ + MᵀM/s²)⁻¹. DAPS with ``prior_solver=exact`` and τ = √2 s samples it (tests/samplers), so the
per-pixel std over n runs estimates sqrt(P_jj) with relative error ≈ 1/sqrt(2(n−1)).
"""
import json
import math

import pytest
import torch

from common.evaluation import uncertainty
from common.models.gaussian import GaussianPrior
from common.random import make_generator
from tests.helpers.evaluation import FixedMask, TensorImages, exact_daps, run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_coverage_of_exact_gaussian_samples_matches_the_student_t_reference():
    g = torch.Generator().manual_seed(0)
    for n in (2, 4, 64):
        truth = torch.randn(200_000, generator=g)
        samples = torch.randn(n, 200_000, generator=g)
        mean, std = uncertainty.moments(samples)
        observed = uncertainty.coverage(truth, mean, std, (0.5, 1.0, 2.0))
        expected = uncertainty.calibrated_coverage(n, (0.5, 1.0, 2.0))
        assert observed == pytest.approx(expected, abs=0.006), n
    # the reference tends to the Gaussian 68 / 95 % as n grows, and lies below it for small n
    assert uncertainty.gaussian_coverage() == pytest.approx([0.6827, 0.9545], abs=1e-4)
    assert uncertainty.calibrated_coverage(10_000) == pytest.approx(uncertainty.gaussian_coverage(), abs=1e-3)
    assert uncertainty.calibrated_coverage(4)[0] < 0.6


def test_moments_need_two_samples_and_heat_map_is_monotone():
    with pytest.raises(ValueError, match="at least 2 samples"):
        uncertainty.moments(torch.zeros(1, 3, 4, 4))
    std = torch.linspace(0, 1, 16).reshape(1, 4, 4).expand(3, 4, 4)
    heat = uncertainty.heat_map(std, vmax=1.0)
    brightness = heat.sum(0).flatten()
    assert heat.shape == (3, 4, 4) and heat.min() >= -1 and heat.max() <= 1
    assert torch.all(brightness[1:] >= brightness[:-1]) and brightness[0] == -3 and brightness[-1] == 3


def test_std_map_matches_exact_posterior_std_on_the_gaussian_prior(tmp_path):
    resolution, sigma_y, runs = 4, 0.1, 64
    prior = GaussianPrior(resolution, mean=[0.1, -0.2, 0.0], variance=[0.25] * 3, alpha=[1.0] * 3, f0=0.2)
    mask = (torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    truth = prior.sample([make_generator(5, i) for i in range(2)])
    directory, summary = run(TensorImages(truth), FixedMask(mask, sigma_y), prior, exact_daps(sigma_y),
                             tmp_path / "gauss", num_runs=runs, batch_size=128)
    cov = prior.dense_covariance()
    m = torch.diag(mask.reshape(-1).double())
    exact_std = torch.linalg.inv(torch.linalg.inv(cov) + m.T @ m / sigma_y ** 2).diag().sqrt()
    rel_error = 1 / math.sqrt(2 * (runs - 1))
    ratios = []
    for image_id in (0, 1):
        maps = torch.load(directory.root / "uncertainty" / f"{image_id:05d}.pt", weights_only=True)
        assert maps["runs"] == list(range(runs))
        ratios.append(maps["std"].double().reshape(-1) / exact_std)
    ratio = torch.cat(ratios)
    # every pixel within 4.5 standard errors; on average within 3 standard errors of the pooled mean
    assert ((ratio - 1).abs() / rel_error).max() < 4.5, ratio
    assert abs(float(ratio.mean()) - 1) < 3 * rel_error / math.sqrt(len(ratio)) + 0.05
    # the truth is a posterior draw: coverage near the exact-sampler reference (96 correlated pixels)
    u = summary["uncertainty"]
    assert u["runs"] == runs and u["images"] == 2
    assert abs(u["coverage_2std"] - u["calibrated_2std"]) < 0.12
    assert abs(u["coverage_1std"] - u["calibrated_1std"]) < 0.2
    # what the run directory holds
    metrics = json.loads((directory.root / "metrics.json").read_text())
    assert metrics["images"]["0"]["posterior"]["psnr_of_mean"] > metrics["images"]["0"]["psnr"]["mean"]
    for name in ("00000_mean.png", "00000_std.png", "calibration.png"):
        assert (directory.root / "uncertainty" / name).is_file()
    assert "Posterior uncertainty" in (directory.root / "eval.md").read_text()
