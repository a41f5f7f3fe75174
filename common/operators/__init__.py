"""Forward operators, one file per task, found by name through ``OPERATORS``.

``build_operator(name=..., sigma=..., **params)`` takes a task config's ``operator`` block as-is
(the DAPS reference's keys), plus optional ``noise`` (``gaussian`` | ``poisson``) and its parameters.
"""
from __future__ import annotations

from typing import Any

from common.autoimport import import_submodules
from common.operators.base import LinearOperator, Operator, stack_states
from common.operators.noise import NoiseModel
from common.registry import NOISES, OPERATORS

import_submodules(__name__, __path__)


def build_noise(noise: str = "gaussian", **params: Any) -> NoiseModel:
    return NOISES.build(noise, **params)


def build_operator(name: str, sigma: float = 0.05, noise: str = "gaussian", rate: float | None = None,
                   state: Any = None, shared_state: bool = False, **params: Any) -> Operator:
    """Operator ``name`` with its noise model: Gaussian with std ``sigma`` or Poisson with ``rate``.

    ``state`` and ``shared_state`` say where the per-image masks/kernels come from; they belong to the
    experiment (:func:`common.protocol.split_operator_config`), not to the operator, and are ignored here so
    that a task config's operator block builds as it stands.
    """
    factory = OPERATORS.get(name)
    noise_params = {"sigma": sigma} if noise == "gaussian" else {"rate": rate}
    return factory(noise=build_noise(noise, **noise_params), **params)


__all__ = ["Operator", "LinearOperator", "build_operator", "build_noise", "stack_states", "OPERATORS"]
