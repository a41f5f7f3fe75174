"""Construction-time checks shared by the task operators (bad input -> :class:`~common.errors.SettingError`
naming the argument, its value and what is valid)."""
from __future__ import annotations

from typing import Any

import torch

from common.errors import SettingError, positive_int, real
from common.operators.base import Operator


def odd_kernel_fits(kernel_size: int, resolution: int) -> int:
    """An odd kernel size whose reflect padding k//2 fits inside a ``resolution``-pixel image."""
    kernel_size = positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise SettingError("kernel_size", kernel_size, "need an odd size (the output keeps the image size)")
    if kernel_size // 2 >= resolution:
        raise SettingError("kernel_size", kernel_size, f"too large for resolution {resolution}: reflect padding of "
                           f"{kernel_size // 2} px needs an image larger than {kernel_size // 2} px")
    return kernel_size


def real_range(key: str, value: Any, low: float, high: float) -> tuple[float, float]:
    """A range [lo, hi] given as two finite numbers with low <= lo <= hi <= high."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise SettingError(key, value, f"need two numbers [lo, hi] with {low:g} <= lo <= hi <= {high:g}")
    lo, hi = (real(key, v, low, high) for v in value)
    if lo > hi:
        raise SettingError(key, list(value), f"need lo <= hi (two numbers in [{low:g}, {high:g}])")
    return lo, hi


def int_range(key: str, value: Any) -> tuple[int, int]:
    """A half-open integer range [lo, hi) given as two integers with 1 <= lo < hi."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise SettingError(key, value, "need two integers [lo, hi) with 1 <= lo < hi")
    lo, hi = (positive_int(key, v) for v in value)
    if lo >= hi:
        raise SettingError(key, list(value), "need lo < hi (the range [lo, hi) of sizes in pixels)")
    return lo, hi


def require_state(operator: Operator, key: str) -> torch.Tensor:
    """The installed per-image state tensor ``key``; a clear error when none was installed."""
    if key not in operator.state:
        raise RuntimeError(f"{type(operator).__name__} has no {key!r} installed: call "
                           f"set_state(stack_states([op.draw_state(g) for g in generators])) first")
    return operator.state[key]
