"""OmegaConf resolvers that the config files use; importing this module registers them (idempotent).

``${box_side_range:n,f}``  the half-open ``mask_len_range`` [s, s + 1) of a square box hole whose side is the
                           fraction f of the image side n, s = round(f · n), so that every drawn box is exactly
                           s × s. Box inpainting removes "half the image" in the papers, f = 1/2: at n = 256 this
                           gives the DAPS/DPS value [128, 129]; at the 64-px offline demo [32, 33].
``${model_task_group:name}`` the default ``task_group`` of the model registered as ``name``: the first group its
                           class lists in ``task_groups`` (``gaussian`` for the analytic priors of the demo,
                           ``pixel`` for the ADM networks, ``ldm``, ``sd``); ``pixel`` for an unknown or missing
                           name (validation then reports the model).

Who composes configs (``posterior_sample.py``, the tools under ``commands/``, tests that load task yamls)
imports this module first.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from common.config.validate import run_dir_problems
from common.models import DiffusionModel  # importing common.models registers every model
from common.registry import MODELS


def box_side_range(resolution: int, fraction: float) -> ListConfig:
    """[s, s + 1] with s = round(``fraction`` · ``resolution``), s ≥ 1 (a ListConfig: ``OmegaConf.resolve`` can
    put it in place of the interpolation)."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"box_side_range: resolution={resolution!r} is not valid: need a positive integer")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"box_side_range: fraction={fraction!r} is not valid: need 0 < fraction <= 1")
    side = max(1, round(float(fraction) * resolution))
    return ListConfig([side, side + 1])


def model_task_group(name: str | None) -> str:
    """The first of ``MODELS.get(name).task_groups``; the base class's first group for an unknown name."""
    model = MODELS.get(name) if isinstance(name, str) and name in MODELS else DiffusionModel
    return model.task_groups[0]


#: Hydra's job folder for a config whose save_dir or name is refused: Hydra creates the job folder before the run
#: starts, so a refused ``name=../../x`` or ``save_dir=/proc/x`` must not become that folder; the run is then stopped
#: by validation before anything is written
REFUSED_RUN_DIR = Path(tempfile.gettempdir()) / "posterior_sample-refused"


def hydra_run_dir(*, _root_: DictConfig) -> str:
    """``hydra.run.dir`` / ``hydra.sweep.dir`` (the ``${run_dir:}`` resolver): ``save_dir/name``, or
    :data:`REFUSED_RUN_DIR` when :func:`~common.config.validate.run_dir_problems` refuses them or they do not
    resolve."""
    save_dir, name = (OmegaConf.select(_root_, key, throw_on_resolution_failure=False) for key in ("save_dir", "name"))
    return str(REFUSED_RUN_DIR) if run_dir_problems(save_dir, name) else f"{save_dir}/{name}"


def register() -> None:
    """Register every resolver of this module with OmegaConf (a second call changes nothing)."""
    if not OmegaConf.has_resolver("box_side_range"):
        OmegaConf.register_new_resolver("box_side_range", box_side_range)
    if not OmegaConf.has_resolver("model_task_group"):
        OmegaConf.register_new_resolver("model_task_group", model_task_group)
    if not OmegaConf.has_resolver("run_dir"):
        OmegaConf.register_new_resolver("run_dir", hydra_run_dir)


register()
