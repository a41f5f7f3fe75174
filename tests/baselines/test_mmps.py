r"""MMPS (baselines/mmps.py) on linear-Gaussian problems with the demo prior and its exact denoiser.

What holds for a Gaussian prior N(μ, Σ) (dense float64 references, written from the joint Gaussian, not from the
sampler's two-stage form):

* Tweedie's covariance is exact, p(x0 | x̄) = N(D, P_σ), P_σ = Σ − Σ (Σ + σ² I)⁻¹ Σ, so with converged CG MMPS's
  D^y equals E[x0 | x̄, y] of the linear-Gaussian model: ``linear_gaussian_posterior(N(D, P_σ), M, y, σ_y)``
  (:func:`test_one_step_is_the_exact_conditional_mean`; float32 arithmetic, tolerance 2e-4 on values of order 1).
* E[x0 | x̄, y] = μ + K₁ (x̄ − μ) + K₂ (y − M μ), [K₁ K₂] = Σ Hᵀ (H Σ Hᵀ + R)⁻¹ with H = [I; M],
  R = diag(σ² I, σ_y² I), so every step x' = D^y + k (x − D^y) + c z is affine in x plus noise and the output
  moments follow a dense recursion (affine_chains.py): the sampler's Monte-Carlo moments must match it
  (:func:`test_samples_match_the_dense_recursion`, z-score tolerances derived there).
* The recursion against the exact posterior isolates the discretisation error of the chain (no Monte-Carlo noise):
  it vanishes as the grid refines (:func:`test_chain_converges_to_the_exact_posterior`) and is measured, not hidden,
  at the paper's 100 steps and at the 33 steps that fit 100 model calls.
"""
import math

import pytest
import torch
from omegaconf import OmegaConf

from baselines.mmps import MMPS, mmps_posterior_mean
from common.errors import SettingError
from common.evaluation.exact_posterior import GaussianMixture, linear_gaussian_posterior
from common.random import make_generator
from common.sampling import build_sampler
from common.sampling.counting import count_calls
from common.sampling.guidance import DenoiserLinearization
from tests.helpers.affine_chains import assert_samples_match, moments_vs_posterior, propagate
from tests.helpers.fixtures import REPO
from tests.helpers.gaussian_cases import assert_batch_invariant, assert_refuses_nonlinear_and_poisson, gaussian_case

pytestmark = pytest.mark.usefixtures("one_thread")

DOWN = dict(name="down_sampling", scale_factor=4)
BOX = dict(name="inpainting", mask_type="box", mask_len_range=[4, 5])
RANDOM = dict(name="inpainting", mask_type="random", mask_prob_range=[0.7, 0.71])


def dense_step(case, sigma: float, sigma_next: float, eta: float, sigma_y: float):
    """(W, w, c) of one MMPS step with the exact conditional mean (module docstring), float64."""
    dim, m = len(case.mean), case.matrix.shape[0]
    h = torch.cat([torch.eye(dim, dtype=torch.float64), case.matrix])
    r = torch.diag(torch.cat([torch.full((dim,), sigma ** 2), torch.full((m,), sigma_y ** 2)]).double())
    gain = case.cov @ h.T @ torch.linalg.inv(h @ case.cov @ h.T + r)
    k1, k2 = gain[:, :dim], gain[:, dim:]
    c = eta * sigma_next * math.sqrt(1 - (sigma_next / sigma) ** 2)
    k = math.sqrt(max(sigma_next ** 2 - c ** 2, 0.0)) / sigma
    y = case.y.double().reshape(-1)
    weight = k * torch.eye(dim, dtype=torch.float64) + (1 - k) * k1
    shift = (1 - k) * (case.mean - k1 @ case.mean + k2 @ (y - case.matrix @ case.mean))
    return weight, shift, c


def dense_moments(case, sampler: MMPS, sigma_y: float = 0.05):
    sigmas = sampler.sigmas()
    steps = (dense_step(case, s, s_next, sampler.eta, sigma_y) for s, s_next in zip(sigmas[:-1], sigmas[1:]))
    return propagate(sigmas[0], steps, len(case.mean))


def exact_posterior(case, sigma_y: float = 0.05) -> GaussianMixture:
    prior = GaussianMixture(torch.ones(1, dtype=torch.float64), case.mean[None], case.cov[None])
    return linear_gaussian_posterior(prior, case.matrix, case.y, sigma_y)


@pytest.mark.parametrize("task", [DOWN, BOX])
@pytest.mark.parametrize("sigma", [0.3, 3.0])
def test_one_step_is_the_exact_conditional_mean(task, sigma):
    case = gaussian_case(task)
    x = case.model.sample([make_generator(7, i) for i in range(2)], sigma=sigma)
    lin = DenoiserLinearization.of(lambda x_bar: case.model.tweedie(x_bar, sigma), x)
    got = mmps_posterior_mean(lin, case.operator, case.y.expand(2, *case.y.shape[1:]), sigma, 0.05, 300)
    eye = torch.eye(len(case.mean), dtype=torch.float64)
    tweedie_cov = case.cov - case.cov @ torch.linalg.solve(case.cov + sigma ** 2 * eye, case.cov)
    for i in range(2):
        given_x = GaussianMixture(torch.ones(1, dtype=torch.float64), lin.value[i].double().reshape(1, -1),
                                  tweedie_cov[None])
        want = linear_gaussian_posterior(given_x, case.matrix, case.y, 0.05).mean
        torch.testing.assert_close(got[i].double().reshape(-1), want, atol=2e-4, rtol=0)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_samples_match_the_dense_recursion(eta):
    """N = 1000 chains of 8 steps, CG converged (12 measurements, 30 iterations allowed)."""
    case = gaussian_case(DOWN)
    sampler = MMPS(num_steps=8, eta=eta, cg_iterations=30, sigma_max=20.0, sigma_min=0.01)
    n = 1000
    samples = sampler.sample(case.model, case.operator, case.y.expand(n, *case.y.shape[1:]),
                             generators=[make_generator(3, i) for i in range(n)]).samples
    mean, cov = dense_moments(case, sampler)
    assert_samples_match(samples, mean, cov)


def test_chain_converges_to_the_exact_posterior():
    """Dense recursion only (no sampling) on a 4×4 demo prior, 2× down-sampling, σ_y = 0.05, η = 1, paper grid.

    Measured (mean_z, std_ratio): 33 steps (2e-6, 0.844), 100 steps (2e-6, 0.944), 1000 steps (2e-6, 0.994); the
    same std ratios to 3 digits on the 8×8 ×4 down-sampling and box-inpainting problems (the grid is geometric, so
    the loss per posterior direction does not depend on its variance). The mean is exact at every step count (what
    remains is the start N(0, σ_max² I) instead of N(μ, Σ + σ_max² I)); the ancestral step loses variance
    λ (v − u)²/(v (λ + v)) per step for a posterior direction of variance λ (u = σ'², v = σ²), which vanishes
    as the grid refines. (η = 0 gives 0.913 / 0.971 / 0.996 with a mean_z of 0.002.)
    """
    case = gaussian_case(dict(name="down_sampling", scale_factor=2), resolution=4)
    exact = exact_posterior(case)
    results = {n: moments_vs_posterior(*dense_moments(case, MMPS(num_steps=n)), exact.mean, exact.covariance)
               for n in (33, 100, 1000)}
    assert all(z < 1e-4 for z, _ in results.values())
    assert 0.83 < results[33][1] < 0.86 and 0.93 < results[100][1] < 0.96 and 0.99 < results[1000][1] <= 1.0


def test_model_calls_are_counted_with_the_backward_passes():
    """Per step 1 forward + cg_iterations + 1 backward passes (M·0 = 0 costs none), as ``model_calls`` states."""
    case = gaussian_case(RANDOM)
    sampler = MMPS(num_steps=3, cg_iterations=2)
    with count_calls(case.model) as counts:
        sampler.sample(case.model, case.operator, case.y, generators=[make_generator(0, 0)])
    assert counts["nfe"] + counts["vjp"] == sampler.model_calls == 12 and counts["nfe"] == 3


def test_batch_size_invariance_and_determinism():
    assert_batch_invariant(MMPS(num_steps=4, cg_iterations=2), RANDOM)


def test_refusals():
    """Non-linear operators (no "linear" capability), Poisson noise and bad settings are refused by name."""
    assert_refuses_nonlinear_and_poisson(MMPS, DOWN)
    for key, value in (("num_steps", 0), ("num_steps", 10.0), ("eta", 1.5), ("eta", float("nan")),
                       ("cg_iterations", 0), ("sigma_max", float("inf")), ("sigma_min", 0.0)):
        with pytest.raises(SettingError, match=key):
            MMPS(**{key: value})
    with pytest.raises(SettingError, match="sigma_min"):
        MMPS(sigma_min=10.0, sigma_max=1.0)


def test_config_builds_the_paper_defaults_and_grid():
    """configs/sampler/mmps.yaml: 100 steps, η = 1, 1 CG iteration, σ from 1e2 down to 1e-3 (geometric)."""
    sampler = build_sampler(OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "sampler" / "mmps.yaml")))
    assert (sampler.num_steps, sampler.eta, sampler.cg_iterations) == (100, 1.0, 1)
    sigmas = sampler.sigmas()
    assert len(sigmas) == 101 and sigmas[-1] == 0.0
    assert math.isclose(sigmas[0], 100.0) and math.isclose(sigmas[-2], 1e-3)
    ratios = [a / b for a, b in zip(sigmas[:-2], sigmas[1:-1])]
    assert max(ratios) - min(ratios) < 1e-9
