"""Strict keys: every setting that reaches a constructor is one it takes, at any depth.

Constructors take named arguments (no catch-all ``**kwargs``); :func:`build_strict` checks a config block against the
constructor's signature before calling it and names the full key path of anything unknown (with the closest valid
key), and :func:`check_keys` does the same for the nested blocks an adapter reads key by key. Both raise
:class:`~common.errors.SettingError`, and so do constructors for bad values: :func:`build_strict` re-raises it with the
full key path; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Iterable, Mapping, TypeVar

from common.errors import SettingError

T = TypeVar("T")


def _suggest(key: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_keys(block: Mapping[str, Any], valid: Iterable[str], path: str = "",
               required: Iterable[str] = ()) -> None:
    """Refuse a key of ``block`` outside ``valid`` (suggesting the closest) or a missing ``required`` key, naming its
    path ``path.key`` (:class:`SettingError`, which a caller that knows more of the path prefixes further)."""
    valid = sorted(valid)
    where = f"{path}." if path else ""
    for key in block:
        if key not in valid:
            raise SettingError(f"{where}{key}", block[key], f"valid keys{' of ' + path if path else ''}: "
                               f"{', '.join(valid)}{_suggest(key, valid)}", kind="unknown")
    for key in required:
        if key not in block:
            raise SettingError(f"{where}{key}", None, f"required (valid keys{' of ' + path if path else ''}: "
                                                      f"{', '.join(valid)})", kind="missing")


def parameters(factory: Callable[..., Any]) -> tuple[list[str], list[str]]:
    """(all keyword parameter names, required ones) of a constructor or function."""
    names, required = [], []
    for name, p in inspect.signature(factory).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{factory!r} takes *args/**kwargs: strict keys need named parameters")
        names.append(name)
        if p.default is p.empty:
            required.append(name)
    return names, required


def build_strict(factory: Callable[..., T], block: Mapping[str, Any], path: str) -> T:
    """``factory(**block)`` after checking the keys against its signature; bad values come back as
    :class:`SettingError` with ``path`` in front of the key."""
    names, required = parameters(factory)
    check_keys(block, names, path, required)
    try:
        return factory(**block)
    except SettingError as err:
        raise err.at(path) from None
