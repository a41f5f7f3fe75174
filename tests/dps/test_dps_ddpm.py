"""DPS building blocks: DDPM tables vs the reference numbers, respacing, conditioning methods."""
from __future__ import annotations

import pytest
import torch

from common.models.schedules import ddpm_betas
from common.operators.base import LinearOperator, Operator
from common.operators.noise import GaussianNoise
from dps.conditioning import ConditioningMethod, measurement_distance, project
from dps.ddpm import DDPMSchedule, space_timesteps
from tests.helpers.fixtures import load_fixture


class Mask(LinearOperator):
    """A x = m ⊙ x with a fixed 0/1 mask: A⁺ = Aᵀ = A."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(GaussianNoise(0.05))
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.mask


def test_tables_match_reference_schedule():
    """schedules.json holds the DPS reference's float64 tables for the linear schedule, T = 1000."""
    ref = load_fixture("schedules.json")["dps_ddpm_linear_schedule"]
    sched = DDPMSchedule.respaced(ddpm_betas("linear"), 1000)
    for name in ("alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
                 "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "log_betas"):
        table = getattr(sched, name)
        for index, value in ref[name].items():
            # log β at t = 0 is log(1e-4) ≈ −9.2: respacing recomputes β_0 = 1 − ᾱ_0, off by ~1e-17 absolute
            assert float(table[int(index)]) == pytest.approx(value, rel=1e-12, abs=1e-15), (name, index)
    assert torch.equal(sched.timesteps, torch.arange(1000))
    assert (sched.betas - ddpm_betas("linear")).abs().max() < 1e-15


def test_space_timesteps_semantics():
    assert space_timesteps(1000, 1000) == list(range(1000))
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    # 300 steps in 3 sections of 100, taking 10, 15, 20 evenly spaced steps from each (first and last included)
    kept = space_timesteps(300, [10, 15, 20])
    assert len(kept) == 45 and kept[:10] == list(range(0, 100, 11)) and kept[10] == 100 and kept[-1] == 299
    assert space_timesteps(300, "10,15,20") == kept
    assert space_timesteps(10, 1) == [0]
    # the first T mod n sections are one step longer
    assert space_timesteps(10, [2, 2, 2]) == [0, 3, 4, 6, 7, 9]
    with pytest.raises(ValueError, match="cannot take 20"):
        space_timesteps(10, 20)
    with pytest.raises(ValueError, match="no integer stride"):
        space_timesteps(10, "ddim7")


def test_respaced_schedule_keeps_cumulative_products():
    """β'_i = 1 − ᾱ_{k_i}/ᾱ_{k_{i−1}} so that the respaced ᾱ' equals ᾱ at the kept steps."""
    base = ddpm_betas("linear")
    sched = DDPMSchedule.respaced(base, 25)
    kept = torch.tensor(space_timesteps(1000, 25))
    assert torch.equal(sched.timesteps, kept)
    assert torch.allclose(sched.alphas_cumprod, torch.cumprod(1 - base, 0)[kept], rtol=1e-13, atol=0)
    assert float(sched.posterior_variance[0]) == 0.0
    assert sched.posterior_log_variance_clipped[0] == sched.posterior_log_variance_clipped[1]


def test_posterior_mean_and_variance_are_the_gaussian_posterior():
    """μ̃, β̃ against Bayes' rule for x_t = sqrt(α_t) x_{t−1} + sqrt(β_t) n,
    x_{t−1} ~ N(sqrt(ᾱ_{t−1}) x0, 1 − ᾱ_{t−1})."""
    sched = DDPMSchedule.respaced(ddpm_betas("linear"), 50)
    x0, x_t = torch.tensor([0.3]), torch.tensor([-1.2])
    for i in (1, 17, 49):
        a, prev = 1 - sched.betas[i], sched.alphas_cumprod_prev[i]
        prior_var, lik_var = 1 - prev, sched.betas[i]
        post_var = 1 / (1 / prior_var + a / lik_var)
        post_mean = post_var * (prev.sqrt() * x0.double() / prior_var + a.sqrt() * x_t.double() / lik_var)
        assert float(sched.posterior_variance[i]) == pytest.approx(float(post_var), rel=1e-10)
        assert float(sched.posterior_mean(x0, x_t, i)) == pytest.approx(float(post_mean), rel=1e-6)


def test_log_variance_learned_range_and_fixed():
    sched = DDPMSchedule.respaced(ddpm_betas("linear"), 1000)
    like = torch.zeros(1, 1, 2, 2)
    v = torch.tensor([-1.0, 1.0, 0.0, 0.5]).reshape(1, 1, 2, 2)
    out = sched.log_variance(500, v, like).flatten()
    lo, hi = float(sched.posterior_log_variance_clipped[500]), float(sched.log_betas[500])
    assert out.tolist() == pytest.approx([lo, hi, (lo + hi) / 2, 0.25 * lo + 0.75 * hi], rel=1e-6)
    fixed = sched.log_variance(500, None, like)
    assert fixed.shape == like.shape and float(fixed[0, 0, 0, 0]) == pytest.approx(lo, rel=1e-6)


def test_distance_is_per_sample_and_poisson_weighted():
    y = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    pred = torch.tensor([[0.0, 0.0], [0.5, 0.0]])
    assert measurement_distance(y, pred).tolist() == pytest.approx([5 ** 0.5, 0.25])
    # the reference at batch size 1: (‖y − A x̂0‖ / |y|).mean()
    ref = [float((torch.linalg.norm(y[b] - pred[b]) / y[b].abs()).mean()) for b in range(2)]
    assert measurement_distance(y, pred, poisson=True).tolist() == pytest.approx(ref)


def test_projection_hits_the_measurement_and_is_idempotent():
    g = torch.Generator().manual_seed(0)
    op = Mask((torch.rand(1, 1, 4, 4, generator=g) < 0.5).float())
    x, y_t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g) * op.mask
    p = project(op, x, y_t)
    assert torch.allclose(op(p), y_t)
    assert torch.allclose(project(op, p, y_t), p)
    assert torch.equal(p * (1 - op.mask), x * (1 - op.mask))  # the unobserved part is untouched


def test_method_names_and_requirements():
    with pytest.raises(ValueError, match="choose one of vanilla, ps, projection, mcg"):
        ConditioningMethod("dps")
    with pytest.raises(ValueError, match="step size > 0"):
        ConditioningMethod("ps", 0.0)
    assert ConditioningMethod("vanilla", 0.0).gradient is False

    class Square(Operator):  # non-linear: no pseudo-inverse
        def forward(self, x):
            return x ** 2

    from common.models.gaussian import GaussianPrior
    prior = GaussianPrior(4, [0.0] * 3, [0.1] * 3, [2.0] * 3)
    for name in ("projection", "mcg"):
        with pytest.raises(ValueError, match="no pseudo-inverse.*operators with pinv: .*inpainting"):
            ConditioningMethod(name, 1.0).check_setup(prior, Square(GaussianNoise(0.05)))
    ConditioningMethod("mcg", 1.0).check_setup(prior, Mask(torch.ones(1, 1, 4, 4)))


def test_single_step_schedule_has_a_log_variance_table():
    from common.models.schedules import ddpm_betas
    from dps.ddpm import DDPMSchedule
    schedule = DDPMSchedule.respaced(ddpm_betas(), 1)
    assert len(schedule) == 1 and torch.isfinite(schedule.posterior_log_variance_clipped).all()
