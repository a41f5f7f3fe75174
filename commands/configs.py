"""Sampler settings exactly as a run gets them, for the applications (accuracy, benchmark, report).

Importing this module loads the sampler packages (``daps``, ``dps``, ``baselines``), the applications' one place to
do so, so every sampler in :data:`common.registry.SAMPLERS` is registered; :func:`common.config.compose.resolved_config`
composes the real ``configs/``. A sampler is therefore found with no edit here: one module that registers it and one
``configs/sampler/<name>.yaml``.
"""
from __future__ import annotations

from typing import Any

import baselines  # noqa: F401  (registers the baseline samplers)
import daps  # noqa: F401  (registers DAPS)
import dps  # noqa: F401  (registers DPS)
from common.config.compose import resolved_config


def sampler_settings(sampler: str, *, model: str, task: str, resolution: int,
                     task_group: str | None = None) -> dict[str, Any]:
    """The ``sampler`` block of ``configs/sampler/<sampler>.yaml`` composed with ``model``, ``task`` and
    ``data.resolution`` (``task_group``: the model's own unless given), as :func:`common.sampling.build_sampler`
    takes it."""
    overrides = [f"sampler={sampler}", f"model={model}", f"task={task}", f"data.resolution={resolution}"]
    return resolved_config([*overrides, *([f"task_group={task_group}"] if task_group else [])])["sampler"]
