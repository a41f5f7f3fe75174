"""Inspecting input files before anything reads them: only regular, non-empty files are data.

A FIFO, a device such as /dev/zero, a directory named like an image, a dangling or looping symbolic link and
an unreadable file are refused by :func:`regular_file_problem` from ``os.stat`` alone, so nothing blocks on a
pipe or reads forever from a device.
"""
from __future__ import annotations

import errno
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import torch

from common.errors import InputError


def regular_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a data file, or None for a non-empty regular file (links followed)."""
    try:
        info = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link that loops"
        if err.errno == errno.ENOENT:
            return f"a dangling symbolic link (to '{os.readlink(path)}')" if path.is_symlink() else "missing"
        if err.errno == errno.EACCES:
            return "unreadable (permission denied)"
        return f"cannot be inspected ({os.strerror(err.errno or 0)})"
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        return "a directory, not a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file, not a regular file"
    if not stat.S_ISREG(mode):
        return "not a regular file (a socket?)"
    if info.st_size == 0:
        return "empty (0 bytes)"
    if not os.access(path, os.R_OK):
        return "unreadable (permission denied)"
    return None


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
