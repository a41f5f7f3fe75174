"""Model-call counting, the one helper the benchmark and the accuracy tool use.

A sampler's cost is the number of network evaluations per sample (NFE): calls of the denoiser, whether reached
through ``tweedie`` (the EDM denoiser D(x, σ)) or ``ddpm_output`` (ε̂_θ(x_t, t)), and for latent models the calls of
``decode``. A call on a batch of B samples counts B evaluations, so a count divided by the batch size is the NFE per
sample. A call made inside a counted call (the analytic priors' ``ddpm_output`` and ``score`` go through
``tweedie``) is the same evaluation and is not counted again. Backward passes through the network (the
vector–Jacobian products of DPS, ΠGDM, MMPS, PSLD) are counted apart, as ``vjp``: papers quote NFE as forward
evaluations, while a backward pass costs about as much again.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from common.models.base import DiffusionModel

#: model method -> the counter it adds to
COUNTED = {"tweedie": "nfe", "ddpm_output": "nfe", "decode": "decode"}


@contextmanager
def count_calls(model: DiffusionModel) -> Iterator[dict[str, int]]:
    """Inside the block, ``counts["nfe"]`` / ``counts["decode"]`` sum the per-sample network / decoder evaluations
    of ``model`` (outermost calls only) and ``counts["vjp"]`` the per-sample backward passes through the network;
    the model is restored on exit."""
    counts = {"nfe": 0, "decode": 0, "vjp": 0}
    depth = [0]

    def counted(name: str) -> Callable[..., Any]:
        method = getattr(model, name)

        def wrapper(x: torch.Tensor, *args: Any) -> Any:
            outermost = depth[0] == 0
            if outermost:
                counts[COUNTED[name]] += x.shape[0]
            depth[0] += 1
            try:
                out = method(x, *args)
            finally:
                depth[0] -= 1
            first = out[0] if isinstance(out, tuple) else out
            if outermost and COUNTED[name] == "nfe" and first.requires_grad:
                first.register_hook(lambda grad: counts.__setitem__("vjp", counts["vjp"] + grad.shape[0]))
            return out
        return wrapper

    names = [name for name in COUNTED if name != "decode" or model.latent]
    for name in names:
        setattr(model, name, counted(name))
    try:
        yield counts
    finally:
        for name in names:
            delattr(model, name)
