"""One DPS step against ``dps_step_small.pt`` (DPS reference, ``adm_small.pt`` weights, t = 500, ζ = 0.3).

The fixture is a batch of one, where our per-sample residual norm equals the reference's whole-batch norm.
"""
from __future__ import annotations

import pytest
import torch

from common.models import MODELS
from common.models.base import DiffusionModel
from common.operators import build_operator
from dps.conditioning import ConditioningMethod
from dps.ddpm import DDPMSchedule
from dps.sampler import dps_step
from tests.helpers.fixtures import load_fixture

T_INDEX = 500


@pytest.fixture(scope="module")
def fixture():
    d = load_fixture("dps_step_small.pt")
    assert int(d["inputs"]["t"]) == T_INDEX == d["config"]["t_index"]
    return d


class FixedOutput(DiffusionModel):
    """Returns the fixture's stored network output: isolates the step arithmetic from the UNet's kernels."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__(sample_shape=tuple(output.shape[1:2]) + tuple(output.shape[2:]))
        self.output = output

    def ddpm_output(self, x_t, t):
        assert t.tolist() == [T_INDEX]
        return self.output[:, :3] + 0 * x_t, self.output[:, 3:]


def test_step_arithmetic_from_stored_network_output(fixture):
    """x̂0 (clamped), μ̃, learned-range log σ², x' from the stored ε̂ and v: float32 rounding only (1e-6)."""
    inputs, out = fixture["inputs"], fixture["outputs"]
    schedule = DDPMSchedule.respaced(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 1000)
    op = build_operator("down_sampling", sigma=0.05, resolution=32, scale_factor=4)
    step = dps_step(FixedOutput(out["model_output"]), schedule, T_INDEX, inputs["x_t"], inputs["y"], op,
                    ConditioningMethod("vanilla"), inputs["noise"])
    for name, value in (("pred_xstart", step.x0hat), ("model_mean", step.mean),
                        ("model_log_variance", step.log_variance), ("sample_before_guidance", step.sample)):
        torch.testing.assert_close(value, out[name], atol=1e-6, rtol=1e-6, msg=name)
    torch.testing.assert_close(step.x_next, out["sample_before_guidance"], atol=1e-6, rtol=1e-6)  # vanilla: x = x'
    # the operator and the plain residual norm ‖y − A(x̂0)‖ (operator tolerance, README §0)
    torch.testing.assert_close(step.measurement, out["A_pred_xstart"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step.residual, out["residual_norm"].reshape(1), atol=0, rtol=1e-5)


def test_full_step_through_the_adm_unet(fixture):
    """The whole step with the ``ddpm`` model and the ``down_sampling`` operator, gradient through the UNet.

    Tolerances: UNet outputs agree to ~1e-5 (fixtures README §0); x̂0 multiplies ε̂ by sqrt(1/ᾱ_500 − 1) = 3.44,
    hence 1e-4 there and downstream. The residual norm is a sum over 192 entries (rtol 1e-5), the gradient
    a backward pass through the UNet (atol 1e-5 on entries up to 0.06).
    """
    adm = load_fixture("adm_small.pt")
    inputs, out = fixture["inputs"], fixture["outputs"]
    model = MODELS.get("ddpm").from_state_dict(adm["config"]["create_model_kwargs"], adm["state_dict"])
    op = build_operator("down_sampling", sigma=0.05, resolution=32, scale_factor=4)
    schedule = DDPMSchedule.respaced(model.betas, 1000)
    step = dps_step(model, schedule, T_INDEX, inputs["x_t"], inputs["y"], op, ConditioningMethod("ps", 0.3),
                    inputs["noise"])
    torch.testing.assert_close(torch.cat([step.eps, step.var_values], 1), out["model_output"], atol=1e-5, rtol=1e-5)
    for name, value in (("pred_xstart", step.x0hat), ("model_mean", step.mean),
                        ("model_log_variance", step.log_variance), ("sample_before_guidance", step.sample),
                        ("A_pred_xstart", step.measurement), ("x_next", step.x_next)):
        torch.testing.assert_close(value, out[name], atol=1e-4, rtol=1e-5, msg=name)
    torch.testing.assert_close(step.residual, out["residual_norm"].reshape(1), atol=0, rtol=1e-5)
    torch.testing.assert_close(step.gradient, out["norm_grad"], atol=1e-5, rtol=1e-4)
    # the update itself: x = x' − ζ ∇ (exact given our own x' and ∇)
    torch.testing.assert_close(step.x_next, step.sample - 0.3 * step.gradient, atol=0, rtol=0)
    assert not step.x_next.requires_grad and not any(p.requires_grad for p in model.parameters())
