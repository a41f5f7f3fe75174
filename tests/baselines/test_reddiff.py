"""RED-diff (baselines/reddiff.py): its gradient against the dense Gaussian formula, the whole loop against the
authors' loss optimised by torch's Adam, its estimate on a linear-Gaussian problem, non-linear tasks, batch
invariance, refusals, config."""
import math
from types import SimpleNamespace

import pytest
import torch

from baselines.reddiff import REDDiff, reddiff_gradient
from commands.accuracy import gauss_prior_params
from common.errors import SettingError
from common.evaluation.exact_posterior import GaussianMixture, linear_gaussian_posterior
from common.models import build_model
from common.operators import build_operator
from common.random import make_generator, randn
from common.sampling import unsupported
from common.sampling.vp import abar, skip_timesteps
from tests.helpers.baseline_cli import TASK_NAMES, built_for_task, per_task, run_and_resume
from tests.helpers.gaussian_cases import assert_copies_batch_invariant, dense_tweedie, gaussian_case

pytestmark = pytest.mark.usefixtures("one_thread")

DOWN = dict(name="down_sampling", scale_factor=4)


@pytest.mark.parametrize("t", [20, 500, 980])
def test_gradient_is_the_dense_gaussian_formula(t):
    """∇ℓ = Mᵀ(Mμ − y)/m + λσ̄_t(ε̂ − ε)/n with, for the exact Tweedie denoiser of N(m0, Σ),
    ε̂ − ε = σ̄_t(Σ + σ̄_t²)⁻¹(μ − m0) − Σ(Σ + σ̄_t²)⁻¹ε (module docstring). float32 vs float64: rtol 1e-4."""
    case = gaussian_case(DOWN, resolution=8)
    gen = torch.Generator().manual_seed(t)
    mu = 0.5 * torch.randn((1, *case.model.sample_shape), generator=gen)
    noise = torch.randn((1, *case.model.sample_shape), generator=gen)
    grad, x_t, x0hat, residual = reddiff_gradient(case.model, case.operator, mu, case.y, t, noise, 0.7)

    m_mat, y, cov = case.matrix, case.y.double().reshape(-1), case.cov
    m, n = m_mat.shape
    mu64, eps = mu.double().reshape(-1), noise.double().reshape(-1)
    sigma = math.sqrt(1 / abar(case.model, t) - 1)
    inv = torch.linalg.inv(cov + sigma ** 2 * torch.eye(n, dtype=torch.float64))
    eps_diff = sigma * inv @ (mu64 - case.mean) - cov @ inv @ eps
    want = m_mat.T @ (m_mat @ mu64 - y) / m + 0.7 * sigma * eps_diff / n
    torch.testing.assert_close(grad.double().reshape(-1), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    # x̂0 of an input of size 1 + σ̄_t (σ̄_t ≈ 130 at t = 980) through float32 FFTs: observed error ≤ 4e-6·(1 + σ̄_t)
    torch.testing.assert_close(x0hat.double().reshape(-1), dense_tweedie(case, mu64 + sigma * eps, sigma),
                               rtol=0, atol=1e-5 * (1 + sigma))
    torch.testing.assert_close(residual.double(), (m_mat @ mu64 - y).norm()[None], rtol=1e-5, atol=1e-6)
    assert x_t.shape == mu.shape


@pytest.mark.slow  # torch.optim imports torch._dynamo on first use: ~10 s once per process on 2 shared cores
def test_whole_loop_is_the_authors_loss_under_torch_adam():
    """The authors' per-step loss (e_obs**2).mean()/2 + w_t ((ε̂ − ε).detach() μ).mean(), w_t = λσ̄_t, minimised by
    torch.optim.Adam(lr, betas=(0.9, 0.99)) from A⁺y with the same ε draws, at batch size 1 (where their batch
    mean is our per-sample loss). Both float32: agreement to ~1e-6 after 15 Adam steps."""
    case = gaussian_case(DOWN, resolution=8)
    sampler = REDDiff(num_steps=15, lambda_=0.25, lr=0.1)
    out = sampler.sample(case.model, case.operator, case.y, generators=[make_generator(2, "chain")]).samples

    replay = [make_generator(2, "chain")]
    mu = case.operator.pinv(case.y).clone().requires_grad_(True)
    adam = torch.optim.Adam([mu], lr=0.1, betas=(0.9, 0.99))
    for t in skip_timesteps(15, len(case.model.betas)):
        noise = randn(case.model.sample_shape, replay)
        a_t = abar(case.model, t)
        with torch.no_grad():
            x_t = a_t ** 0.5 * mu + (1 - a_t) ** 0.5 * noise
            eps_hat, _ = case.model.ddpm_output(x_t, torch.full((1,), t))
        loss = ((case.y - case.operator(mu)) ** 2).mean() / 2 \
            + 0.25 * math.sqrt(1 / a_t - 1) * ((eps_hat - noise) * mu).mean()
        adam.zero_grad()
        loss.backward()
        adam.step()
    torch.testing.assert_close(out, mu.detach(), atol=1e-5, rtol=0)


def test_estimate_moves_from_the_pseudo_inverse_towards_the_posterior_mean():
    """RED-diff is a point estimate, not a sampler (module docstring): on the ×4 Gaussian problem at 8×8 its mean
    over 16 ε-streams must be closer to the exact posterior mean than its start A⁺y, and its spread far below the
    posterior std. Measured over seeds 0–2 (λ = 1, 100 steps): error 0.54–0.61× that of A⁺y, spread 0.61–0.70×
    the posterior std; the bounds 0.8× and 0.9× leave Monte-Carlo room (16 streams) without admitting A⁺y itself
    (1×) or a calibrated spread. (At 1000 steps the error ratio is 0.93–0.95: the last steps, where σ̄_t → 0 and
    the prior's weight with it, pull μ back towards the data fit; docs/baselines.md.)"""
    case = gaussian_case(DOWN, resolution=8)
    prior = GaussianMixture(torch.ones(1, dtype=torch.float64), case.mean[None], case.cov[None])
    exact = linear_gaussian_posterior(prior, case.matrix, case.y, 0.05)
    n = 16
    out = REDDiff(num_steps=100, lambda_=1.0, lr=0.1).sample(
        case.model, case.operator, case.y.expand(n, -1, -1, -1),
        generators=[make_generator(4, i) for i in range(n)]).samples.double().reshape(n, -1)
    start = case.operator.pinv(case.y).double().reshape(-1)
    error = (out.mean(0) - exact.mean).norm()
    assert error < 0.8 * (start - exact.mean).norm(), (float(error), float((start - exact.mean).norm()))
    spread = (out.std(0) / exact.covariance.diagonal().sqrt()).mean()
    assert spread < 0.9, float(spread)


@pytest.mark.parametrize("task", [dict(name="phase_retrieval", oversample=2.0),
                                  dict(name="high_dynamic_range", scale=2.0)])
def test_nonlinear_tasks_run(task):
    model = build_model(**gauss_prior_params(16))
    operator = build_operator(sigma=0.05, resolution=16, **task)
    x = model.sample([make_generator(0, "x")])
    y = operator.measure(x, [make_generator(0, "n")])
    states = []
    out = REDDiff(num_steps=3).sample(model, operator, y, generators=[make_generator(0, "run")],
                                      callback=states.append)
    assert out.failed_at == [None] and bool(torch.isfinite(out.samples).all())
    assert [s["t"] for s in states] == skip_timesteps(3, 1000)
    assert bool((states[0]["x0y"] != 0).any())  # μ moved from its start 0 after the first Adam step


def test_batch_size_invariance_and_determinism():
    case = gaussian_case(DOWN, resolution=8)
    sampler = REDDiff(num_steps=10)
    assert_copies_batch_invariant(sampler, case.model, case.operator, case.y)


def test_runs_on_every_pixel_task_and_no_latent_model():
    model = build_model(**gauss_prior_params(8))
    for task in (DOWN, dict(name="phase_retrieval"), dict(name="high_dynamic_range")):
        assert unsupported(REDDiff, model, build_operator(resolution=8, **task)) is None
    assert "pixel" in unsupported(REDDiff, SimpleNamespace(latent=True), build_operator(resolution=8, **DOWN))


def test_refusals():
    for key, value in (("num_steps", 0), ("num_steps", 100.0), ("lambda_", -0.1), ("lambda_", float("nan")),
                       ("lr", 0.0), ("lr", float("inf"))):
        with pytest.raises(SettingError, match=key):
            REDDiff(**{key: value})


@pytest.mark.parametrize("task", TASK_NAMES)
def test_config_resolves_per_task_and_builds(task):
    block, sampler = built_for_task("reddiff", task)
    assert set(block["per_task"]) == set(TASK_NAMES)
    assert isinstance(sampler, REDDiff)
    assert (sampler.lambda_, sampler.lr) == (block["per_task"][task]["lambda_"], block["per_task"][task]["lr"])


@pytest.mark.slow  # end to end: the first run in a process pays the entry point's imports (~15 s on 2 cores)
@pytest.mark.parametrize("task", ["inpainting", "hdr"])
def test_cli_run_on_the_demo_and_resume(tmp_path, task, capsys):
    saved = run_and_resume(tmp_path, "reddiff", task, 4, capsys)
    assert {k: saved[k] for k in ("lambda_", "lr")} == per_task("reddiff", task)
