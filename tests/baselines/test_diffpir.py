"""DiffPIR (baselines/diffpir.py): the whole loop against a dense float64 re-computation on a linear-Gaussian problem,
the data steps against dense solves, the authors' schedule, non-linear tasks, batch invariance, refusals, config."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from baselines.diffpir import DiffPIR, gradient_data_step, quadratic_timesteps, rho
from commands.accuracy import gauss_prior_params
from common.errors import ConfigError, SettingError
from common.models import build_model
from common.operators import build_operator
from common.random import make_generator, randn
from common.sampling import unsupported
from common.sampling.vp import abar
from tests.helpers.baseline_cli import TASK_NAMES, built_for_task, per_task, run_and_resume
from tests.helpers.gaussian_cases import assert_copies_batch_invariant, dense_tweedie, gaussian_case

pytestmark = pytest.mark.usefixtures("one_thread")

DOWN = dict(name="down_sampling", scale_factor=4)


def dense_diffpir(case, sampler, x_t, noises):
    """Module docstring's loop in float64 with dense matrices: x̂0 by the exact Wiener filter, x̂0^y by a solve."""
    m_mat, y = case.matrix, case.y.double().reshape(-1)
    eye = torch.eye(m_mat.shape[1], dtype=torch.float64)
    steps = sampler.timesteps(case.model)
    x = x_t.double().reshape(-1)
    for i, t in enumerate(steps):
        a_t, a_s = abar(case.model, t), abar(case.model, steps[i + 1] if i + 1 < len(steps) else -1)
        sigma = math.sqrt(1 / a_t - 1)
        x0 = dense_tweedie(case, x / math.sqrt(a_t), sigma)
        gamma = sampler.lambda_ * max(case.operator.noise.sigma / 2, 1e-3) ** 2 / sigma ** 2
        z = torch.linalg.solve(m_mat.T @ m_mat + gamma * eye, m_mat.T @ y + gamma * x0)
        eps_hat = (x - math.sqrt(a_t) * z) / math.sqrt(1 - a_t)
        x = math.sqrt(a_s) * z + math.sqrt(1 - a_s) * (math.sqrt(1 - sampler.zeta) * eps_hat
                                                        + math.sqrt(sampler.zeta) * noises[i].double().reshape(-1))
    return x


@pytest.mark.parametrize("zeta", [0.0, 0.3, 1.0])
def test_whole_loop_matches_a_dense_float64_recomputation(zeta):
    """Same random draws (replayed from a second generator with the same seed): x_T, then one ε per step.

    Tolerance: float32 (rel. 6e-8) through 20 steps whose first denoiser input is x_t/sqrt(ᾱ_t) ≈ 150 x_t;
    observed differences are ≈ 4e-7 on values ≈ 0.4; 1e-5 leaves room for other BLAS orders.
    """
    case = gaussian_case(DOWN, resolution=8)
    sampler = DiffPIR(num_steps=20, lambda_=4.0, zeta=zeta, clip_denoised=False)
    out = sampler.sample(case.model, case.operator, case.y, generators=[make_generator(3, "chain")]).samples
    replay = [make_generator(3, "chain")]
    x_t = randn(case.model.sample_shape, replay)
    noises = [randn(case.model.sample_shape, replay) for _ in range(20)]
    expected = dense_diffpir(case, sampler, x_t, noises)
    torch.testing.assert_close(out.double().reshape(-1), expected, atol=1e-5, rtol=0)


def test_prox_data_step_is_the_dense_solve():
    """x̂0^y = (MᵀM + γI)⁻¹(Mᵀy + γ x̂0) for the closed-form prox of the ×4 resizer (float32: atol 1e-5)."""
    case = gaussian_case(DOWN, resolution=8)
    x0 = torch.randn((1, *case.model.sample_shape), generator=torch.Generator().manual_seed(0))
    for gamma in (1e-3, 0.5, 40.0):
        got = DiffPIR().data_step(case.operator, x0, case.y, gamma).double().reshape(-1)
        m_mat = case.matrix
        want = torch.linalg.solve(m_mat.T @ m_mat + gamma * torch.eye(m_mat.shape[1], dtype=torch.float64),
                                  m_mat.T @ case.y.double().reshape(-1) + gamma * x0.double().reshape(-1))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_gradient_data_step_is_the_papers_step_and_converges_to_the_prox():
    """One step with η ≥ 1/(2γ) is the paper's x̂0 − ∇‖A x̂0 − y‖²/(2γ); many steps reach the prox. For this γ the
    iteration z ← x̂0 − ∇‖Az − y‖²/(2γ) contracts by ‖M‖²/γ < 0.1 per step, so 30 steps are exact to float32."""
    case = gaussian_case(DOWN, resolution=8)
    x0 = torch.randn((1, *case.model.sample_shape), generator=torch.Generator().manual_seed(1))
    gamma = 0.8
    grad, _ = case.operator.gradient(x0, case.y)
    torch.testing.assert_close(gradient_data_step(case.operator, x0, case.y, gamma, 1, 10.0), x0 - grad / (2 * gamma))
    many = gradient_data_step(case.operator, x0, case.y, gamma, 30, 10.0)
    torch.testing.assert_close(many, case.operator.prox(x0, case.y, gamma), atol=1e-5, rtol=0)
    # a small cap η < 1/(2γ) takes shorter steps on the same objective: after one step f has decreased
    small = gradient_data_step(case.operator, x0, case.y, gamma, 1, 0.05)
    objective = lambda z: case.operator.loss(z, case.y) + gamma * (z - x0).pow(2).flatten(1).sum(1)  # noqa: E731
    assert float(objective(small)) < float(objective(x0))


def test_quadratic_schedule_is_the_authors():
    """seq = int(sqrt(linspace(0, T², N))), seq[−1] −= 1, t = T − 1 − seq (main_ddpir_*.py, skip_type quad)."""
    for n in (2, 20, 100, 250):
        seq = [int(s) for s in np.sqrt(np.linspace(0, 1000 ** 2, n))]
        seq[-1] -= 1
        assert quadratic_timesteps(n, 1000) == [999 - s for s in seq]
    with pytest.raises(SettingError, match="num_steps"):
        quadratic_timesteps(900, 1000)


def test_rho_is_the_authors_weight_in_our_units():
    """ρ_t = λ (σ_y/2)²/σ̄_t² (σ_y/2 = the authors' [0, 1]-unit std), floored at σ_y/2 = 0.001."""
    model = build_model(**gauss_prior_params(8))
    sigma_bar2 = 1 / float(model.alphas_cumprod[500]) - 1
    assert rho(7.0, 0.1, model, 500) == pytest.approx(7.0 * 0.05 ** 2 / sigma_bar2)
    assert rho(1.0, 0.0, model, 500) == pytest.approx(1e-6 / sigma_bar2)


@pytest.mark.parametrize("task", [dict(name="phase_retrieval", oversample=2.0),
                                  dict(name="high_dynamic_range", scale=2.0)])
def test_nonlinear_tasks_run_with_gradient_steps(task):
    model = build_model(**gauss_prior_params(16))
    operator = build_operator(sigma=0.05, resolution=16, **task)
    assert "prox" not in operator.capabilities
    x = model.sample([make_generator(0, "x")])
    y = operator.measure(x, [make_generator(0, "n")])
    states = []
    out = DiffPIR(num_steps=3, grad_steps=2, grad_step_size=0.1).sample(
        model, operator, y, generators=[make_generator(0, "run")], callback=states.append)
    assert out.failed_at == [None] and bool(torch.isfinite(out.samples).all())
    assert [s["step"] for s in states] == [0, 1, 2] and all(s["residual"].shape == (1,) for s in states)


def test_gradient_lipschitz_is_exact_for_a_linear_operator():
    """2 λ_max(AᵀA) of the ×4 resizer: the power iteration against the dense singular values."""
    operator = build_operator(resolution=16, **DOWN)
    dense = torch.func.jacrev(lambda v: operator(v.reshape(1, 3, 16, 16)).flatten())(torch.zeros(3 * 16 * 16))
    exact = 2 * torch.linalg.matrix_norm(dense, ord=2).item() ** 2
    estimate = DiffPIR.data_lipschitz(build_model(**gauss_prior_params(16)), operator)
    # power iteration approaches λ_max from below; 20 steps get within 1 % here (0.9905 of it seen: clustered values)
    assert 0.98 * exact <= estimate <= exact * (1 + 1e-5)


@pytest.mark.parametrize("task", [dict(name="phase_retrieval", oversample=2.0),
                                  dict(name="high_dynamic_range", scale=2.0)])
def test_a_step_size_beyond_the_stability_bound_is_refused(task):
    """The yaml's bound, η L < 2 (L of ∇‖A(z) − y‖²): refused at 2/L, accepted well below (the default 0.1)."""
    model = build_model(**gauss_prior_params(16))
    operator = build_operator(sigma=0.05, resolution=16, **task)
    lipschitz = DiffPIR.data_lipschitz(model, operator)
    DiffPIR(grad_step_size=0.1).check(model, operator)
    DiffPIR(grad_step_size=0.9 / lipschitz).check(model, operator)
    with pytest.raises(SettingError, match=r"grad_step_size.*need grad_step_size × L < 2"):
        DiffPIR(grad_step_size=2.01 / lipschitz).check(model, operator)


def test_batch_size_invariance_and_determinism():
    case = gaussian_case(DOWN, resolution=8)
    sampler = DiffPIR(num_steps=10, lambda_=4.0, zeta=0.3)
    assert_copies_batch_invariant(sampler, case.model, case.operator, case.y)


def test_runs_on_every_pixel_task_and_no_latent_model():
    model = build_model(**gauss_prior_params(8))
    for task in (DOWN, dict(name="phase_retrieval"), dict(name="high_dynamic_range")):
        assert unsupported(DiffPIR, model, build_operator(resolution=8, **task)) is None
    assert "pixel" in unsupported(DiffPIR, SimpleNamespace(latent=True), build_operator(resolution=8, **DOWN))


def test_refusals():
    for key, value in (("num_steps", 0), ("num_steps", 10.0), ("lambda_", 0.0), ("lambda_", float("nan")),
                       ("zeta", 1.5), ("schedule", "cosine"), ("grad_step_size", float("inf")), ("grad_steps", 0),
                       ("clip_denoised", "yes")):
        with pytest.raises(SettingError, match=key):
            DiffPIR(**{key: value})
    model = build_model(**gauss_prior_params(8))
    poisson = build_operator(name="down_sampling", resolution=8, scale_factor=4, noise="poisson", rate=1.0)
    with pytest.raises(ConfigError, match="reddiff"):
        DiffPIR().check(model, poisson)
    with pytest.raises(SettingError, match="num_steps"):
        DiffPIR(num_steps=2000, schedule="uniform").check(model, build_operator(resolution=8, **DOWN))


@pytest.mark.parametrize("task", TASK_NAMES)
def test_config_resolves_per_task_and_builds(task):
    block, sampler = built_for_task("diffpir", task)
    assert set(block["per_task"]) == set(TASK_NAMES)
    assert isinstance(sampler, DiffPIR)
    assert (sampler.lambda_, sampler.zeta) == (block["per_task"][task]["lambda_"], block["per_task"][task]["zeta"])


@pytest.mark.slow  # end to end: the first run in a process pays the entry point's imports (~15 s on 2 cores)
@pytest.mark.parametrize("task", ["down_sampling", "phase_retrieval"])
def test_cli_run_on_the_demo_and_resume(tmp_path, task, capsys):
    saved = run_and_resume(tmp_path, "diffpir", task, 4, capsys)
    assert {k: saved[k] for k in ("lambda_", "zeta")} == per_task("diffpir", task)
