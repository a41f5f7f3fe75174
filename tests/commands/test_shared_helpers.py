"""The helpers the applications share from the library: model-call counting, measurement simulation, tables and
the precision table."""
from __future__ import annotations

import pytest
import torch

from commands.accuracy import gauss_prior_params
from common.errors import SettingError
from common.evaluation.tables import aligned, csv_text, markdown
from common.models import build_model
from common.models.precision import PRECISIONS, autocast, compute_dtype
from common.operators import build_operator
from common.operators.measurement import draw_states, simulate
from common.random import make_generator
from common.sampling.counting import count_calls


def test_count_calls_counts_outermost_evaluations_per_sample_and_restores_the_model():
    """The analytic prior's ddpm_output goes through tweedie: one evaluation, counted once per sample."""
    model = build_model(**gauss_prior_params(8))
    x = torch.zeros(3, *model.sample_shape)
    with count_calls(model) as counts:
        model.tweedie(x, 1.0)
        model.ddpm_output(x, torch.tensor([10, 10, 10]))
        model.score(x[:2], 0.5)
    assert counts == {"nfe": 3 + 3 + 2, "decode": 0, "vjp": 0}
    assert "tweedie" not in vars(model) and "ddpm_output" not in vars(model)
    # a backward pass through the denoiser (DPS-style guidance) is counted apart, per sample
    x.requires_grad_(True)
    with count_calls(model) as counts:
        model.tweedie(x, 1.0).sum().backward()
    assert counts == {"nfe": 3, "decode": 0, "vjp": 3}


def test_simulate_does_not_depend_on_the_batch():
    """y_i depends only on x_i, its state generator and its noise generator."""
    operator = build_operator(name="inpainting", mask_type="random", mask_prob_range=[0.3, 0.7], sigma=0.1,
                              resolution=8)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    states = draw_states(operator, [make_generator(1, i, "operator") for i in range(3)])
    batch = simulate(operator, x, states, [make_generator(1, i, "noise") for i in range(3)])
    for i in range(3):
        single = simulate(operator, x[i:i + 1], states[i:i + 1], [make_generator(1, i, "noise")])
        torch.testing.assert_close(batch[i:i + 1], single, rtol=0, atol=0)
    # noiseless check of y = A_s(x): the mask keeps exactly the pixels it marks
    operator = build_operator(name="inpainting", mask_type="random", mask_prob_range=[0.3, 0.7], sigma=0.0,
                              resolution=8)
    y = simulate(operator, x, states, [make_generator(1, i, "noise") for i in range(3)])
    torch.testing.assert_close(y, operator(x), rtol=0, atol=0)


def test_tables():
    header, body = ["a", "long name"], [["1", "x"], ["22", "y"]]
    assert markdown(header, body) == "| a | long name |\n|---|---|\n| 1 | x |\n| 22 | y |\n"
    assert aligned(header, body).splitlines() == ["a   long name", "1   x", "22  y"]
    assert csv_text([{"a": 1, "b": None, "extra": 3}], ["a", "b"]) == "a,b\n1,\n"


def test_precision_table():
    assert compute_dtype("bf16") is torch.bfloat16 and set(PRECISIONS) == {"fp32", "fp16", "bf16"}
    with pytest.raises(SettingError, match="precision='fp8' is not valid: choose one of fp32, fp16, bf16"):
        compute_dtype("fp8")
    cpu = torch.device("cpu")
    with autocast(cpu, torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, torch.bfloat16, cuda_only=True), autocast(cpu, torch.float32):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
