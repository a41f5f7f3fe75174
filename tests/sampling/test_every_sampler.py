"""Every registered sampler, built from its own yaml through the real config, samples a linear Gaussian problem.

The Gaussian demo prior at 16×16 with ×4 down-sampling (σ_y = 0.05) has the exact posterior mean m; its prior mean μ
is far from m (the measurement is informative). A posterior sampler's mean over n samples must land much closer to m
than μ is: ‖x̄ − m‖ < ½ ‖μ − m‖ (a sampler that ignores y gives ≈ ‖μ − m‖, one that samples the posterior exactly
gives ≈ sqrt(tr P / n), measured below 0.05 ‖μ − m‖ here). Latent samplers run on the same prior behind an identity
"autoencoder" (a latent model whose decoder is the identity), so the same exact answer applies.

:data:`CHEAP` holds, per registered sampler, the overrides that make it cheap; :func:`test_every_sampler_has_settings`
fails when a sampler is registered without an entry, so a new sampler cannot skip this test.
"""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common.evaluation.exact_posterior import dense_operator, linear_gaussian_posterior, prior_mixture
from common.models import build_model
from common.operators import build_operator
from common.random import make_generator
from common.registry import SAMPLERS
from common.sampling import build_sampler, unsupported
from tests.helpers.fixtures import REPO

RESOLUTION, N = 16, 16

#: per sampler: (task group, overrides of its config that keep it to a few seconds on 16×16 images)
CHEAP: dict[str, tuple[str, list[str]]] = {
    "edm_daps": ("gaussian", ["sampler.annealing_scheduler_config.num_steps=25",
                              "sampler.diffusion_scheduler_config.num_steps=2",
                              "task.gaussian.mcmc_sampler_config.num_steps=20"]),
    "latent_edm_daps": ("ldm", ["sampler.annealing_scheduler_config.num_steps=25",
                                "sampler.diffusion_scheduler_config.num_steps=2",
                                "task.ldm.mcmc_sampler_config.num_steps=20"]),
    "sd_edm_daps": ("sd", ["sampler.annealing_scheduler_config.num_steps=25",
                           "sampler.diffusion_scheduler_config.num_steps=2",
                           "task.sd.mcmc_sampler_config.num_steps=20"]),
    "dps": ("gaussian", ["sampler.num_steps=100", "sampler.clip_denoised=false"]),
    "latent_dps": ("ldm", ["sampler.num_steps=100", "task.ldm.dps.scale=1.0"]),
    "diffpir": ("gaussian", ["sampler.num_steps=20"]),
    "ddrm": ("gaussian", ["sampler.num_steps=20"]),
    "ddnm": ("gaussian", ["sampler.num_steps=20"]),
    "reddiff": ("gaussian", ["sampler.num_steps=100"]),
    "pigdm": ("gaussian", ["sampler.num_steps=20"]),
    "mmps": ("gaussian", ["sampler.num_steps=20"]),
    "psld": ("ldm", ["sampler.num_steps=50"]),
    "resample": ("ldm", ["sampler.num_steps=30", "sampler.resample_every=3", "sampler.travel_steps=2",
                         "sampler.pixel_iters=50", "sampler.latent_iters=50"]),
    "fps_smc": ("gaussian", ["sampler.num_steps=20", "sampler.num_particles=4"]),
    "dcdp": ("gaussian", ["sampler.num_steps=5"]),
    "hio": ("gaussian", ["sampler.num_steps=10"]),
}
#: samplers defined for one operator only, refused on down-sampling (the message names the capability); their own
#: tests cover them (tests/baselines/test_hio.py)
ONLY_ON = {"hio": "fourier_magnitude"}


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("config", overrides=overrides)


def problem():
    cfg = compose_config(["model=demo", f"data.resolution={RESOLUTION}"])
    model = build_model(**OmegaConf.to_container(cfg.model, resolve=True))
    operator = build_operator("down_sampling", sigma=0.05, resolution=RESOLUTION, scale_factor=4)
    truth = model.sample([make_generator(0, "truth")])
    y = operator.measure(truth, [make_generator(0, "noise")])
    exact = linear_gaussian_posterior(prior_mixture(model), dense_operator(operator, model.sample_shape), y, 0.05)
    return model, operator, y, exact


def as_latent(model):
    model.latent = True  # instance attribute: the identity decoder of the base class keeps the math unchanged
    return model


def test_every_sampler_has_settings():
    assert set(SAMPLERS.names()) == set(CHEAP), "add the new sampler to CHEAP (cheap settings for this test)"


@pytest.mark.parametrize("name", sorted(CHEAP))
def test_sampler_mean_approaches_the_exact_posterior_mean(name):
    group, overrides = CHEAP[name]
    cfg = compose_config([f"sampler={name}", f"task_group={group}", "task=down_sampling", *overrides])
    sampler = build_sampler(OmegaConf.to_container(cfg.sampler, resolve=True))
    model, operator, y, exact = problem()
    if "latent" in type(sampler).spaces and "pixel" not in type(sampler).spaces:
        model = as_latent(model)
    if name in ONLY_ON:
        assert ONLY_ON[name] in unsupported(type(sampler), model, operator)
        return
    assert unsupported(type(sampler), model, operator) is None
    states: list[dict] = []
    result = sampler.sample(model, operator, y.expand(N, -1, -1, -1), generators=[make_generator(1, i) for i in range(N)],
                            callback=states.append)
    assert result.failed_at == [None] * N
    # the seam's contract (README, "Adding a sampler"): callback once per outer step with the four required keys
    assert states, f"{name} never calls its callback"
    assert all({"step", "num_steps", "finite", "decode"} <= set(state) for state in states)
    steps = [state["step"] for state in states]
    assert steps == sorted(steps) and steps[-1] < states[-1]["num_steps"]
    mean = result.samples.double().reshape(N, -1).mean(0)
    prior_mean = prior_mixture(model).mean
    error, scale = float((mean - exact.mean).norm()), float((prior_mean - exact.mean).norm())
    assert error < 0.5 * scale, f"{name}: ‖x̄ − m‖ = {error:.3g}, ‖μ − m‖ = {scale:.3g}"
