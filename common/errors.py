"""Errors for bad input found before any expensive work; each message names the full key path, the value and what
is valid."""
from __future__ import annotations

import math
from typing import Any, Iterable


class ConfigError(ValueError):
    """Bad input found before sampling; the message says what and what is valid (exit code 2)."""


class InputError(ConfigError):
    """Measurements or operator states that do not fit the task, found before sampling."""


class SettingError(ConfigError):
    """One bad setting of a constructor: ``key`` (relative to the constructor), its ``value`` and what is ``valid``;
    ``kind``: ``value`` (a bad value), ``unknown`` (the key is not a setting there) or ``missing`` (a required key).

    Constructors raise it with their own argument name; the builder that knows where the arguments came from
    re-raises it with the full key path (:meth:`at`), e.g. ``sampler.mcmc_sampler_config.lr``.
    """

    def __init__(self, key: str, value: Any, valid: str, *, kind: str = "value") -> None:
        self.key, self.value, self.valid, self.kind = key, value, valid, kind
        super().__init__({"value": f"{key}={value!r} is not valid: {valid}",
                          "unknown": f"unknown setting {key}={value!r}: {valid}",
                          "missing": f"missing setting {key}: {valid}"}[kind])

    def at(self, prefix: str) -> "SettingError":
        """The same error with ``prefix.`` in front of its key."""
        return SettingError(f"{prefix}.{self.key}" if prefix else self.key, self.value, self.valid, kind=self.kind)


#: the largest diffusion noise level σ any sampler setting takes (EDM's σ_max is 80, variance-exploding schedules
#: reach 1e2–1e3); beyond it σ² and the schedules built from it overflow float arithmetic
MAX_SIGMA = 1e6
#: the largest Poisson rate (photons per 8-bit level) a noise setting takes: 255 · rate stays a count torch can draw
MAX_POISSON_RATE = 1e6
#: the largest step count any sampler setting takes (a million network calls per sample is far past every paper)
MAX_STEPS = 1_000_000


def positive_int(key: str, value: Any, minimum: int = 1, maximum: int = MAX_STEPS) -> int:
    """``value`` as an int in [``minimum``, ``maximum``]; refuses bools, floats (even 3.0: a config that says 3.0
    means something else) and strings."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise SettingError(key, value, f"need an integer in [{minimum}, {maximum}]")
    return value


def real(key: str, value: Any, low: float | None = None, high: float | None = None, *,
         low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in the interval [low, high] (ends open where asked); refuses nan, inf, bools and
    strings."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            where = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            where = f" {'>' if low_open else '>='} {low:g}"
        else:
            where = "" if high is None else f" {'<' if high_open else '<='} {high:g}"
        raise SettingError(key, value, f"need a finite number{where}")
    return float(value)


def one_of(key: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise SettingError(key, value, f"choose one of {', '.join(map(str, choices))}")
    return value


#: the largest image side any data, model or operator setting accepts (the models here work at 256-768 px; one
#: 4096² RGB image is 200 MB in float32, and dense per-pixel buffers grow with its square)
MAX_RESOLUTION = 4096


def image_side(key: str, value: Any) -> int:
    """An image side in pixels: an integer in [1, :data:`MAX_RESOLUTION`]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RESOLUTION:
        raise SettingError(key, value, f"need an integer in [1, {MAX_RESOLUTION}] (the image side in pixels; set "
                                       f"data.resolution)")
    return value
