"""Small linear-Gaussian test problems on the accuracy problems' Gaussian prior (commands.accuracy.GAUSS_PRIOR), with
dense matrices, and the checks several baseline tests share."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from commands.accuracy import gauss_prior_params
from common.errors import ConfigError
from common.evaluation.exact_posterior import dense_operator
from common.models import build_model
from common.models.base import DiffusionModel
from common.operators import build_operator
from common.operators.base import Operator
from common.random import make_generator
from common.sampling import unsupported


@dataclass
class GaussianCase:
    """Prior N(m0, Σ) (the demo model), operator A with dense matrix M, one measurement y (batch 1)."""

    model: DiffusionModel
    operator: Operator
    y: torch.Tensor
    mean: torch.Tensor      # m0, (D,) float64
    cov: torch.Tensor       # Σ, (D, D) float64
    matrix: torch.Tensor    # M, (m, D) float64


def gaussian_case(task: dict, sigma_y: float = 0.05, resolution: int = 8, seed: int = 0) -> GaussianCase:
    """The demo prior at ``resolution``, operator ``task`` (a task config's operator block) with its state drawn
    from ``seed``, and y = A x + n for a prior draw x."""
    model = build_model(**gauss_prior_params(resolution))
    operator = build_operator(sigma=sigma_y, resolution=resolution, **task)
    operator.set_state({k: v[None] for k, v in operator.draw_state(make_generator(seed, "state")).items()})
    x = model.sample([make_generator(seed, "x")])
    y = operator.measure(x, [make_generator(seed, "noise")])
    mean = model.mean.double().expand(model.sample_shape).reshape(-1)
    return GaussianCase(model, operator, y, mean, model.dense_covariance(),
                        dense_operator(operator, model.sample_shape))


def dense_tweedie(case: GaussianCase, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[x0 | x0 + σ ε = x] = m0 + Σ (Σ + σ² I)⁻¹ (x − m0) for flattened float64 x (..., D)."""
    eye = torch.eye(len(case.mean), dtype=torch.float64)
    gain = case.cov @ torch.linalg.inv(case.cov + sigma ** 2 * eye)
    return case.mean + (x - case.mean) @ gain.T


def assert_batch_invariant(sampler, task: dict, resolution: int = 8) -> None:
    """Sample i depends only on generator i (per-sample masks of ``task``): a batch of 3 equals three batches of 1,
    and a rerun is bit-identical."""
    case = gaussian_case(task, resolution=resolution)
    operator = build_operator(sigma=0.05, resolution=resolution, **task)
    masks = [operator.draw_state(make_generator(0, i))["mask"] for i in range(3)]
    operator.set_state({"mask": torch.stack(masks)})
    y = operator.measure(case.model.sample([make_generator(1, i) for i in range(3)]),
                         [make_generator(2, i) for i in range(3)])
    batch = sampler.sample(case.model, operator, y, generators=[make_generator(3, i) for i in range(3)]).samples
    again = sampler.sample(case.model, operator, y, generators=[make_generator(3, i) for i in range(3)]).samples
    assert torch.equal(batch, again)
    for i in range(3):
        operator.set_state({"mask": masks[i][None]})
        one = sampler.sample(case.model, operator, y[i:i + 1], generators=[make_generator(3, i)]).samples
        torch.testing.assert_close(one[0], batch[i], atol=1e-5, rtol=0)


def assert_copies_batch_invariant(sampler, model, operator, y: torch.Tensor) -> None:
    """Three copies of one measurement ``y``: the batch equals its item 1 sampled alone with the same generator, and
    a rerun is bit-identical."""
    gens = lambda: [make_generator(5, i) for i in range(3)]  # noqa: E731
    batch = sampler.sample(model, operator, y.expand(3, -1, -1, -1), generators=gens()).samples
    again = sampler.sample(model, operator, y.expand(3, -1, -1, -1), generators=gens()).samples
    single = sampler.sample(model, operator, y, generators=gens()[1:2]).samples
    assert torch.equal(batch, again)
    torch.testing.assert_close(batch[1:2], single, atol=1e-6, rtol=0)


def assert_refuses_nonlinear_and_poisson(cls, task: dict) -> None:
    """Sampler class ``cls`` (linear operators, Gaussian noise): phase retrieval is unsupported naming "linear", and a
    Poisson-noise ``task`` operator stops sampling naming "Gaussian"."""
    model = gaussian_case(task).model
    message = unsupported(cls, model, build_operator(name="phase_retrieval", sigma=0.05, resolution=8, oversample=2.0))
    assert message is not None and "linear" in message
    poisson = build_operator(resolution=8, noise="poisson", rate=1.0, **task)
    with pytest.raises(ConfigError, match="Gaussian"):
        cls(num_steps=2).sample(model, poisson, torch.zeros(1, 3, 2, 2), generators=[make_generator(0)])
