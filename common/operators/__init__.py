"""Forward operators, one file per task, found by name through ``OPERATORS``.

``build_operator(name=..., sigma=..., **params)`` takes a task config's ``operator`` block as-is
(the DAPS reference's keys), plus optional ``noise`` (``gaussian`` | ``poisson``) and its parameters.
"""
from __future__ import annotations

from typing import Any

from common.config.keys import build_strict
from common.errors import SettingError, one_of, positive_int, real
from common.operators.base import CAPABILITIES, LinearOperator, Operator, SVDOperator, stack_states
from common.operators.noise import NoiseModel
from common.registry import NOISES, OPERATORS, import_submodules

import_submodules(__name__, __path__)


def build_noise(noise: str = "gaussian", **params: Any) -> NoiseModel:
    return NOISES.build(noise, **params)


def build_operator(name: str, sigma: float = 0.05, noise: str = "gaussian", rate: float | None = None,
                   state: Any = None, shared_state: bool = False, cg_tol: float | None = None,
                   cg_max_iter: int | None = None, **params: Any) -> Operator:
    """Operator ``name`` with its noise model: Gaussian with std ``sigma`` or Poisson with ``rate``.

    ``state`` and ``shared_state`` say where the per-image masks/kernels come from; they belong to the
    experiment (:func:`common.data.operator_state.split_operator_config`), not to the operator, and are ignored here so
    that a task config's operator block builds as it stands. Every other key must be an argument of the operator's
    constructor (:class:`~common.errors.SettingError` naming ``operator.<key>`` otherwise), except ``cg_tol`` and
    ``cg_max_iter``: the conjugate-gradient tolerance and iteration cap of a linear operator's ``pinv``/``prox``
    fallback (:mod:`common.operators.linalg`; the class defaults when absent).
    """
    factory = OPERATORS.get(name)
    try:
        noise_params = {"sigma": sigma} if one_of("noise", noise, NOISES.names()) == "gaussian" else {"rate": rate}
        noise_model = build_noise(noise, **noise_params)
    except SettingError as err:
        raise err.at("operator") from None
    operator = build_strict(factory, {"noise": noise_model, **params}, "operator")
    for key, value, check in (("cg_tol", cg_tol, lambda k, v: real(k, v, 0, low_open=True)),
                              ("cg_max_iter", cg_max_iter, positive_int)):
        if value is None:
            continue
        if "linear" not in operator.capabilities:
            raise SettingError(f"operator.{key}", value, f"remove it: {name} is not linear (no conjugate gradients)")
        try:
            setattr(operator, key, check(key, value))
        except SettingError as err:
            raise err.at("operator") from None
    return operator


__all__ = ["CAPABILITIES", "Operator", "LinearOperator", "SVDOperator", "build_operator", "build_noise", "stack_states",
           "OPERATORS"]
