"""The evaluation protocol as data: named image lists with SHA-256 checksums and the operator state's source
(the software a run used: :func:`common.provenance.environment`).

Image lists. A list ``<name>.sha256`` (``sha256sum`` format: ``<sha256>  <file name>`` per line) names the
files of a test set; image id i is the file on line i. ``data.id_list=<name>`` looks the list up beside the
data configs (``configs/data/<name>.sha256``) or takes a path; every selected file is hashed and compared
before sampling. Write a list with ``python -m commands.protocol FOLDER > configs/data/<name>.sha256``.

Operator state. Masks and kernels are drawn per image from ``make_generator(seed, image_id, "operator")``
(independent of batch size and order). Two options of an operator block change that (they are removed
from the block before the operator is built, see :func:`split_operator_config`):

* ``state: PATH``  load the state instead of drawing it: PATH is a run directory's ``measurements/``
  folder (``{id:05d}.pt`` files holding ``{"y", "state"}``) or one ``.pt`` file (``{"state": {...}}`` or
  a plain dict of tensors such as ``{"kernel": (k, k)}``) used for every image;
* ``shared_state: true``  the papers' setting: one state for the whole test set, drawn once from
  ``make_generator(seed, "operator")``.
"""
from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from common.errors import ConfigError, SettingError
from common.files import regular_file_problem
from common.operators.base import Operator
from common.random import make_generator

LIST_DIR = Path(__file__).resolve().parents[1] / "configs" / "data"


class InputError(ConfigError):
    """Measurements or operator states that do not fit the task, found before sampling."""


# ---------------------------------------------------------------------------------------------- image lists
def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_list(id_list: str) -> Path | None:
    """The list file for ``data.id_list``: an existing path, else ``configs/data/<id_list>.sha256``, else None."""
    given = Path(id_list).expanduser()
    if given.is_file():
        return given
    named = LIST_DIR / f"{id_list}.sha256"
    return named if named.is_file() else None


def read_list(path: str | Path) -> list[tuple[str, str]]:
    """(file name, sha256) per line of a ``sha256sum``-format list; a malformed line raises ValueError."""
    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{path}:{number}: expected '<64 hex digits>  <file name>', got {line!r}")
        entries.append((parts[1].strip().lstrip("*"), digest))
    if not entries:
        raise ValueError(f"image list {path} names no files")
    return entries


def verify_files(root: Path, entries: Sequence[tuple[str, str]]) -> None:
    """Every (name, sha256) must exist under ``root`` with that SHA-256; else one ValueError naming them all."""
    problems = []
    for name, expected in entries:
        path = root / name
        if problem := regular_file_problem(path):  # missing, a FIFO, a directory, ...: never opened
            problems.append(f"{name}: {problem}")
        elif (actual := file_sha256(path)) != expected:
            problems.append(f"{name}: SHA-256 {actual[:12]}... differs from the list's {expected[:12]}...")
    if problems:
        raise ValueError(f"the images in '{root}' do not match their checksum list: " + "; ".join(problems)
                         + ". Fetch them again with `bash download.sh data`, or run unverified with data.id_list=null")


def write_list(folder: str | Path, suffixes: Sequence[str]) -> str:
    """The list of a folder's image files, sorted by name (``sha256sum`` format)."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in suffixes)
    return "".join(f"{file_sha256(p)}  {p.name}\n" for p in files)


# ---------------------------------------------------------------------------------------------- operator state
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


def load_tensor_file(path: str | Path) -> Any:
    """The payload of a ``.pt`` file of plain tensors (dicts, lists, numbers), loaded with ``weights_only=True``.

    :class:`InputError` with one line naming the file and what is wrong: not a regular file, empty, pickled
    Python objects (refused unread), or not a complete ``torch.save`` file (truncated, garbage).
    """
    problem = regular_file_problem(Path(path))
    if problem:
        raise InputError(f"{path}: {problem}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise InputError(f"{path}: not a plain tensor file: it holds pickled Python objects, which are "
                             f"never loaded; save only tensors (and dicts/lists of them) with torch.save") from None
        raise InputError(f"{path}: not a torch.save file (unreadable content)") from None
    except Exception as err:  # weights_only loading ran no code: whatever failed, the bytes are no torch.save file
        kind = type(err).__name__
        raise InputError(f"{path}: not a complete torch.save file (truncated or damaged; {kind})") from None


def tensor_problem(value: torch.Tensor) -> str | None:
    """Why a loaded tensor is no usable data (meta, sparse or quantized, not real numbers, NaN/inf), or None."""
    if value.is_meta:
        return "a meta tensor (it has no data)"
    if value.layout != torch.strided:
        return f"a {str(value.layout).removeprefix('torch.')} tensor: only dense tensors are read"
    if value.is_quantized or value.is_complex():
        return f"of dtype {str(value.dtype).removeprefix('torch.')}, not real numbers"
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        return "holds NaN or infinite values"
    return None


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
    sampling: a missing file or a state of the wrong keys/shapes raises :class:`InputError`."""
    if plan.shared:
        shared = operator.draw_state(make_generator(seed, "operator"))
        return lambda image_id: shared
    if plan.path is None:
        return lambda image_id: None
    root = Path(plan.path).expanduser()
    if root.is_file():
        state = load_state_file(root)
        check_state(operator, state, str(root))
        return lambda image_id: state
    states = {}
    for image_id in image_ids:
        path = root / f"{image_id:05d}.pt"
        if not path.is_file():
            raise InputError(f"operator.state={plan.path}: no state for image {image_id} ({path} is missing)")
        states[image_id] = load_state_file(path)
        check_state(operator, states[image_id], str(path))
    return states.__getitem__

