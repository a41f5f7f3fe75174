r"""FPS-SMC (baselines/fps_smc.py) on linear-Gaussian problems with dense float64 references.

* One SMC step: the proposal q(x_s | x_t, y_s) ∝ N(μ, s² I) N(y_s; M x_s, v I) has precision P = I/s² + MᵀM/v and mean
  P⁻¹(μ/s² + Mᵀy_s/v); the drawn particle is the dense perturb-and-optimise map of (ξ, ν), whose covariance is P⁻¹;
  the log weights differ between particles as log N(y_s; M μ, s² M Mᵀ + v I) does
  (:func:`test_one_step_proposal_and_weights_are_dense`, through the SVD and through conjugate gradients).
* M = 1 is the paper's FPS (no resampling): the whole chain, bridge included, against a dense float64 replay of the same
  draws (:func:`test_one_particle_is_fps_replayed_densely`).
* Resampling picks particles in proportion to their weights (:func:`test_resampling_follows_the_weights`).
"""
from __future__ import annotations

import math

import pytest
import torch

from baselines.fps_smc import FPSSMC, gaussian_update
from common.errors import ConfigError, SettingError
from common.operators import build_operator
from common.random import make_generator, randn
from common.sampling.counting import count_calls
from common.sampling.vp import abar, skip_timesteps
from tests.helpers.baseline_cli import built_for_task, run_and_resume
from tests.helpers.gaussian_cases import (
    assert_batch_invariant,
    assert_refuses_nonlinear_and_poisson,
    dense_tweedie,
    gaussian_case,
)

pytestmark = pytest.mark.usefixtures("one_thread")

DOWN = dict(name="down_sampling", scale_factor=4)
RANDOM = dict(name="inpainting", mask_type="random", mask_prob_range=[0.7, 0.71])
MOTION = dict(name="motion_blur", kernel_size=5, intensity=0.5)


def dense_proposal(m_mat: torch.Tensor, mu: torch.Tensor, y: torch.Tensor, s2: float, v: float):
    """(P⁻¹, P⁻¹(μ/s² + Mᵀy/v)) in float64 for flattened μ, y."""
    precision = torch.eye(m_mat.shape[1], dtype=torch.float64) / s2 + m_mat.T @ m_mat / v
    cov = torch.linalg.inv(precision)
    return cov, cov @ (mu / s2 + m_mat.T @ y / v)


@pytest.mark.parametrize("task", [DOWN, MOTION])
def test_one_step_proposal_and_weights_are_dense(task):
    case = gaussian_case(task)
    op, m_mat, shape = case.operator, case.matrix, case.model.sample_shape
    if "svd" not in op.capabilities:
        op.cg_tol = 1e-7
    s2, v = 0.3, 0.05 ** 2 * 0.8
    gens = [make_generator(7, "mu")]
    mus = [randn(shape, gens), randn(shape, gens)]
    xi, nu = randn(shape, gens), randn(case.y.shape[1:], gens)
    y64 = case.y.double().reshape(-1)
    log_ws = []
    for mu in mus:
        draw, log_w = gaussian_update(op, mu, case.y, s2, v, xi, nu)
        mu64 = mu.double().reshape(-1)
        cov, mean = dense_proposal(m_mat, mu64, y64, s2, v)
        perturbed = cov @ ((mu64 + s2 ** 0.5 * xi.double().reshape(-1)) / s2
                           + m_mat.T @ (y64 + v ** 0.5 * nu.double().reshape(-1)) / v)
        torch.testing.assert_close(draw.double().reshape(-1), perturbed, atol=2e-4, rtol=0)
        zero = gaussian_update(op, mu, case.y, s2, v, torch.zeros_like(xi), torch.zeros_like(nu))[0]
        torch.testing.assert_close(zero.double().reshape(-1), mean, atol=2e-4, rtol=0)
        log_ws.append(float(log_w))
        # the perturb-and-optimise map L = P⁻¹ [I/s, Mᵀ/√v] has L Lᵀ = P⁻¹: its draws have the proposal's covariance
        lmap = cov @ torch.cat([torch.eye(len(mu64), dtype=torch.float64) / s2 ** 0.5, m_mat.T / v ** 0.5], 1)
        torch.testing.assert_close(lmap @ lmap.T, cov, atol=1e-9, rtol=1e-7)
    marginal = s2 * m_mat @ m_mat.T + v * torch.eye(m_mat.shape[0], dtype=torch.float64)
    dense = [torch.distributions.MultivariateNormal(m_mat @ mu.double().reshape(-1), marginal).log_prob(y64)
             for mu in mus]
    assert log_ws[0] - log_ws[1] == pytest.approx(float(dense[0] - dense[1]), rel=1e-3, abs=1e-2)


def test_one_particle_is_fps_replayed_densely():
    """M = 1: the bridge y_t, the first conditional draw, every proposal and the last DDIM step, replayed in float64
    from the same generator draws in the same order, with the exact denoiser (dense Wiener filter)."""
    case = gaussian_case(DOWN)
    model, m_mat = case.model, case.matrix
    steps_n, c, sigma_y = 6, 0.9, 0.05
    out = FPSSMC(num_steps=steps_n, num_particles=1, c_rate=c).sample(
        model, case.operator, case.y, generators=[make_generator(3, "chain")]).samples.double().reshape(-1)

    g = [make_generator(3, "chain")]
    shape, yshape = model.sample_shape, case.y.shape[1:]
    draw = lambda s: randn(s, g)[0].double().reshape(-1)  # noqa: E731
    y = case.y.double().reshape(-1)
    steps = skip_timesteps(steps_n, len(model.betas))
    ys = {steps[0]: abar(model, steps[0]) ** 0.5 * y + (1 - abar(model, steps[0])) ** 0.5 * m_mat @ draw(shape)}
    for t, s in zip(steps, steps[1:]):
        a_t, a_s = abar(model, t), abar(model, s)
        keep = ((1 - c) * (1 - a_s) / (1 - a_t)) ** 0.5
        ys[s] = a_s ** 0.5 * y + keep * (ys[t] - a_t ** 0.5 * y) + (c * (1 - a_s)) ** 0.5 * m_mat @ draw(shape)

    def propose(mu, y_s, s2, v):
        cov, _ = dense_proposal(m_mat, mu, y_s, s2, v)
        return cov @ ((mu + s2 ** 0.5 * draw(shape)) / s2 + m_mat.T @ (y_s + v ** 0.5 * draw(yshape)) / v)

    x = propose(torch.zeros(m_mat.shape[1], dtype=torch.float64), ys[steps[0]], 1.0,
                abar(model, steps[0]) * sigma_y ** 2)
    for t, s in zip(steps, [*steps[1:], -1]):
        a_t = abar(model, t)
        x0 = dense_tweedie(case, x / a_t ** 0.5, math.sqrt(1 / a_t - 1))
        if s < 0:
            x = x0
            break
        eps = (x - a_t ** 0.5 * x0) / (1 - a_t) ** 0.5
        a_s = abar(model, s)
        x = propose(a_s ** 0.5 * x0 + ((1 - c) * (1 - a_s)) ** 0.5 * eps, ys[s], c * (1 - a_s), a_s * sigma_y ** 2)
    torch.testing.assert_close(out, x, atol=5e-4, rtol=0)


def test_resampling_follows_the_weights():
    sampler = FPSSMC(num_steps=2, num_particles=4000)
    particles = torch.arange(4.0).view(1, 4, 1).repeat_interleave(1000, 1)   # values 0..3, 1000 each
    log_w = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).repeat_interleave(1000)[None]
    picked = sampler.resample(particles, log_w, [make_generator(0)])[0, :, 0]
    freq = torch.bincount(picked.long(), minlength=4).double() / 4000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), atol=0.03, rtol=0)


def test_batch_size_invariance_and_determinism():
    """Per-sample random masks: the M particles of sample i never see generator j ≠ i or another batch size."""
    assert_batch_invariant(FPSSMC(num_steps=8, num_particles=3), RANDOM)


def test_refuses_nonlinear_poisson_and_noiseless():
    assert_refuses_nonlinear_and_poisson(FPSSMC, DOWN)
    case = gaussian_case(DOWN)
    with pytest.raises(ConfigError, match="sigma > 0"):
        FPSSMC(num_steps=2).check(case.model, build_operator(sigma=0.0, resolution=8, **DOWN))


def test_setting_refusals_and_model_calls():
    case = gaussian_case(DOWN)
    with count_calls(case.model) as counts:
        FPSSMC(num_steps=5, num_particles=3).sample(case.model, case.operator, case.y, generators=[make_generator(0)])
    assert counts["nfe"] == FPSSMC(num_steps=5, num_particles=3).model_calls == 15
    for key, value in (("num_steps", 0), ("num_particles", 0), ("num_particles", 2.0), ("c_rate", 0.0),
                       ("c_rate", 1.5)):
        with pytest.raises(SettingError, match=key):
            FPSSMC(**{key: value})
    assert FPSSMC(num_steps=10, num_particles=4).model_calls == 40


def test_config_builds_with_the_authors_defaults():
    block, sampler = built_for_task("fps_smc", "down_sampling")
    assert (sampler.num_steps, sampler.num_particles, sampler.c_rate) == (1000, 5, 0.95)


def test_cli_run_on_the_demo_and_resume(tmp_path, capsys):
    saved = run_and_resume(tmp_path, "fps_smc", "inpainting", 4, capsys)
    assert saved["num_particles"] == 5
