"""PSLD (baselines/psld.py): with the identity as autoencoder it is latent/pixel DPS where the method says so, its
gradient is the dense formula, it reduces the posterior-mean error, runs the tiny LDM and SD from the CLI with resume,
refuses non-linear operators and pixel models, and does not depend on the batch size."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from baselines.psld import PSLD, psld_loss
from common.errors import ConfigError, SettingError
from common.evaluation.exact_posterior import dense_operator
from common.models.gaussian import GaussianPrior
from common.operators import build_operator
from common.random import make_generator
from common.run import job
from common.sampling import build_sampler, unsupported
from tests.helpers.cli import compose_config
from tests.helpers.fixtures import REPO
from tests.helpers.latent_baseline_cli import (
    RES,
    assert_batch_invariant,
    demo_prior,
    identity_problem,
    latent_args,
    latent_run_and_resume,
    tiny_assets,
)

pytestmark = pytest.mark.usefixtures("one_thread")

DOWN = dict(name="down_sampling", scale_factor=2)
BOX = dict(name="inpainting", mask_type="box", mask_len_range=[4, 5])
#: float32 through 20 steps of the exact Wiener denoiser (inputs x_t/sqrt(ᾱ_t) up to ≈ 150 x_t); the two loops
#: compute the same numbers in a different order (DDIM η = 1 mean vs DDPM posterior mean): observed 2e-7 on values
#: ≈ 0.4, 10× room for other BLAS orders
CLOSE = dict(atol=2e-6, rtol=0)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def ldm_assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory.mktemp("ldm"), sd=False)


def run(sampler, model, operator, y, seed: int = 3, n: int = 2) -> torch.Tensor:
    gens = [make_generator(seed, i) for i in range(n)]
    return sampler.sample(model, operator, y.expand(n, -1, -1, -1), generators=gens).samples


def dps(name: str, scale: float, steps: int = 20):
    """(latent) DPS on DDIM's uniform skip (respacing "ddimN" keeps 0, T/N, 2T/N, …), x̂0 not clipped."""
    return build_sampler({"name": name, "num_steps": steps, "timestep_respacing": f"ddim{steps}", "method": "ps",
                          "scale": scale, "clip_denoised": False})


def test_gamma_zero_eta_one_is_latent_dps_and_pixel_dps():
    """γ = 0, η = 1: the DDIM step is DDPM's ancestral step on the respaced chain and the guidance is ω ∇‖y − A D(ẑ0)‖,
    i.e. DPS with ζ = ω; the same random draws (x_T, then one ξ per step but the last) in the same order."""
    model, operator, y, _, _ = identity_problem(DOWN)
    psld = run(PSLD(num_steps=20, omega=0.7, gamma=0.0, eta=1.0), model, operator, y)
    latent = run(dps("latent_dps", 0.7), model, operator, y)
    pixel = run(dps("dps", 0.7), demo_prior(GaussianPrior), operator, y)
    torch.testing.assert_close(psld, latent, **CLOSE)
    torch.testing.assert_close(psld, pixel, **CLOSE)
    assert (run(PSLD(num_steps=20, omega=0.7, gamma=0.0, eta=1.0), model, operator, y, seed=4) - psld).abs().max() \
        > 1e-3  # the seed matters: the comparison is not vacuous


def test_gluing_on_an_inpainting_mask_adds_to_the_dps_step():
    """Identity autoencoder, mask A = diag(m), y = m ⊙ y (in A's range): ẑ0 − E(Aᵀy + (I − AᵀA)ẑ0) = m ⊙ (ẑ0 − y), whose
    norm is ‖y − Aẑ0‖, so PSLD(ω, γ) is DPS with ζ = ω + γ."""
    model, operator, y, _, _ = identity_problem(BOX)
    y = operator(y)
    psld = run(PSLD(num_steps=20, omega=0.3, gamma=0.4, eta=1.0), model, operator, y)
    torch.testing.assert_close(psld, run(dps("latent_dps", 0.7), model, operator, y), **CLOSE)
    no_glue = run(PSLD(num_steps=20, omega=0.3, gamma=0.0, eta=1.0), model, operator, y)
    assert (no_glue - psld).abs().max() > 1e-3


@pytest.mark.parametrize("task", [DOWN, dict(name="gaussian_blur", kernel_size=5, intensity=1.0)])
def test_loss_gradient_is_the_dense_formula(task):
    """Identity autoencoder: L(x) = ω‖y − Mx‖ + γ‖MᵀMx − Mᵀy‖, ∇L = −ω Mᵀr/‖r‖ + γ MᵀM g/‖g‖ (r = y − Mx,
    g = MᵀMx − Mᵀy), in float64 against the float32 autograd gradient through the operator's adjoint (the blur's
    adjoint is itself an autograd vector–Jacobian product). Tolerance: float32 rounding of O(1) values, 1e-5."""
    model, operator, y, _, _ = identity_problem(task)
    m_mat = dense_operator(operator, model.sample_shape)
    x = model.sample([make_generator(1, "z")])
    omega, gamma = 0.6, 0.25
    z = x.clone().requires_grad_(True)
    loss, residual = psld_loss(model, operator, y, z, omega, gamma)
    (grad,) = torch.autograd.grad(loss, z)
    xd, yd = x.double().reshape(-1), y.double().reshape(-1)
    r, g = yd - m_mat @ xd, m_mat.T @ (m_mat @ xd - yd)
    want = -omega * m_mat.T @ r / r.norm() + gamma * m_mat.T @ (m_mat @ g) / g.norm()
    torch.testing.assert_close(grad.double().reshape(-1), want, atol=1e-5, rtol=0)
    assert float(residual.detach()) == pytest.approx(float(r.norm()), rel=1e-5)


def test_reduces_the_posterior_mean_error():
    """16 chains of 50 steps on the ×2 down-sampling problem (8×8, σ_y = 0.05): the sample mean is far closer to the
    exact posterior mean than the prior mean is (observed ratio 0.07 here, 0.07–0.14 on the problems of
    seeds 0–2; bound 0.2)."""
    model, operator, y, post_mean, prior_mean = identity_problem(DOWN)
    samples = run(PSLD(num_steps=50, omega=1.0, gamma=0.1, eta=1.0), model, operator, y, n=16)
    error = (samples.double().reshape(16, -1).mean(0) - post_mean).norm()
    assert error < 0.2 * (prior_mean - post_mean).norm()


def test_batch_size_invariance_and_determinism():
    assert_batch_invariant(PSLD(num_steps=10, omega=1.0, gamma=0.1, eta=0.5), DOWN)


def test_refuses_nonlinear_operators_and_pixel_models():
    latent = demo_prior()
    assert "linear" in unsupported(PSLD, latent, build_operator("phase_retrieval", resolution=8))
    assert "linear" in unsupported(PSLD, latent, build_operator("high_dynamic_range", resolution=8))
    assert unsupported(PSLD, latent, build_operator(resolution=8, **DOWN)) is None
    assert "pixel" in unsupported(PSLD, demo_prior(GaussianPrior), build_operator(resolution=8, **DOWN))


def test_cli_refuses_pixel_models_and_phase_retrieval(tmp_path, ldm_assets):
    """The entry point's message, before anything is written: a pixel model, then phase retrieval on the tiny LDM."""
    for args, message in ((["model=demo", "task_group=gaussian"], "runs on latent-space models"),
                          (["task=phase_retrieval", *latent_args(ldm_assets, "ldm")],
                           "needs the operator capabilities linear")):
        cfg = compose_config(["sampler=psld", f"data.resolution={RES}", f"save_dir={tmp_path}", "name=bad", *args])
        with pytest.raises(ConfigError, match=message):
            job.run(cfg, tmp_path / "bad")
        assert not (tmp_path / "bad").exists()


def test_setting_refusals():
    for key, value in (("num_steps", 0), ("num_steps", 2.0), ("omega", -1.0), ("omega", float("nan")),
                       ("gamma", float("inf")), ("eta", 1.5)):
        with pytest.raises(SettingError, match=key):
            PSLD(**{key: value})
    with pytest.raises(SettingError, match="num_steps"):
        PSLD(num_steps=2000).check(demo_prior(), build_operator(resolution=8, **DOWN))


LINEAR_TASKS = ("down_sampling", "inpainting", "inpainting_rand", "gaussian_blur", "motion_blur")


@pytest.mark.parametrize("group", ["ldm", "sd"])
@pytest.mark.parametrize("task", LINEAR_TASKS)
def test_config_resolves_per_task_and_group(task, group):
    block = OmegaConf.load(REPO / "configs" / "sampler" / "psld.yaml")
    cfg = OmegaConf.create({"sampler": block, "task": {"name": task}, "task_group": group})
    resolved = OmegaConf.to_container(cfg.sampler, resolve=True)
    sampler = build_sampler(resolved)
    assert (sampler.omega, sampler.gamma) == tuple(resolved["per_task"][task][group][k] for k in ("omega", "gamma"))
    assert sampler.num_steps == 1000 and sampler.eta == 0.0


@pytest.mark.slow  # two runs of the entry point on a tiny network (the first pays the imports)
@pytest.mark.parametrize("which", ["ldm", "sd"])
def test_cli_tiny_latent_models_and_resume(tmp_path, assets, which, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = latent_run_and_resume(tmp_path, assets, which, "psld", "inpainting", ["sampler.num_steps=3"], capsys)
    assert saved["num_steps"] == 3 and saved["omega"] == {"ldm": 0.1, "sd": 0.1}[which]
    assert saved["gamma"] == {"ldm": 0.1, "sd": 0.01}[which]
