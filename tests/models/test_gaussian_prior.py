"""The analytic demo prior: its denoiser equals the dense Gaussian conditional mean, for either boundary."""
import pytest
import scipy.fft
import torch
import yaml

from common.errors import SettingError
from common.models import build_model
from common.models.gaussian import dct_matrix
from common.random import make_generator
from tests.helpers.fixtures import REPO

BOUNDARIES = ("periodic", "reflect")


def demo_prior(resolution, boundary=None):
    cfg = yaml.safe_load((REPO / "configs/model/demo.yaml").read_text())
    cfg["resolution"] = resolution
    if boundary is not None:
        cfg["boundary"] = boundary
    return build_model(**cfg)


def test_the_demo_prior_is_the_reflect_one():
    assert demo_prior(4).boundary == "reflect"


def test_dct_matrix_is_scipys_orthonormal_dct_ii():
    for n in (1, 4, 7):
        eye = torch.eye(n, dtype=torch.float64)
        torch.testing.assert_close(dct_matrix(n), torch.from_numpy(scipy.fft.dct(eye.numpy(), type=2, norm="ortho",
                                                                                  axis=0)))
        torch.testing.assert_close(dct_matrix(n) @ dct_matrix(n).T, eye)


def test_only_the_periodic_prior_ties_opposite_edges():
    """Along the top row of the luminance channel: the periodic field wraps around, so the first pixel differs
    from the last one as little as from its right neighbour, Var(x_0 − x_{n−1}) = Var(x_0 − x_1); the reflect
    field has no such tie, its opposite edges differ like pixels n − 1 apart."""
    n = 12
    for boundary in BOUNDARIES:
        cov = demo_prior(n, boundary).dense_covariance().reshape(3, n, n, 3, n, n)[0, 0, :, 0, 0, :]
        wrap, neighbour = (float(cov[0, 0] + cov[j, j] - 2 * cov[0, j]) for j in (n - 1, 1))
        if boundary == "periodic":
            assert wrap == pytest.approx(neighbour, rel=1e-6)
        else:
            assert wrap > 5 * neighbour


def test_unknown_boundary_is_refused_with_its_key():
    with pytest.raises(SettingError, match="boundary.*periodic, reflect"):
        demo_prior(4, "circular")


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_denoiser_equals_dense_wiener_filter(boundary):
    model = demo_prior(6, boundary)
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


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_dense_covariance_is_symmetric_positive_and_matches_samples(boundary):
    model = demo_prior(4, boundary)
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
