r"""DDNM / DDNM+ (baselines/ddnm.py) on linear-Gaussian problems, where its output distribution is known in closed form.

What holds, with a Gaussian prior N(μ, Σ) and its exact (linear) denoiser (derivation in spectral_moments.py):

* every step (and every time-travel jump) is affine in the state plus fresh Gaussian noise, so the output is Gaussian
  with mean and covariance from a dense float64 recursion; the sampler's Monte-Carlo moments must match them
  (:func:`test_moments_match_the_dense_recursion`, correlated prior, dense A with non-trivial U and V);
* σ_y = 0 (plain DDNM): the last step (σ' = 0, no noise) returns x̂0 − A⁺(A x̂0 − y), so A x = A A⁺ y = y for any
  prior whenever A A⁺ = I (full row rank: inpainting, down-sampling, the dense A);
* σ_y = 0 and a prior with independent coefficients in A's right-singular basis: the null space runs the
  unconditional DDIM-η chain from x_T ~ N(0, I), whose mean contracts the start error to < 1e-6 prior std, so the
  sample mean is the exact posterior mean up to Monte-Carlo error; the variance is not exact (η σ' fresh noise per
  step, as DDRM: see test_ddrm.py);
* with a correlated prior DDNM is biased even in the mean (its denoiser sees the range re-drawn around A⁺y; dense
  recursion on the correlated problem below: mean_z 0.67 posterior stds at 100 steps and 0.52 at 1000 for σ_y = 0,
  1.71 and 1.31 for σ_y = 0.05);
* on operators whose nonzero singular values are all 1 (inpainting) the scalar A⁺-only path is the SVD path.

Monte-Carlo tolerances as in test_ddrm.py: a pooled χ²_k z-score of the whitened mean error < 5, per-direction
variance ratios within 5·sqrt(2/(N − 1)) and their average within 5·sqrt(2/(k(N − 1))); z-scores of a mean against
the samples' own std below 4.5.
"""
import math

import pytest
import torch
from omegaconf import OmegaConf

from baselines.ddnm import DDNM, ddnm_weights, travel_schedule
from common.errors import SettingError
from common.operators import build_operator
from common.operators.down_sampling import DownSampling
from common.operators.inpainting import Inpainting
from common.random import make_generator
from common.sampling import build_sampler, unsupported
from common.sampling.vp import abar, skip_timesteps
from tests.helpers.fixtures import REPO
from tests.helpers.spectral_moments import (
    DenseOperator,
    DenseSVD,
    SpectralGaussian,
    ddnm_rule,
    demo_prior,
    measured,
    output_moments,
    random_matrix,
    whitened_errors,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 4, 4)
N = 1000


class InpaintingWithoutSVD(Inpainting):
    """Inpainting that declares only A⁺ (and prox): DDNM then takes its scalar path."""

    capabilities = frozenset({"linear", "pinv", "prox"})


def ddnm_moves(num_steps: int, length: int = 1, repeat: int = 1) -> list[tuple[int, int]]:
    ascending = skip_timesteps(num_steps, 1000)[::-1]
    schedule = travel_schedule(num_steps, length, repeat)
    return [(ascending[i], ascending[j] if j >= 0 else -1) for i, j in zip(schedule, schedule[1:])]


def masked(operator, count=1, seed=0):
    operator.set_state({"mask": torch.stack([operator.draw_state(make_generator(seed, i))["mask"]
                                             for i in range(count)])})
    return operator


def draw(sampler, model, operator, y, count=N, seed=5):
    generators = [make_generator(seed, i) for i in range(count)]
    return sampler.sample(model, operator, y.expand(count, *y.shape[1:]), generators=generators).samples


def test_travel_schedule_is_repaints():
    """RePaint's jump schedule: after reaching k ∈ {0, L, 2L, …} < N − L, climb L and descend again, r − 1 times."""
    assert travel_schedule(4, 1, 1) == [3, 2, 1, 0, -1]
    assert travel_schedule(6, 2, 2) == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    assert travel_schedule(5, 2, 3) == [4, 3, 2, 3, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, -1]


def test_weights_follow_the_table():
    """(λ, d1, d2) for σ' above, below and at σ_y/s, and for σ_y = 0 (module docstring of baselines/ddnm.py)."""
    eta, rho = 0.85, math.sqrt(1 - 0.85 ** 2)
    lam, d1, d2 = ddnm_weights(torch.tensor([2.0, 0.5, 1.0]), 0.1, 0.1, eta)
    assert torch.allclose(lam, torch.tensor([1.0, rho * 0.5, 1.0]))
    assert torch.allclose(d1, torch.tensor([math.sqrt(0.01 - 0.0025), eta * 0.1, 0.0]))
    assert torch.equal(d2, torch.zeros(3))
    assert ddnm_weights(1.0, 0.3, 0.0, eta) == (1.0, eta * 0.3, rho * 0.3)


@pytest.mark.parametrize("sigma_y, travel", [(0.0, (1, 1)), (0.05, (1, 1)), (0.05, (4, 2))])
def test_moments_match_the_dense_recursion(sigma_y, travel):
    """Mean and variances over N = 1000 chains of DDNM with 20 steps (and time travel L = 4, r = 2) against the exact
    output moments (dense recursion) for the correlated demo prior on 4×4 images and a random 24×48 A (singular
    values 0.05–2: both σ' ≥ σ_y/s and σ' < σ_y/s occur). Tolerances: module docstring."""
    model = demo_prior(4)
    operator = DenseOperator(random_matrix(24, 48), SHAPE, sigma_y)
    y, ybar = measured(operator, model)
    mean = model.mean.double().expand(SHAPE).reshape(-1)
    expected_mean, expected_cov = output_moments(model, mean, model.dense_covariance(), operator.svd(), ybar,
                                                 sigma_y, ddnm_rule(0.85), ddnm_moves(20, *travel), "noise")
    sampler = DDNM(num_steps=20, travel_length=travel[0], travel_repeat=travel[1])
    x = draw(sampler, model, operator, y).double().flatten(1)
    mean_z, ratios = whitened_errors(x, expected_mean, expected_cov)
    assert mean_z < 5, mean_z
    assert (ratios - 1).abs().max() < 5 * math.sqrt(2 / (N - 1)), ratios
    assert abs(ratios.mean() - 1) < 5 * math.sqrt(2 / (len(ratios) * (N - 1))), ratios.mean()


def test_time_travel_jump_diffuses_forward():
    """The state right after the first time-travel climb (x_{t_k} → x_{t_{k+L}} ~ q(x_{t_{k+L}} | x_{t_k})), as the
    callback sees it at the next model call, against its exact moments from the dense recursion (σ_y = 0.05,
    20 steps, L = 4, r = 2: the first climb is 12 → 16). The final samples forget most of a wrong jump variance, so
    this checks the jump where it happens."""
    model = demo_prior(4)
    operator = DenseOperator(random_matrix(24, 48), SHAPE, 0.05)
    y, ybar = measured(operator, model)
    moves = ddnm_moves(20, 4, 2)
    end = next(p for p, (t, t_next) in enumerate(moves) if t_next > t)
    while moves[end][1] > moves[end][0]:
        end += 1
    call = sum(t_next < t for t, t_next in moves[:end])
    mean = model.mean.double().expand(SHAPE).reshape(-1)
    expected_mean, expected_cov = output_moments(model, mean, model.dense_covariance(), operator.svd(), ybar, 0.05,
                                                 ddnm_rule(0.85), moves[:end], "noise")
    seen = {}
    generators = [make_generator(5, i) for i in range(N)]
    DDNM(num_steps=20, travel_length=4, travel_repeat=2).sample(
        model, operator, y.expand(N, -1), generators=generators,
        callback=lambda state: seen.update(state) if state["step"] == call else None)
    assert seen["t"] == moves[end - 1][1] == 800
    x_bar = seen["x_t"].double().flatten(1) / abar(model, seen["t"]) ** 0.5
    mean_z, ratios = whitened_errors(x_bar, expected_mean, expected_cov)
    assert mean_z < 5, mean_z
    assert abs(ratios.mean() - 1) < 5 * math.sqrt(2 / (len(ratios) * (N - 1))), ratios.mean()


@pytest.mark.parametrize("sigma_y", [0.0, 0.05])
def test_scalar_path_equals_svd_path_on_inpainting(sigma_y):
    """All nonzero singular values of inpainting are 1, so the A⁺-only path (Σ_t = λ_t I, range noise through
    P = A⁺A) gives the SVD path's samples, draw for draw."""
    model = demo_prior(8)
    params = dict(noise=build_operator(name="inpainting", sigma=sigma_y, resolution=8, mask_type="random").noise,
                  resolution=8, mask_type="random", mask_prob_range=[0.7, 0.71])
    with_svd, without = masked(Inpainting(**params), 2), masked(InpaintingWithoutSVD(**params), 2)
    assert "svd" not in without.capabilities
    y = with_svd.measure(model.sample([make_generator(1, i) for i in range(2)]),
                         [make_generator(2, i) for i in range(2)])
    generators = lambda: [make_generator(3, i) for i in range(2)]
    a = DDNM(num_steps=10).sample(model, with_svd, y, generators=generators()).samples
    b = DDNM(num_steps=10).sample(model, without, y, generators=generators()).samples
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


class DownSamplingWithoutSVD(DownSampling):
    """×4 down-sampling that declares only A⁺ (singular values ≠ 1): DDNM's scalar path on a non-orthogonal A."""

    capabilities = frozenset({"linear", "pinv", "prox"})


@pytest.mark.parametrize("task", ["inpainting", "down_sampling", "down_sampling_scalar"])
def test_noiseless_samples_satisfy_the_measurement(task):
    """σ_y = 0: A x = y up to float32 round-off (A A⁺ = I), on the 8×8 demo prior: inpainting and ×4 down-sampling
    through the SVD path, and ×4 down-sampling through the scalar A⁺ path."""
    model = demo_prior(8)
    if task == "inpainting":
        operator = masked(build_operator(name="inpainting", sigma=0.0, resolution=8, mask_type="random",
                                         mask_prob_range=[0.7, 0.71]))
    else:
        cls = DownSampling if task == "down_sampling" else DownSamplingWithoutSVD
        operator = cls(build_operator(name="down_sampling", sigma=0.0, resolution=8).noise, resolution=8,
                       scale_factor=4)
    y = operator.measure(model.sample([make_generator(1, "x")]), [make_generator(1, "noise")])
    x = draw(DDNM(num_steps=10), model, operator, y, count=4)
    assert (operator(x) - y).abs().max() <= 1e-5 * y.abs().max()
    assert x.std(0).mean() > 1e-3  # the null space still varies between samples


def test_posterior_mean_when_the_prior_is_diagonal_in_v():
    """σ_y = 0, prior N(V m, V diag(λ) Vᵀ): the range coefficients are ȳ and the null-space sample mean is the exact
    posterior mean m (module docstring), within z-scores that use the samples' own std."""
    svd = DenseSVD(random_matrix(24, 48), SHAPE)
    g = torch.Generator().manual_seed(1)
    model = SpectralGaussian(svd, 0.3 * torch.randn(48, generator=g), torch.logspace(math.log10(0.5), -2.3, 48))
    operator = DenseOperator(random_matrix(24, 48), SHAPE, 0.0)
    y, ybar = measured(operator, model)
    coefficients = svd.vt(draw(DDNM(num_steps=20), model, operator, y)).double()
    null = svd.s == 0
    assert torch.allclose(coefficients[:, ~null], ybar[~null].expand(N, -1), atol=1e-5)
    z = (coefficients[:, null].mean(0) - model.coef_mean[null]) / (coefficients[:, null].var(0) / N).sqrt()
    assert z.abs().max() < 4.5, z


def test_batch_size_invariance_and_determinism():
    """Sample i depends only on generator i (with time travel, on both paths): a batch of 3 equals three batches of
    1, and a rerun is identical."""
    model = demo_prior(8)
    for cls in (Inpainting, InpaintingWithoutSVD):
        noise = build_operator(name="inpainting", sigma=0.05, resolution=8, mask_type="random").noise
        operator = cls(noise, resolution=8, mask_type="random", mask_prob_range=[0.7, 0.71])
        states = [operator.draw_state(make_generator(0, i))["mask"] for i in range(3)]
        operator.set_state({"mask": torch.stack(states)})
        y = operator.measure(model.sample([make_generator(1, i) for i in range(3)]),
                             [make_generator(2, i) for i in range(3)])
        sampler = DDNM(num_steps=6, travel_length=2, travel_repeat=2)
        generators = lambda: [make_generator(3, i) for i in range(3)]
        batch = sampler.sample(model, operator, y, generators=generators()).samples
        assert torch.equal(batch, sampler.sample(model, operator, y, generators=generators()).samples)
        for i in range(3):
            operator.set_state({"mask": states[i][None]})
            one = sampler.sample(model, operator, y[i:i + 1], generators=[make_generator(3, i)]).samples
            torch.testing.assert_close(one[0], batch[i], atol=1e-6, rtol=1e-6)


def test_operators_without_pinv_are_refused():
    """Phase retrieval (non-linear, no A⁺) is refused naming pinv; motion blur (A⁺ by conjugate gradients) runs."""
    model = demo_prior(8)
    message = unsupported(DDNM, model, build_operator(name="phase_retrieval", sigma=0.05, resolution=8))
    assert message is not None and "pinv" in message
    blur = build_operator(name="motion_blur", sigma=0.05, resolution=8, kernel_size=9)
    assert unsupported(DDNM, model, blur) is None


def test_settings_are_validated():
    """Bad constructor values name their key; a travel length that leaves no jump is refused when r > 1."""
    for key, value in [("num_steps", 0), ("num_steps", 10.0), ("eta", 1.5), ("travel_length", 0),
                       ("travel_repeat", True)]:
        with pytest.raises(SettingError, match=key):
            DDNM(**{key: value})
    with pytest.raises(SettingError, match="travel_length"):
        DDNM(num_steps=10, travel_length=10, travel_repeat=2)


def test_config_builds_the_authors_defaults():
    """configs/sampler/ddnm.yaml builds with the authors' 100 steps, η = 0.85 and time travel off."""
    sampler = build_sampler(OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "sampler" / "ddnm.yaml")))
    assert (sampler.num_steps, sampler.eta, sampler.travel_length, sampler.travel_repeat) == (100, 0.85, 1, 1)
    assert sampler.schedule == list(range(99, -2, -1))
