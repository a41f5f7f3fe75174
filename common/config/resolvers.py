"""OmegaConf resolvers that the config files use; importing this module registers them (idempotent).

``${box_side_range:n,f}``  the half-open ``mask_len_range`` [s, s + 1) of a square box hole whose side is the
                           fraction f of the image side n, s = round(f · n), so that every drawn box is exactly
                           s × s. Box inpainting removes "half the image" in the papers, f = 1/2: at n = 256 this
                           gives the DAPS/DPS value [128, 129]; at the 64-px offline demo [32, 33].
``${run_dir:}``             ``save_dir/name``: a run's folder (``hydra.run.dir``), see :func:`hydra_run_dir`.
``${sweep_dir:}``           a sweep's folder (``hydra.sweep.dir``): ``save_dir/name``, or ``save_dir/name.sweep``
                           beside it when that folder holds a single run's results (:func:`hydra_sweep_dir`).
``${job_dir:}``             a sweep job's subfolder (``hydra.sweep.subdir``): its overrides as a folder name that
                           stays inside the sweep folder whatever the values hold (:func:`job_folder`).
``${model_task_group:name}`` the default ``task_group`` of the model registered as ``name``: the first group its
                           class lists in ``task_groups`` (``gaussian`` for the analytic priors of the demo,
                           ``pixel`` for the ADM networks, ``ldm``, ``sd``); ``pixel`` for an unknown or missing
                           name (validation then reports the model).

Who composes configs (``posterior_sample.py``, the tools under ``commands/``, tests that load task yamls)
imports this module first.
"""
from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from common.config.validate import NAME_MAX, run_dir_problems
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


def hydra_sweep_dir(*, _root_: DictConfig) -> str:
    """``hydra.sweep.dir`` (the ``${sweep_dir:}`` resolver): :func:`hydra_run_dir`, or ``<that>.sweep`` beside it
    when the folder holds a single run's results (its ``config.yaml``) rather than a sweep (``multirun.yaml``): a
    sweep started with the default name must not put its job folders inside an earlier run's folder."""
    folder = Path(hydra_run_dir(_root_=_root_))
    single_run = (folder / "config.yaml").exists() and not (folder / "multirun.yaml").exists()
    return f"{folder}.sweep" if single_run else str(folder)


#: characters a job folder name keeps as they are (``key=value`` pairs joined by commas, lists in brackets)
_FOLDER_CHARACTERS = re.compile(r"[^A-Za-z0-9._,=+\-\[\]]")
#: the longest job folder name kept as it is; longer ones are cut and get "-" and a digest of 8 hex digits, so every
#: job folder name fits a file name (NAME_MAX bytes)
MAX_JOB_FOLDER = NAME_MAX - 9


def job_folder(overrides: str) -> str:
    """A sweep job's folder name from its overrides (``hydra.job.override_dirname``): kept when it only holds
    letters, digits and ``._,=+-[]`` and is at most :data:`MAX_JOB_FOLDER` characters; else every other character
    (``/`` included, so ``../`` cannot leave the sweep folder) becomes ``_``, the name is cut to that length, and
    ``-`` plus the first 8 hex digits of the SHA-256 of the overrides are appended (distinct values stay
    distinct). The sweep summary names the folder of each job renamed so."""
    cleaned = _FOLDER_CHARACTERS.sub("_", overrides)
    if cleaned == overrides and len(overrides) <= MAX_JOB_FOLDER:
        return overrides
    return f"{cleaned[:MAX_JOB_FOLDER]}-{hashlib.sha256(overrides.encode()).hexdigest()[:8]}"


def hydra_job_dir(*, _root_: DictConfig) -> str:
    """``hydra.sweep.subdir`` (the ``${job_dir:}`` resolver): :func:`job_folder` of the job's override_dirname."""
    return job_folder(str(OmegaConf.select(_root_, "hydra.job.override_dirname", default="")))


def register() -> None:
    """Register every resolver of this module with OmegaConf (a second call changes nothing)."""
    if not OmegaConf.has_resolver("box_side_range"):
        OmegaConf.register_new_resolver("box_side_range", box_side_range)
    if not OmegaConf.has_resolver("model_task_group"):
        OmegaConf.register_new_resolver("model_task_group", model_task_group)
    for name, resolver in (("run_dir", hydra_run_dir), ("sweep_dir", hydra_sweep_dir), ("job_dir", hydra_job_dir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register()
