r"""The sampler seam: one interface every posterior sampler implements (DAPS, DPS and the baselines).

    result = sampler.sample(model, operator, y, generators=generators, callback=callback)
    result.samples      (B, C, H, W) images in [-1, 1] (NaN where a chain diverged)
    result.failed_at    per sample: the first step at which its chain diverged, or None

A sampler is a class registered in ``common.registry.SAMPLERS`` whose constructor takes plain values in the
paper's symbols (step counts, step sizes, schedules as numbers) and whose :meth:`Sampler.sample` reads like
the paper's algorithm box. It writes no files and reads no config. It declares what it needs:

* ``requires``: operator capabilities (:data:`common.operators.base.CAPABILITIES`), e.g. ``{"svd"}`` for DDRM;
  a combination that lacks one is refused before sampling, naming the samplers that do run;
* ``spaces``: which models it runs on, ``"pixel"`` and/or ``"latent"`` (:attr:`DiffusionModel.latent`);
* optionally ``check(model, operator)``, raising :class:`~common.errors.SettingError` for a setting that this model
  or operator cannot take (DPS: a respacing the model's T steps cannot give); run before sampling.

Callback state (k-diffusion's pattern), passed once per outer step; every key but the first four is optional:

======== ==========================================================================================
step     int, 0 … num_steps − 1
num_steps int, the number of outer steps
finite   (B,) bool on the device: True while the chain has stayed finite (a :class:`DivergenceTracker`)
decode   callable, sample space → image (identity for pixel models)
sigma    float or 0-dim tensor: the noise level σ of x_t (EDM convention x_t = x0 + σ ε)
t        int: the DDPM timestep of x_t (DDPM-skeleton samplers)
x_t      (B, *sample_shape): the current state
x0hat    (B, *sample_shape): the denoiser's estimate of x0 from x_t
x0y      (B, *sample_shape): the measurement-conditioned estimate of x0 (DAPS: the MCMC output)
residual (B,): ‖y − A(D(x̂0))‖ per sample
======== ==========================================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import torch

from common.config.keys import build_strict
from common.errors import ConfigError, SettingError
from common.models.base import DiffusionModel
from common.operators.base import Operator
from common.registry import SAMPLERS

#: what a sampler's ``callback`` receives (see the module docstring for the keys)
Callback = Callable[[dict[str, Any]], None]

#: samples whose magnitude exceeds this (in [-1, 1] image units or latent units) count as diverged: a chain that
#: explodes without producing NaN is no result (it only makes invalid metrics)
DIVERGENCE_BOUND = 1e4


@dataclass
class SampleResult:
    """What :meth:`Sampler.sample` returns: the decoded samples and, per sample, the step of divergence."""

    samples: torch.Tensor
    failed_at: list[int | None]


@runtime_checkable
class Sampler(Protocol):
    """A posterior sampler x ~ p(x | y) for the prior ``model`` and the measurement model ``operator``."""

    #: operator capabilities this sampler needs (empty: the forward map and its gradient suffice)
    requires: ClassVar[frozenset[str]]
    #: model spaces it runs in: "pixel", "latent"
    spaces: ClassVar[frozenset[str]]

    def sample(self, model: DiffusionModel, operator: Operator, y: torch.Tensor, *,
               generators: Sequence[torch.Generator], callback: Callback | None = None) -> SampleResult:
        """One posterior sample per generator (sample i draws only from ``generators[i]``)."""
        ...  # pragma: no cover - protocol


class DivergenceTracker:
    """Per-sample divergence bookkeeping for a batch of chains.

    A chain that produces NaN/inf, or values beyond :data:`DIVERGENCE_BOUND`, is not silently repaired: the first
    step at which each sample went bad is recorded (on the device, so checking costs no host–device
    synchronisation), the sample is zeroed in the working state so that the rest of the batch carries on, and it is
    returned as NaN (:meth:`result`).
    """

    def __init__(self, batch_size: int, bound: float = DIVERGENCE_BOUND) -> None:
        self.first_bad = torch.full((batch_size,), -1, dtype=torch.long)
        self.bound = bound

    def check(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Record newly diverged samples at ``step``; return x with diverged samples set to 0."""
        flat = x.detach().flatten(1)
        ok = (torch.isfinite(flat) & (flat.abs() <= self.bound)).all(1)
        first_bad = self.first_bad.to(x.device)
        self.first_bad = torch.where(~ok & (first_bad < 0), step, first_bad)
        return torch.where(ok.view(-1, *[1] * (x.ndim - 1)), x, torch.zeros_like(x))

    @property
    def finite(self) -> torch.Tensor:
        """Per-sample bool on the samples' device: True while the chain has stayed finite and bounded."""
        return self.first_bad < 0

    def result(self, samples: torch.Tensor) -> SampleResult:
        """The final output, diverged samples replaced by NaN, with the divergence steps (one synchronisation)."""
        bad = ~self.finite.to(samples.device)
        samples = torch.where(bad.view(-1, *[1] * (samples.ndim - 1)), torch.full_like(samples, float("nan")),
                              samples)
        return SampleResult(samples, [None if s < 0 else s for s in self.first_bad.tolist()])


class _FirstStep(Exception):
    """Stops a dry step after the sampler's first outer step, carrying whether it stayed finite."""

    def __init__(self, finite: bool) -> None:
        super().__init__("first step done")
        self.finite = finite


def _stop_after_first_step(state: dict[str, Any]) -> None:
    """A callback that ends the sampling at the first outer step: finite means the chain's flag, every state tensor
    finite, and the estimates of x0 within :data:`DIVERGENCE_BOUND`."""
    finite = bool(torch.as_tensor(state["finite"]).all())
    for key in ("x_t", "x0hat", "x0y"):
        value = state.get(key)
        if isinstance(value, torch.Tensor):
            bound = math.inf if key == "x_t" else DIVERGENCE_BOUND
            finite = finite and bool((torch.isfinite(value) & (value.abs() <= bound)).all())
    raise _FirstStep(finite)


def first_step_finite(sampler: Sampler, model: DiffusionModel, operator: Operator, y: torch.Tensor,
                      generator: torch.Generator) -> bool:
    """A dry step: run ``sampler`` on one measurement ``y`` (its operator state already set) up to the end of its
    first outer step; whether the chain is still finite there (settings so large that their products overflow, e.g.
    a step size of 1e300, fail already). Costs one outer step of one chain."""
    try:
        result = sampler.sample(model, operator, y[None], generators=[generator], callback=_stop_after_first_step)
    except _FirstStep as step:
        return step.finite
    return result.failed_at[0] is None


def build_sampler(settings: Mapping[str, Any], path: str = "sampler") -> Sampler:
    """The sampler a config block describes, with strict keys.

    ``name`` picks the class in SAMPLERS; ``per_task`` (optional) is the table of per-task paper values that the
    block's own interpolations read (``${oc.select:sampler.per_task.${task.name}.KEY,DEFAULT}``), already resolved
    into the other keys; every other key is a constructor argument — or an argument of the class's ``from_config``
    adapter, for samplers whose configs keep a reference implementation's nested spelling (DAPS).
    """
    settings = dict(settings)
    name = settings.pop("name")
    settings.pop("per_task", None)
    cls = SAMPLERS.get(name)
    return build_strict(getattr(cls, "from_config", cls), settings, path)


def runs_on(model: DiffusionModel | type[DiffusionModel], operator: Operator) -> list[str]:
    """The registered samplers that run on this model and operator (by their declarations)."""
    return [name for name in SAMPLERS.names() if unsupported(SAMPLERS.get(name), model, operator) is None]


def unsupported(sampler: type, model: DiffusionModel | type[DiffusionModel], operator: Operator) -> str | None:
    """Why the sampler class cannot run on this model (instance or class) and operator (None when it can), by their
    declarations."""
    space = "latent" if model.latent else "pixel"
    if space not in sampler.spaces:
        return f"it runs on {'/'.join(sorted(sampler.spaces))}-space models, and this model is {space}-space"
    missing = sorted(set(sampler.requires) - set(operator.capabilities))
    if missing:
        have = ", ".join(sorted(operator.capabilities)) or "none"
        return (f"it needs the operator capabilities {', '.join(missing)}, and {type(operator).__name__} "
                f"offers: {have}")
    return None


def check_combination(name: str, sampler: Sampler, model: DiffusionModel | type[DiffusionModel],
                      operator: Operator) -> None:
    """Refuse, before sampling, a sampler on a model (an instance, or its class before it is built) or operator it is
    not defined for, naming the samplers that do run there."""
    problem = unsupported(type(sampler), model, operator)
    if problem:
        raise ConfigError(f"sampler {name!r} cannot run here: {problem}. Samplers that run on this model and "
                          f"operator: {', '.join(runs_on(model, operator)) or 'none'}")


def check_settings(sampler: Sampler, model: DiffusionModel, operator: Operator) -> None:
    """The sampler's own optional ``check(model, operator)`` (e.g. a respacing the model's T steps cannot give), with
    the key path of a refused setting."""
    check = getattr(sampler, "check", None)
    if check is not None:
        try:
            check(model, operator)
        except SettingError as err:
            raise err.at("sampler") from None
