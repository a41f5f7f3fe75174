"""Construction-time checks shared by the task operators (bad input -> ValueError naming the value)."""
from __future__ import annotations

import torch

from common.operators.base import Operator


def positive_int(name: str, value: int) -> int:
    """``value`` as an int, refusing bools, non-integers and values < 1."""
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def odd_kernel_fits(kernel_size: int, resolution: int) -> int:
    """An odd kernel size whose reflect padding k//2 fits inside a ``resolution``-pixel image."""
    kernel_size = positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (the output keeps the image size), got {kernel_size}")
    if kernel_size // 2 >= resolution:
        raise ValueError(f"kernel_size {kernel_size} is too large for resolution {resolution}: reflect padding "
                         f"of {kernel_size // 2} px needs an image larger than {kernel_size // 2} px")
    return kernel_size


def require_state(operator: Operator, key: str) -> torch.Tensor:
    """The installed per-image state tensor ``key``; a clear error when none was installed."""
    if key not in operator.state:
        raise RuntimeError(f"{type(operator).__name__} has no {key!r} installed: call "
                           f"set_state(stack_states([op.draw_state(g) for g in generators])) first")
    return operator.state[key]
