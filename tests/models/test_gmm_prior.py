"""The Gaussian-mixture prior (model=gmm): its closed-form denoiser against dense brute force, its limits,
its sampler, its config, and the CLI end to end."""
import math
import subprocess
import sys

import pytest
import torch
import yaml

from common.models import MODELS, build_model
from common.models.gaussian import GaussianPrior
from common.models.gmm import GaussianMixturePrior
from common.random import make_generator
from tests.helpers.fixtures import REPO

DEMO = dict(variance=[0.25, 0.1, 0.05], alpha=[2.0, 2.5, 1.5])


def small_mixture(resolution=4, boundary="periodic"):
    comps = [dict(weight=0.5, mean=[0.3, 0.0, -0.2], **DEMO),
             dict(weight=0.3, mean=[-0.4, 0.2, 0.1], variance=[0.1, 0.2, 0.02], alpha=[1.0, 3.0, 2.0]),
             dict(weight=0.2, mean=torch.linspace(-0.5, 0.5, 3 * resolution ** 2).reshape(3, resolution, resolution)
                  .tolist(), **DEMO)]
    return GaussianMixturePrior(resolution, comps, f0=0.2, boundary=boundary)


def dense_tweedie(model, x, sigma):
    """E[x0 | x] for p = Σ w_k N(μ_k, Σ_k), x = x0 + σ ε, with dense matrices (one sample, sigma a float)."""
    logits, means = [], []
    for w, mu, cov in model.gaussian_components():
        c = cov + sigma ** 2 * torch.eye(len(mu), dtype=torch.float64)
        chol = torch.linalg.cholesky(c)
        d = x.double().reshape(-1) - mu
        sol = torch.cholesky_solve(d[:, None], chol)[:, 0]
        logits.append(math.log(w) - 0.5 * d @ sol - chol.diagonal().log().sum())
        means.append(mu + cov @ sol)
    r = torch.softmax(torch.stack(logits), 0)
    return sum(r[k] * means[k] for k in range(len(means))), r


@pytest.mark.parametrize("boundary", ["periodic", "reflect"])
@pytest.mark.parametrize("sigma", [0.02, 0.3, 2.0, 50.0])
def test_denoiser_matches_dense_bayes(sigma, boundary):
    model = small_mixture(boundary=boundary)
    x0 = model.sample([make_generator(1, i) for i in range(3)])
    x = x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    out = model.tweedie(x, sigma)
    resp = model.responsibilities(x, sigma)
    for b in range(3):
        expected, r = dense_tweedie(model, x[b], sigma)
        torch.testing.assert_close(out[b].double().reshape(-1), expected, atol=2e-5 * max(1, sigma), rtol=1e-4)
        torch.testing.assert_close(resp[b], r, atol=1e-5, rtol=0)


def test_per_sample_sigma_equals_scalar_sigma():
    model = small_mixture()
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.1, 1.0, 10.0])
    batched = model.tweedie(x, sigmas)
    single = torch.cat([model.tweedie(x[i:i + 1], float(s)) for i, s in enumerate(sigmas)])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=1e-6)


def test_one_component_is_the_gaussian_prior():
    mixture = GaussianMixturePrior(4, [dict(weight=1.0, mean=[0.1, -0.2, 0.0], **DEMO)], f0=0.2)
    gauss = GaussianPrior(4, mean=[0.1, -0.2, 0.0], f0=0.2, **DEMO)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mixture.tweedie(x, 0.5), gauss.tweedie(x, 0.5), atol=1e-6, rtol=1e-5)


def test_responsibility_limits():
    model = small_mixture()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    # σ → ∞: the data says nothing, r → w
    torch.testing.assert_close(model.responsibilities(x, 1e4), model.weights.expand(2, -1), atol=1e-3, rtol=0)
    # σ → 0 at a component's mean: that component (the means are many std apart)
    at_means = model.means
    assert torch.equal(model.responsibilities(at_means, 1e-3).argmax(1), torch.arange(3))


def test_sampler_frequencies_and_determinism():
    model = small_mixture()
    n = 600
    gens = lambda: [make_generator(9, i) for i in range(n)]
    x = model.sample(gens())
    assert torch.equal(x, model.sample(gens()))
    assert torch.equal(x[5:6], model.sample([make_generator(9, 5)]))
    # component of each draw: responsibilities at σ ≈ 0 (the components are well separated)
    counts = torch.bincount(model.responsibilities(x, 1e-3).argmax(1), minlength=3).double() / n
    se = (model.weights * (1 - model.weights) / n).sqrt()
    assert ((counts - model.weights).abs() < 5 * se).all(), counts
    # overall mean: Σ w_k μ_k
    mean = torch.einsum("k,kchw->chw", model.weights.float(), model.means)
    assert (x.mean(0) - mean).abs().max() < 0.15


def test_bad_components_are_refused():
    with pytest.raises(ValueError, match="need a list of one or more components"):
        GaussianMixturePrior(4, [])
    with pytest.raises(ValueError, match=r"missing setting components\[0\]\.alpha: required"):
        GaussianMixturePrior(4, [dict(weight=1.0, mean=[0, 0, 0], variance=[1, 1, 1])])
    with pytest.raises(ValueError, match=r"components\[0\].weight=0.0 is not valid: need a finite number > 0"):
        GaussianMixturePrior(4, [dict(weight=0.0, mean=[0, 0, 0], **DEMO)])
    with pytest.raises(ValueError, match=r"components\[0\].mean=\[\[0.0, 1.0\]\] .*full image of shape"):
        GaussianMixturePrior(4, [dict(weight=1.0, mean=[[0.0, 1.0]], **DEMO)])


def test_cli_config_builds_the_registered_model():
    cfg = yaml.safe_load((REPO / "configs" / "model" / "gmm.yaml").read_text())
    assert cfg["name"] == "gmm" and "gmm" in MODELS.names()
    cfg["resolution"] = 8
    model = build_model(**cfg)
    assert model.sample_shape == (3, 8, 8) and len(model.covariances) == len(cfg["components"])
    torch.testing.assert_close(model.weights.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.slow
def test_cli_runs_end_to_end_with_model_gmm(tmp_path):
    cmd = [sys.executable, "posterior_sample.py", "model=gmm", "data.resolution=16", "data.end_id=1",
           "batch_size=1", "sampler.annealing_scheduler_config.num_steps=2",
           "sampler.diffusion_scheduler_config.num_steps=1", "task.gaussian.mcmc_sampler_config.num_steps=2",
           "eval_fn_list=[psnr]", "save_traj=false", "show_progress=false", f"save_dir={tmp_path}", "name=gmm"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "gmm" / "metrics.json").is_file()
