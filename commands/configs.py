"""Sampler settings exactly as a run gets them: the applications compose the real ``configs/`` here.

``posterior_sample.py`` is imported for what it already does once: it imports the sampler packages (``daps``,
``dps``, ``baselines``), so every sampler in :data:`common.registry.SAMPLERS` is registered, and registers the
config resolvers. A sampler is therefore found with no edit here: one module that registers it and one
``configs/sampler/<name>.yaml``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

import posterior_sample

CONFIG_DIR = Path(posterior_sample.__file__).resolve().parent / "configs"
#: further config folders searched after ``configs/`` (Hydra's search path; a folder holding ``sampler/<name>.yaml``)
SEARCH_PATH: list[Path] = []


class NoConfig(LookupError):
    """A config group option (e.g. ``configs/sampler/<name>.yaml``) that does not exist."""


def resolved_config(overrides: Sequence[str]) -> dict[str, Any]:
    """The config ``posterior_sample.py`` would run with these overrides, every interpolation resolved and the task
    reduced to its selected group (as the run's ``config.yaml``); :class:`NoConfig` for a missing group option."""
    search = ([f"hydra.searchpath=[{','.join(f'file://{Path(p).resolve()}' for p in SEARCH_PATH)}]"]
              if SEARCH_PATH else [])
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[*posterior_sample.normalize_group_overrides(overrides), *search])
    except MissingConfigException as err:
        raise NoConfig(str(err).split("\n")[0]) from None
    resolved = posterior_sample.resolve_config(cfg)
    resolved["task"] = posterior_sample.selected_task(resolved["task"], resolved["task_group"])
    return resolved


def sampler_settings(sampler: str, *, model: str, task: str, resolution: int,
                     task_group: str | None = None) -> dict[str, Any]:
    """The ``sampler`` block of ``configs/sampler/<sampler>.yaml`` composed with ``model``, ``task`` and
    ``data.resolution`` (``task_group``: the model's own unless given), as :func:`common.sampling.build_sampler`
    takes it."""
    overrides = [f"sampler={sampler}", f"model={model}", f"task={task}", f"data.resolution={resolution}"]
    return resolved_config([*overrides, *([f"task_group={task_group}"] if task_group else [])])["sampler"]
