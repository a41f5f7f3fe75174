"""The analytic demo prior: its FFT denoiser equals the dense Gaussian conditional mean."""
import torch
import yaml

from conftest import REPO
from common.models import build_model
from common.random import make_generator


def demo_prior(resolution):
    cfg = yaml.safe_load((REPO / "configs/model/demo.yaml").read_text())
    cfg["resolution"] = resolution
    return build_model(**cfg)


def test_denoiser_equals_dense_wiener_filter():
    model = demo_prior(6)
    cov = model.dense_covariance()
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.7, 4.0])
    mu = model.mean.double().expand(3, 6, 6).reshape(-1)
    for i in range(3):
        gain = cov @ torch.linalg.inv(cov + sigma[i] ** 2 * torch.eye(cov.shape[0], dtype=torch.float64))
        expected = mu + gain @ (x[i].reshape(-1) - mu)
        got = model.tweedie(x[i:i + 1].float(), sigma[i]).double().reshape(-1)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    # per-sample sigma gives the same as one call per sample
    batched = model.tweedie(x.float(), sigma)
    single = torch.cat([model.tweedie(x[i:i + 1].float(), sigma[i]) for i in range(3)])
    torch.testing.assert_close(batched, single)


def test_dense_covariance_is_symmetric_positive_and_matches_samples():
    model = demo_prior(4)
    cov = model.dense_covariance()
    torch.testing.assert_close(cov, cov.T)
    assert torch.linalg.eigvalsh(cov).min() > 0
    gens = [make_generator(0, i) for i in range(4000)]
    samples = model.sample(gens).reshape(4000, -1).double()
    emp = torch.cov(samples.T)
    # Monte-Carlo error of a covariance entry is about sqrt((c_ii c_jj + c_ij^2) / n)
    bound = 5 * ((torch.diag(cov)[:, None] * torch.diag(cov)[None] + cov ** 2) / 4000).sqrt()
    assert ((emp - cov).abs() <= bound).float().mean() > 0.99


def test_score_is_tweedie_identity():
    model = demo_prior(8)
    x = torch.randn(2, 3, 8, 8)
    s = model.score(x, 0.3)
    torch.testing.assert_close(s, (model.tweedie(x, 0.3) - x) / 0.09)
