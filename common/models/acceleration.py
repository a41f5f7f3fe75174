"""Speed options for a prior, applied once after it is built; the math (and, up to float rounding, the numbers)
stay the same.

* ``channels_last``: every 4-D weight of the prior's networks in NHWC memory format. cuDNN (and oneDNN on the
  CPU) then run their NHWC convolution kernels and return NHWC activations, which the following element-wise
  ops, GroupNorms and convolutions keep: the layout tensor cores prefer. Inputs need no conversion (a
  convolution whose weight is channels-last picks the channels-last kernel). Results equal the NCHW ones up to
  the summation order of the convolution kernels.
* ``compile``: the model's seam methods, the calls a sampler makes per step, are replaced on this instance by
  their ``torch.compile`` versions:

      tweedie(x, σ) = D(x; σ)            (DAPS PF-ODE and score-based MCMC)
      ddpm_output(x_t, t) = (ε̂, v)        (DPS, also differentiated: AOTAutograd compiles the backward)
      decode(z)                           (latent models: the differentiable decoder inside the MCMC data term)

  so the VP preconditioning, the network and the autocast region are captured as one graph (fused element-wise
  kernels around the convolutions). ``compile_mode`` is torch.compile's ``mode``: ``"reduce-overhead"`` adds
  CUDA graphs (replayed when shapes are static, i.e. per batch size), which removes the per-kernel launch cost
  that dominates at batch size 1; ``"max-autotune"`` also benchmarks GEMM/convolution kernels. The first call at
  each new input shape compiles (excluded from timings by the benchmark's warm-up).

Reduced precision (``precision: bf16 | fp16``) is an option of the model wrappers (autocast around the networks,
float32 sampler state); it is not repeated here.

Usage (the entry point, once, after moving the model to its device)::

    model = accelerate(build_model(**cfg.model).to(device), compile=cfg.compile, channels_last=cfg.channels_last)
"""
from __future__ import annotations

import torch

from common.models.base import DiffusionModel

#: torch.compile modes accepted by :func:`accelerate`
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def seam_methods(model: DiffusionModel) -> tuple[str, ...]:
    """The per-step methods samplers call on ``model``: tweedie, ddpm_output, and decode for latent models."""
    return ("tweedie", "ddpm_output", "decode") if model.latent else ("tweedie", "ddpm_output")


def accelerate(model: DiffusionModel, *, compile: bool = False, channels_last: bool = False,
               compile_mode: str = "default") -> DiffusionModel:
    """Apply the speed options of the module docstring to ``model`` in place and return it.

    Call it after ``model.to(device)`` (``channels_last`` converts the weights where they are) and at most once
    per model instance (compiling twice would wrap the compiled methods again).
    """
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode={compile_mode!r} is not valid; valid: {', '.join(COMPILE_MODES)}")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        for name in seam_methods(model):
            if name in vars(model):
                raise ValueError(f"model method {name!r} is already replaced on this instance (accelerate() was "
                                 f"called twice?); build a fresh model")
            setattr(model, name, torch.compile(getattr(model, name), mode=compile_mode))
    return model
