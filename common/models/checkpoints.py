"""Safe checkpoint loading: never unpickles arbitrary code.

``.pt``/``.pth``/``.ckpt`` files load with ``torch.load(..., weights_only=True)``; ``.safetensors`` through
safetensors. PyTorch-Lightning checkpoints (the CompVis latent diffusion ``model.ckpt`` files, also when renamed
to ``.pt``) reference a few globals besides tensors; exactly those in :data:`LIGHTNING_SAFE_GLOBALS` are admitted,
each mapped to an inert stand-in or a data-only constructor. Any other global (a class instance, ``os.system``,
…) is refused. A missing file stops the run with the expected path, the model name and the ``download.sh`` line
that fetches it; a corrupt, truncated or refused file gives an error naming the file.
"""
from __future__ import annotations

import _codecs
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the architecture."""


class LightningCallbackState:
    """Inert stand-in for the Lightning callback classes a checkpoint names (they key its ``callbacks`` dict).

    It has no behaviour: unpickling can only create it and fill its ``__dict__`` with plain data.
    """


_NUMPY_SCALAR = np.float64(0).__reduce__()[0]  # numpy's scalar reconstructor, whatever its module path

#: the globals admitted besides torch's own weights-only set, as (object, name in the pickle):
#: Lightning's ModelCheckpoint class -> :class:`LightningCallbackState`, and the data-only reconstructors of
#: numpy scalars (``best_model_score`` and similar values in the callback state)
LIGHTNING_SAFE_GLOBALS: list[tuple[Callable, str]] = [
    (LightningCallbackState, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    (LightningCallbackState, "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint"),
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
    (np.dtype, "numpy.dtype"),
    *((type(np.dtype(t)), f"numpy.dtypes.{type(np.dtype(t)).__name__}")
      for t in (np.float64, np.float32, np.int64, np.int32)),
    (_codecs.encode, "_codecs.encode"),
]


def missing_checkpoint_message(path: str | Path, what: str, download: str, key: str = "model.checkpoint") -> str:
    """What is missing, the line that fetches it, and the override ``key=PATH`` that points at a copy elsewhere."""
    return (f"checkpoint for {what} not found at '{path}'. Fetch it with `{download}`, or pass {key}=PATH "
            f"for a copy elsewhere.")


def require_file(path: str | Path, what: str, download: str, key: str = "model.checkpoint") -> Path:
    """The path if it exists, else a :class:`CheckpointError` saying how to get it (``key``: the config key of
    the path, named in the message as an override)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(missing_checkpoint_message(path, what, download, key))
    return path


def load_state_dict(path: str | Path, what: str, download: str, key: str | None = None
                    ) -> dict[str, torch.Tensor]:
    """A flat state dict from ``path`` (``.pt``, ``.pth``, ``.ckpt``, ``.bin`` or ``.safetensors``), safely.

    ``key`` selects a nested dict (e.g. ``"state_dict"`` of a Lightning ``.ckpt``) when present. Torch pickles
    load with ``weights_only=True`` and the :data:`LIGHTNING_SAFE_GLOBALS` allow-list, nothing else.
    """
    path = require_file(path, what, download)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            data: Mapping = load_file(str(path), device="cpu")
        else:
            with torch.serialization.safe_globals(LIGHTNING_SAFE_GLOBALS):
                data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or naming a global outside the allow-list
        raise CheckpointError(f"cannot read checkpoint '{path}' for {what}: {type(err).__name__}: "
                              f"{str(err).rstrip('.')}. "
                              f"A file that references code outside the allow-list is refused; delete it and "
                              f"fetch it again with `{download}`.") from err
    if key is not None and isinstance(data, Mapping) and key in data:
        data = data[key]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"checkpoint '{path}' for {what} is not a flat tensor state dict")
    return dict(data)


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str,
                drop_prefixes: tuple[str, ...] = ()) -> None:
    """Strict ``load_state_dict``; keys starting with ``drop_prefixes`` (training-only state) are dropped first.

    Mismatches raise :class:`CheckpointError` listing the first missing/unexpected keys and shape errors.
    """
    state = {k: v for k, v in state.items() if not k.startswith(drop_prefixes)}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint does not fit {what}: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}, shape mismatches {shapes[:5]}")
    module.load_state_dict(state, strict=True)
