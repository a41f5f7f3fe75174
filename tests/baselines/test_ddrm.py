r"""DDRM (baselines/ddrm.py) on linear-Gaussian problems, where its output distribution is known in closed form.

What holds, with a Gaussian prior N(μ, Σ) and its exact (linear) denoiser (derivation in spectral_moments.py):

* every DDRM step is affine in the state plus fresh Gaussian noise, so the output is Gaussian with a mean and
  covariance computable by a dense float64 recursion; the sampler's Monte-Carlo moments must match them
  (:func:`test_moments_match_the_dense_recursion`, for a correlated prior and a dense A with non-trivial U, V);
* σ_y = 0: the last step (σ' = 0) sets every coefficient with s_i > 0 to ȳ_i, so A x = y exactly (range-space
  part A⁺y, no variance there) for any prior;
* σ_y = 0 and a prior with independent coefficients in A's right-singular basis (Σ = V diag(λ) Vᵀ): the null-space
  coefficients run the unconditional chain from a mean-zero start, whose mean recursion
  E[c'] − m = (k + sqrt(1 − η²)(σ'/σ)(1 − k)) (E[c] − m), k = λ/(λ + σ²), contracts the start error |m| to
  < 1e-6 prior std within the 20 steps, so the sample mean equals the exact posterior mean up to Monte-Carlo error.
  The variance is not exact: DDRM re-noises a fixed fraction η of σ' at every step (not a step-size dependent DDPM
  variance), which loses posterior variance at every step; in the many-step limit the null-space variance tends to
  (1 + sqrt(1 − η²))/2 of the prior's (η = 1: one half; only η = 0, the probability-flow ODE, is exact there).
  At the paper's 20 steps the dense recursion gives null-space variance ratios 0.19–0.45 for the test prior.
* With a correlated prior DDRM is biased even in the mean, at any step count: its denoiser sees the range
  coefficients re-drawn as ȳ + σ z with fresh z at every step, so the null-space mean tracks
  μ_u + Σ_ur (Σ_rr + σ² I)⁻¹ (ȳ − μ_r) rather than the posterior's Σ_ur Σ_rr⁻¹; on the correlated problem below the
  dense recursion gives mean_z 3.5 (σ_y = 0) and 3.4 (σ_y = 0.05) posterior stds at 20 steps and 0.61 / 1.31 at
  1000 steps.

Monte-Carlo tolerances. Against a known N(M, S): pooled over the k eigen-directions of S, T = N ‖S^{-1/2}(x̄ − M)‖² is
χ²_k, and the test allows (T − k)/sqrt(2k) < 5 (P ≈ 1e-5 for k = 48); along each eigen-direction the sample
variance over the eigenvalue is 1 ± sqrt(2/(N − 1)) (χ²_{N−1}/(N−1)), and the test allows 5 of those for each
(union bound over 48 directions < 1e-4) and 5·sqrt(2/(k(N − 1))) for their average. Against a mean only (the
samples' own std): per coordinate z = (x̄ − M)/(ŝ/sqrt(N)) ~ N(0, 1), max |z| < 4.5 over 24 coordinates
(P < 2e-4).
"""
import math

import pytest
import torch
from omegaconf import OmegaConf

from baselines.ddrm import DDRM, Spectrum, gaussian_noise_sigma
from common.errors import ConfigError, SettingError
from common.operators import build_operator
from common.random import make_generator
from common.sampling import build_sampler, unsupported
from common.sampling.vp import skip_timesteps
from tests.helpers.fixtures import REPO
from tests.helpers.spectral_moments import (
    DenseOperator,
    DenseSVD,
    SpectralGaussian,
    ddrm_rule,
    demo_prior,
    measured,
    output_moments,
    random_matrix,
    whitened_errors,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 4, 4)
N = 1000
Z_MAX = 4.5


def ddrm_moves(num_steps: int) -> list[tuple[int, int]]:
    timesteps = skip_timesteps(num_steps, 1000)
    return list(zip(timesteps, timesteps[1:] + [-1]))


def draw(sampler, model, operator, y, count=N, seed=5):
    generators = [make_generator(seed, i) for i in range(count)]
    return sampler.sample(model, operator, y.expand(count, *y.shape[1:]), generators=generators).samples


@pytest.mark.parametrize("sigma_y", [0.0, 0.05])
def test_moments_match_the_dense_recursion(sigma_y):
    """The sampler's mean and per-pixel variance over N = 1000 chains against the exact output moments of DDRM-20
    (dense recursion) for the correlated demo prior on 4×4 images and a random 24×48 A (singular values 0.05–2, so
    with σ_y = 0.05 all three per-coefficient cases occur). Tolerances: module docstring."""
    model = demo_prior(4)
    operator = DenseOperator(random_matrix(24, 48), SHAPE, sigma_y)
    y, ybar = measured(operator, model)
    mean = model.mean.double().expand(SHAPE).reshape(-1)
    expected_mean, expected_cov = output_moments(model, mean, model.dense_covariance(), operator.svd(), ybar,
                                                 sigma_y, ddrm_rule(0.85, 1.0), ddrm_moves(20), "ddrm")
    x = draw(DDRM(), model, operator, y).double().flatten(1)
    mean_z, ratios = whitened_errors(x, expected_mean, expected_cov)
    assert mean_z < 5, mean_z
    assert (ratios - 1).abs().max() < 5 * math.sqrt(2 / (N - 1)), ratios
    assert abs(ratios.mean() - 1) < 5 * math.sqrt(2 / (len(ratios) * (N - 1))), ratios.mean()


@pytest.mark.parametrize("task", ["inpainting", "down_sampling", "dense"])
def test_noiseless_samples_satisfy_the_measurement(task):
    """σ_y = 0: A x = y up to float32 round-off (module docstring), on the 8×8 demo prior with a 70 % random mask
    (diagonal SVD) and with ×4 down-sampling (Kronecker SVD), and on the dense operator."""
    if task == "inpainting":
        model = demo_prior(8)
        operator = build_operator(name="inpainting", sigma=0.0, resolution=8, mask_type="random",
                                  mask_prob_range=[0.7, 0.71])
        operator.set_state({"mask": operator.draw_state(make_generator(0, "mask"))["mask"][None]})
    elif task == "down_sampling":
        model = demo_prior(8)
        operator = build_operator(name="down_sampling", sigma=0.0, resolution=8, scale_factor=4)
    else:
        model = demo_prior(4)
        operator = DenseOperator(random_matrix(24, 48), SHAPE, 0.0)
    y = operator.measure(model.sample([make_generator(1, "x")]), [make_generator(1, "noise")])
    x = draw(DDRM(), model, operator, y, count=4)
    assert (operator(x) - y).abs().max() <= 1e-5 * y.abs().max()
    assert x.std(0).mean() > 1e-3  # the null space still varies between samples


def test_posterior_mean_when_the_prior_is_diagonal_in_v():
    """σ_y = 0, prior N(V m, V diag(λ) Vᵀ): the range coefficients are ȳ exactly and the null-space sample mean is
    the exact posterior mean m (module docstring: the start bias is < 1e-6 std), within Monte-Carlo z-scores that
    use the samples' own std; the null-space variance is DDRM's (dense recursion), not the posterior's."""
    svd = DenseSVD(random_matrix(24, 48), SHAPE)
    g = torch.Generator().manual_seed(1)
    model = SpectralGaussian(svd, 0.3 * torch.randn(48, generator=g), torch.logspace(math.log10(0.5), -2.3, 48))
    operator = DenseOperator(random_matrix(24, 48), SHAPE, 0.0)
    y, ybar = measured(operator, model)
    coefficients = svd.vt(draw(DDRM(), model, operator, y)).double()
    null = svd.s == 0
    assert torch.allclose(coefficients[:, ~null], ybar[~null].expand(N, -1), atol=1e-5)
    z = (coefficients[:, null].mean(0) - model.coef_mean[null]) / (coefficients[:, null].var(0) / N).sqrt()
    assert z.abs().max() < Z_MAX, z
    prior_mean, prior_cov = model.moments()
    _, cov = output_moments(model, prior_mean, prior_cov, svd, ybar, 0.0, ddrm_rule(0.85, 1.0), ddrm_moves(20),
                            "ddrm")
    ratio = (svd.v_mat.double().T @ cov @ svd.v_mat.double()).diagonal()[null] / model.coef_var[null]
    assert 0.15 < ratio.min() and ratio.max() < 0.5  # under-dispersed null space (module docstring)


def test_spectrum_of_inpainting():
    """ȳ = S⁺Uᵀy is y on observed pixels and 0 elsewhere; s is the mask."""
    operator = build_operator(name="inpainting", sigma=0.0, resolution=8, mask_type="random",
                              mask_prob_range=[0.5, 0.51])
    operator.set_state({"mask": operator.draw_state(make_generator(0))["mask"][None]})
    y = operator(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    spectrum = Spectrum.of(operator, y, (3, 8, 8))
    mask = operator.mask(y).expand(2, 3, 8, 8).flatten(1)
    assert torch.equal(spectrum.observed.expand(2, -1), mask > 0)
    assert torch.equal(spectrum.ybar, y.flatten(1))


def test_batch_size_invariance_and_determinism():
    """Sample i depends only on generator i: a batch of 3 equals three batches of 1, and a rerun is identical."""
    model = demo_prior(8)
    operator = build_operator(name="inpainting", sigma=0.05, resolution=8, mask_type="random",
                              mask_prob_range=[0.7, 0.71])
    states = [operator.draw_state(make_generator(0, i))["mask"] for i in range(3)]
    operator.set_state({"mask": torch.stack(states)})
    x = model.sample([make_generator(1, i) for i in range(3)])
    y = operator.measure(x, [make_generator(2, i) for i in range(3)])
    generators = lambda: [make_generator(3, i) for i in range(3)]
    batch = DDRM(num_steps=5).sample(model, operator, y, generators=generators()).samples
    again = DDRM(num_steps=5).sample(model, operator, y, generators=generators()).samples
    assert torch.equal(batch, again)
    for i in range(3):
        operator.set_state({"mask": states[i][None]})
        one = DDRM(num_steps=5).sample(model, operator, y[i:i + 1], generators=[make_generator(3, i)]).samples
        assert torch.allclose(one[0], batch[i], atol=1e-6)


@pytest.mark.parametrize("task", [dict(name="phase_retrieval", oversample=2.0),
                                  dict(name="motion_blur", kernel_size=9, intensity=0.5)])
def test_operators_without_svd_are_refused(task):
    """Phase retrieval (non-linear) and motion blur (linear, no closed-form SVD) are refused, naming svd."""
    operator = build_operator(sigma=0.05, resolution=8, **task)
    message = unsupported(DDRM, demo_prior(8), operator)
    assert message is not None and "svd" in message


def test_settings_and_noise_are_validated():
    """Bad constructor values name their key; Poisson noise and more steps than T are refused before sampling."""
    for key, value in [("num_steps", 0), ("num_steps", 2.0), ("eta", 1.5), ("eta", float("nan")), ("eta_b", -0.1)]:
        with pytest.raises(SettingError, match=key):
            DDRM(**{key: value})
    model = demo_prior(8)
    with pytest.raises(SettingError, match="num_steps"):
        DDRM(num_steps=1001).check(model, build_operator(name="inpainting", sigma=0.05, resolution=8,
                                                         mask_type="random"))
    poisson = build_operator(name="inpainting", noise="poisson", rate=1.0, resolution=8, mask_type="random")
    with pytest.raises(ConfigError, match="Gaussian"):
        gaussian_noise_sigma(poisson, "ddrm")


def test_config_builds_the_paper_defaults():
    """configs/sampler/ddrm.yaml builds through the seam with the paper's 20 steps, η = 0.85, η_b = 1."""
    sampler = build_sampler(OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "sampler" / "ddrm.yaml")))
    assert (sampler.num_steps, sampler.eta, sampler.eta_b) == (20, 0.85, 1.0)
