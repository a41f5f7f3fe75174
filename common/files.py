"""Inspecting input files before anything reads them: only regular, non-empty files are data.

A FIFO, a device such as /dev/zero, a directory named like an image, a dangling or looping symbolic link and
an unreadable file are refused by :func:`regular_file_problem` from ``os.stat`` alone, so nothing blocks on a
pipe or reads forever from a device.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


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
