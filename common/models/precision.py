"""Reduced precision, one table: the ``precision`` setting of the model wrappers and the benchmark's variants.

``fp32`` runs the networks as they are; ``fp16`` / ``bf16`` run them under ``torch.autocast`` with that compute
dtype (the weights stay float32, the outputs are cast back to float32 by the wrappers).
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from common.errors import one_of

#: precision name -> compute dtype of the autocast region (float32: no autocast)
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def compute_dtype(precision: str, key: str = "precision") -> torch.dtype:
    """The compute dtype of ``precision``; :class:`~common.errors.SettingError` naming ``key`` for an unknown one."""
    return PRECISIONS[one_of(key, precision, PRECISIONS)]


def autocast(device: torch.device, dtype: torch.dtype, cuda_only: bool = False) -> ContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``; a no-op for float32 (and off CUDA when ``cuda_only``)."""
    if dtype == torch.float32 or (cuda_only and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
