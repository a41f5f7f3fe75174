"""Operator state (masks, kernels) as input: where each image's state comes from, and state files checked before use.

Masks and kernels are drawn per image from ``make_generator(seed, image_id, "operator")`` (independent of batch
size and order). Two options of an operator block change that (they are removed from the block before the
operator is built, see :func:`split_operator_config`):

* ``state: PATH``  load the state instead of drawing it: PATH is a run directory's ``measurements/``
  folder (``{id:05d}.pt`` files holding ``{"y", "state"}``) or one ``.pt`` file (``{"state": {...}}`` or
  a plain dict of tensors such as ``{"kernel": (k, k)}``) used for every image;
* ``shared_state: true``  the papers' setting: one state for the whole test set, drawn once from
  ``make_generator(seed, "operator")``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from common.data.files import load_tensor_file, tensor_problem
from common.errors import InputError, SettingError
from common.operators.base import Operator
from common.random import make_generator


@dataclass(frozen=True)
class StatePlan:
    """Where the per-image operator state comes from (see module docstring)."""

    path: str | None = None
    shared: bool = False

    def describe(self) -> str:
        if self.path:
            return f"loaded from {self.path}"
        return "shared: one draw from (seed, 'operator')" if self.shared else "per image: (seed, image id, 'operator')"


def _exists(path: Path) -> bool:
    """``path.exists()``, False for a path the system cannot even look up (a name too long, a NUL byte)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def split_operator_config(block: Mapping[str, Any]) -> tuple[dict[str, Any], StatePlan]:
    """An operator config block -> (the parameters for ``build_operator``, the state plan)."""
    params = dict(block)
    path, shared = params.pop("state", None), params.pop("shared_state", False)
    if not isinstance(shared, bool):
        raise SettingError("operator.shared_state", shared, "need true or false")
    if path is not None and shared:
        raise SettingError("operator.state", path, "excludes operator.shared_state=true: a loaded state file "
                           "already fixes the masks/kernels")
    if path is not None and (not isinstance(path, str) or not path or not _exists(Path(path).expanduser())):
        raise SettingError("operator.state", path, "does not exist: give a run directory's measurements/ folder "
                           "or a .pt file holding the state")
    return params, StatePlan(None if path is None else str(path), shared)


def state_data_problems(state: Mapping[str, Any]) -> list[str]:
    """What is wrong with an operator state as data: non-string keys, values that are no usable tensors."""
    problems = []
    for key, value in state.items():
        if not isinstance(key, str):
            problems.append(f"key {key!r} is not a name")
        elif not isinstance(value, torch.Tensor):
            problems.append(f"{key!r} is a {type(value).__name__}, not a tensor")
        elif (problem := tensor_problem(value)) is not None:
            problems.append(f"{key!r} {problem if problem.startswith('holds') else 'is ' + problem}")
    return problems


def _state_from_payload(payload: Any, where: str) -> dict[str, torch.Tensor]:
    """{"state": {...}} (a measurements file) or a plain dict of tensors."""
    state = payload.get("state", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise InputError(f"{where} holds no operator state: expected {{'state': {{name: tensor}}}} or "
                         f"{{name: tensor}} (e.g. {{'kernel': (k, k)}}), got a {type(payload).__name__}")
    problems = state_data_problems(state)
    if problems:
        raise InputError(f"{where} holds no usable operator state: {'; '.join(problems)}")
    return state


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The operator state in a ``.pt`` file (weights_only loading, see :func:`load_tensor_file`)."""
    return _state_from_payload(load_tensor_file(path), str(path))


def check_state(operator: Operator, state: Mapping[str, torch.Tensor], where: str) -> None:
    """A loaded state must have the keys and shapes the operator draws and values it accepts
    (:meth:`Operator.state_problems`: e.g. a 0/1 mask, a blur kernel summing to 1); :class:`InputError`."""
    problems = state_data_problems(state)
    if problems:
        raise InputError(f"{where}: no usable operator state: {'; '.join(problems)}")
    probe = operator.draw_state(make_generator(0, "probe"))
    expected = {k: tuple(v.shape) for k, v in probe.items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        raise InputError(f"{where}: operator state {got or '{}'} does not fit {type(operator).__name__}, "
                         f"which needs {expected or 'no state'}")
    problems = operator.state_problems(state)
    if problems:
        raise InputError(f"{where}: operator state refused for {type(operator).__name__}: {'; '.join(problems)}")


def state_source(plan: StatePlan, operator: Operator, seed: int, image_ids: Sequence[int]
                 ) -> Callable[[int], dict[str, torch.Tensor] | None]:
    """image id -> its operator state, or None (draw it per image). Loaded states are checked here, before
    sampling: a missing or unreadable file or a state of the wrong keys/shapes raises :class:`SettingError` for
    ``operator.state`` (the caller puts the task group in front)."""
    if plan.shared:
        shared = operator.draw_state(make_generator(seed, "operator"))
        return lambda image_id: shared
    if plan.path is None:
        return lambda image_id: None
    try:
        return _loaded_states(Path(plan.path).expanduser(), plan.path, operator, image_ids)
    except InputError as err:
        raise SettingError("operator.state", plan.path, f"{err}") from None


def _loaded_states(root: Path, setting: str, operator: Operator, image_ids: Sequence[int]
                   ) -> Callable[[int], dict[str, torch.Tensor]]:
    """image id -> its state loaded from ``root`` (one file for every image, or a measurements/ folder)."""
    if root.is_file():
        state = load_state_file(root)
        check_state(operator, state, str(root))
        return lambda image_id: state
    states = {}
    for image_id in image_ids:
        path = root / f"{image_id:05d}.pt"
        if not path.is_file():
            raise InputError(f"no state for image {image_id} ({path} is missing)")
        states[image_id] = load_state_file(path)
        check_state(operator, states[image_id], str(path))
    return states.__getitem__
