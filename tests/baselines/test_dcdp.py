r"""DCDP (baselines/dcdp.py) on the Gaussian demo prior with its exact denoiser, dense float64 references.

* One-step purification (P = 1) is Tweedie's formula, for a Gaussian prior the Wiener filter of the noised iterate:
  x̂0 = m0 + Σ(Σ + σ² I)⁻¹(x + σ ε − m0), σ² = 1/ᾱ_{τ−1} − 1; with J heavy-ball steps before it (dense replay)
  (:func:`test_one_iteration_is_heavy_ball_then_the_wiener_filter`).
* Many-step DDIM purification tends to the probability-flow map of a Gaussian, m0 + Σ^{1/2}(Σ + σ²I)^{−1/2}(x + σε − m0)
  (:func:`test_full_purification_tends_to_the_flow_map`).
* The schedule is the authors' linear one; latent = pixel behind an identity autoencoder; batch invariance; CLI.
"""
from __future__ import annotations

import math

import pytest
import torch

from baselines.dcdp import DCDP, ddim_timesteps, purification_schedule, purify
from common.errors import SettingError
from common.models.gaussian import GaussianPrior
from common.operators import build_operator
from common.random import make_generator, randn
from common.sampling import unsupported
from common.sampling.counting import count_calls
from common.sampling.vp import abar
from tests.helpers.baseline_cli import TASK_NAMES, built_for_task, run_and_resume
from tests.helpers.gaussian_cases import assert_copies_batch_invariant, dense_tweedie, gaussian_case
from tests.helpers.latent_baseline_cli import demo_prior

pytestmark = pytest.mark.usefixtures("one_thread")

DOWN = dict(name="down_sampling", scale_factor=4)


def test_schedule_is_the_authors_linear_one():
    """Purification_Schedule(10, 400, 0, 'linear'): flip(round(linspace(0, 1, 10)·400)), 0 → 1."""
    assert purification_schedule(10, 400, 0) == [400, 356, 311, 267, 222, 178, 133, 89, 44, 1]
    assert purification_schedule(200, 1000, 20)[-1] == 20 and purification_schedule(1, 400, 0) == [400]
    assert ddim_timesteps(400, 20)[0] == 399 and ddim_timesteps(400, 20)[-1] == 0 and len(ddim_timesteps(400, 20)) == 20
    assert ddim_timesteps(1, 20) == [0]
    assert DCDP(num_steps=10, t_start=400, purification_steps=20).model_calls == 9 * 20 + 1


def test_one_iteration_is_heavy_ball_then_the_wiener_filter():
    case = gaussian_case(DOWN)
    m_mat, y = case.matrix, case.y.double().reshape(-1)
    eta, beta, tau = 0.3, 0.9, 300
    out = DCDP(num_steps=1, grad_steps=4, step_size=eta, momentum=beta, t_start=tau, purification_steps=1).sample(
        case.model, case.operator, case.y, generators=[make_generator(2, "dcdp")]).samples.double().reshape(-1)
    x, v = torch.zeros(m_mat.shape[1], dtype=torch.float64), torch.zeros(m_mat.shape[1], dtype=torch.float64)
    for _ in range(4):
        v = beta * v + 2 * m_mat.T @ (m_mat @ x - y)
        x = x - eta * v
    eps = randn(case.model.sample_shape, [make_generator(2, "dcdp")])[0].double().reshape(-1)
    sigma = math.sqrt(1 / abar(case.model, tau - 1) - 1)
    torch.testing.assert_close(out, dense_tweedie(case, x + sigma * eps, sigma), atol=1e-4, rtol=0)


def test_full_purification_tends_to_the_flow_map():
    """DDIM (η = 0) is a first-order solver of the probability-flow ODE: at 200 steps from τ = 400 its error against
    the closed-form flow map is below 1 % of the map's move (observed 0.3 %), at 5 steps it is larger."""
    case = gaussian_case(DOWN)
    x = case.model.sample([make_generator(0, "x0")])
    noise = randn(case.model.sample_shape, [make_generator(0, "eps")])
    tau = 400
    sigma = math.sqrt(1 / abar(case.model, tau - 1) - 1)
    evals, evecs = torch.linalg.eigh(case.cov)
    flow = (evecs * (evals / (evals + sigma ** 2)).sqrt()) @ evecs.T
    start = x.double().reshape(-1) + sigma * noise.double().reshape(-1)
    want = case.mean + flow @ (start - case.mean)
    move = (want - start).norm()
    errors = {n: float((purify(case.model, x, tau, n, noise).double().reshape(-1) - want).norm() / move)
              for n in (5, 200)}
    assert errors[200] < 0.01 and errors[5] > errors[200], errors


def test_latent_is_pixel_behind_an_identity_autoencoder():
    model_latent, model_pixel = demo_prior(), demo_prior(GaussianPrior)
    op = build_operator(sigma=0.05, resolution=8, **DOWN)
    y = op.measure(model_pixel.sample([make_generator(0, "x")]), [make_generator(0, "n")])
    sampler = DCDP(num_steps=3, grad_steps=3, step_size=0.1, t_start=200)
    runs = [sampler.sample(m, op, y, generators=[make_generator(1)]).samples for m in (model_latent, model_pixel)]
    torch.testing.assert_close(runs[0], runs[1], atol=1e-6, rtol=0)
    assert unsupported(DCDP, model_latent, op) is None and unsupported(DCDP, model_pixel, op) is None
    with count_calls(model_pixel) as counts:
        sampler.sample(model_pixel, op, y, generators=[make_generator(1)])
    assert counts["nfe"] == sampler.model_calls


@pytest.mark.parametrize("task", [DOWN, dict(name="phase_retrieval", oversample=2.0)])
def test_batch_size_invariance_and_determinism(task):
    case = gaussian_case(DOWN)
    op = build_operator(sigma=0.05, resolution=8, **task)
    y = op.measure(case.model.sample([make_generator(0, "x")]), [make_generator(0, "n")])
    assert_copies_batch_invariant(DCDP(num_steps=3, grad_steps=2, step_size=0.01, t_start=300), case.model, op, y)


def test_setting_refusals():
    for key, value in (("num_steps", 0), ("grad_steps", -1), ("step_size", 0.0), ("momentum", 1.0),
                       ("t_start", 0), ("purification_steps", 0)):
        with pytest.raises(SettingError, match=key):
            DCDP(**{key: value})
    with pytest.raises(SettingError, match="t_end"):
        DCDP(t_start=100, t_end=200)
    with pytest.raises(SettingError, match="t_start"):
        DCDP(t_start=2000).check(gaussian_case(DOWN).model, build_operator(resolution=8, **DOWN))


@pytest.mark.parametrize("name", ["dcdp", "latent_dcdp"])
@pytest.mark.parametrize("task", TASK_NAMES)
def test_config_resolves_per_task_and_builds(name, task):
    block, sampler = built_for_task(name, task)
    assert set(block["per_task"]) == set(TASK_NAMES)
    for key, value in block["per_task"][task].items():
        assert getattr(sampler, key) == value


def test_cli_run_on_the_demo_and_resume(tmp_path, capsys):
    saved = run_and_resume(tmp_path, "dcdp", "inpainting", 2, capsys)
    assert saved["step_size"] == 0.005086 and saved["num_steps"] == 2
