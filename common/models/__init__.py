"""Priors behind one interface (:class:`DiffusionModel`), found by name through ``MODELS``.

Modules that need optional packages (diffusers) import them inside their constructors, so importing
this package never fails for lack of them.
"""
from __future__ import annotations

from typing import Any

from common.config.keys import build_strict
from common.models.base import DiffusionModel, sigma_like
from common.registry import MODELS, import_submodules

import_submodules(__name__, __path__)


def build_model(name: str, **params: Any) -> DiffusionModel:
    """The model registered as ``name``, built from a model config's remaining keys (strict: an unknown key or a bad
    value is a :class:`~common.errors.SettingError` naming ``model.<key>``)."""
    return build_strict(MODELS.get(name), params, "model")


__all__ = ["DiffusionModel", "build_model", "sigma_like", "MODELS"]
