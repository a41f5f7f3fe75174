"""Fail fast: check a resolved experiment config before any expensive work.

:func:`validate` returns one message per problem, each naming the key, the bad value and what is valid;
the entry point prints them all and stops. Checks that need the filesystem or a registry (data folder,
checkpoint, operator/resolution compatibility) happen when the cheap objects are built, still before any
sampling.
"""
from __future__ import annotations

import difflib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import common.data.datasets  # noqa: F401  (registers DATASETS, whose names are checked here)
import common.operators  # noqa: F401  (registers OPERATORS and NOISES)
from common.errors import MAX_RESOLUTION
from common.evaluation.metrics import METRIC_NAMES
from common.models.acceleration import COMPILE_MODES
from common.registry import DATASETS, MODELS, OPERATORS, SAMPLERS

TASK_GROUPS = ("gaussian", "pixel", "pixel_hmc", "ldm", "sd")
#: top-level switches: each must be a real boolean (a string such as "abc" or "no" is refused, never taken as true)
BOOLEAN_KEYS = ("save_samples", "save_traj", "save_traj_video", "show_progress", "resume", "overwrite", "auto_batch",
                "compile", "channels_last", "wandb")
#: every top-level key of the experiment config (configs/config.yaml and its groups); anything else is a typo
TOP_LEVEL_KEYS = ("data", "model", "task", "sampler", "task_group", "gpu", "batch_size", "num_runs", "save_dir",
                  "name", "seed", "eval_fn_list", "trajectory_points", "trajectory_images", "compile_mode", "project_name",
                  "wandb_entity", "wandb_mode", *BOOLEAN_KEYS)
#: the most posterior samples per image one run folder takes (each is a PNG, a record and a sampler call)
MAX_NUM_RUNS = 10_000
#: a file or folder name longer than this many UTF-8 bytes cannot be created (NAME_MAX of Linux and macOS)
NAME_MAX = 255


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a link counts, even a dangling one)."""
    for folder in [path, *path.parents]:
        if os.path.lexists(folder):
            return folder
    return Path(".")


def _creatable_in(folder: Path) -> str | None:
    """Why no folder can be created inside the existing folder ``folder``, or None. Tries it (a temporary folder,
    removed at once): permissions alone do not tell, e.g. /proc refuses new entries even to root. A full disk is
    not a configuration problem (the run then stops with exit code 4), so it passes here."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=folder))
    except OSError as err:
        if err.errno == errno.ENOSPC:
            return None
        return f"no folder can be created in '{folder}' ({os.strerror(err.errno or 0)})"
    return None


def run_dir_problems(save_dir: Any, name: Any) -> list[str]:
    """Problems with the run folder ``save_dir/name``: ``save_dir`` must be a non-empty path of a folder that exists
    or can be created; ``name`` a relative path inside it (no '..', not absolute, no control characters, each part
    at most :data:`NAME_MAX` bytes). Nothing is created (a probe folder is removed at once)."""
    problems = []
    if not isinstance(save_dir, str) or not save_dir.strip():
        empty = " (an empty one would put run folders at the filesystem root)" if save_dir == "" else ""
        problems.append(f"save_dir={save_dir!r} is not valid: need the path of a folder for the results{empty}")
    name_ok = isinstance(name, (str, int)) and not isinstance(name, bool)
    parts = str(name).replace("\\", "/").split("/") if name_ok else []
    if not name_ok or not str(name) or str(name).startswith(("/", "~")) or ".." in parts \
            or all(p in ("", ".") for p in parts):
        problems.append(f"name={name!r} is not valid: need a relative folder name inside save_dir (no '..', "
                        f"not absolute)")
    elif any(not c.isprintable() for c in str(name)):
        problems.append(f"name={name!r} is not valid: need a folder name without control characters")
    elif any(len(p.encode()) > NAME_MAX for p in parts):
        problems.append(f"name={str(name)[:40]!r}... ({len(str(name))} characters) is not valid: each part of the "
                        f"folder name may have at most {NAME_MAX} bytes")
    if isinstance(save_dir, str) and any(len(p.encode()) > NAME_MAX for p in save_dir.split("/")):
        problems.append(f"save_dir={save_dir[:40]!r}... ({len(save_dir)} characters) is not valid: each part of the "
                        f"path may have at most {NAME_MAX} bytes")
    elif isinstance(save_dir, str) and any(not c.isprintable() for c in save_dir):
        problems.append(f"save_dir={save_dir!r} is not valid: need a path without control characters")
    if isinstance(save_dir, str) and save_dir.strip() and Path(save_dir).expanduser().resolve() == Path("/"):
        problems.append(f"save_dir={save_dir!r} is not valid: the filesystem root; need a folder for the results")
    if problems:
        return problems
    base = Path(save_dir).expanduser()
    if base.exists() and not base.is_dir():
        return [f"save_dir={save_dir!r} is not valid: it is a file, not a folder"]
    run_dir = base / str(name)
    existing = _nearest_existing(run_dir)
    if not existing.is_dir():
        where = "save_dir" if existing in (base, *base.parents) else "name"
        value = save_dir if where == "save_dir" else name
        return [f"{where}={value!r} is not valid: '{existing}' is a file, not a folder"]
    if existing == run_dir:
        if not os.access(run_dir, os.W_OK):
            return [f"name={name!r} is not valid: the run folder '{run_dir}' is not writable"]
        return []
    problem = _creatable_in(existing)
    if problem:
        where, value = ("save_dir", save_dir) if existing in (base, *base.parents) else ("name", name)
        return [f"{where}={value!r} is not valid: {problem}"]
    return []


def _data_problems(data: Mapping[str, Any]) -> list[str]:
    """Problems with the image range and size of the ``data`` block (the folders are checked when it is built)."""
    problems = []
    start, end = data.get("start_id", 0), data.get("end_id")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        problems.append(f"data.start_id={start!r} is not valid: need an integer >= 0 (the first image id)")
    if end is not None and (isinstance(end, bool) or not isinstance(end, int) or end < 0):
        problems.append(f"data.end_id={end!r} is not valid: need an integer > data.start_id (one past the last image "
                        f"id), or null for all images")
    if not problems and end is not None and not start < end:
        problems.append(f"data.start_id={start}, data.end_id={end} select no images: need 0 <= start_id < end_id")
    if "resolution" in data:
        resolution = data["resolution"]
        if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= MAX_RESOLUTION:
            problems.append(f"data.resolution={resolution!r} is not valid: need an integer in [1, {MAX_RESOLUTION}] "
                            f"(the image side in pixels)")
    return problems


def _switch_problems(cfg: Mapping[str, Any]) -> list[str]:
    """Problems with the top-level switches and counts that are not checked elsewhere."""
    problems = [f"{key}={cfg[key]!r} is not valid: need true or false" for key in BOOLEAN_KEYS
                if key in cfg and not isinstance(cfg[key], bool)]
    runs = cfg.get("num_runs")
    if isinstance(runs, int) and not isinstance(runs, bool) and runs > MAX_NUM_RUNS:
        problems.append(f"num_runs={runs} is not valid: at most {MAX_NUM_RUNS} posterior samples per image in one "
                        f"run folder; split larger studies over several names")
    if "trajectory_points" in cfg:
        _positive_int(cfg, "trajectory_points", problems)
    images = cfg.get("trajectory_images")
    if images is not None and (isinstance(images, bool) or not isinstance(images, int) or images < 0):
        problems.append(f"trajectory_images={images!r} is not valid: need an integer ≥ 0 (progress strips for the "
                        f"first this many images) or null (every image)")
    if "compile_mode" in cfg and cfg["compile_mode"] not in COMPILE_MODES:
        problems.append(f"compile_mode={cfg['compile_mode']!r} is not valid: choose one of {', '.join(COMPILE_MODES)}")
    if "project_name" in cfg and (not isinstance(cfg["project_name"], str) or not cfg["project_name"]):
        problems.append(f"project_name={cfg['project_name']!r} is not valid: need a W&B project name")
    if cfg.get("wandb_entity") is not None and not isinstance(cfg["wandb_entity"], str):
        problems.append(f"wandb_entity={cfg['wandb_entity']!r} is not valid: need a W&B entity name or null")
    return problems


def _positive_int(cfg: Mapping[str, Any], key: str, problems: list[str], where: str = "") -> None:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.append(f"{where}{key}={value!r} is not valid: need a positive integer")


def validate(cfg: Mapping[str, Any]) -> list[str]:
    """Problems with an experiment config (a plain, resolved dict); empty when it is valid."""
    problems: list[str] = []
    for key in sorted(set(cfg) - set(TOP_LEVEL_KEYS)):
        close = difflib.get_close_matches(key, TOP_LEVEL_KEYS, n=1)
        problems.append(f"unknown setting {key}={cfg[key]!r}: valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}"
                        + (f"; did you mean {close[0]!r}?" if close else ""))
    for key in ("batch_size", "num_runs"):
        _positive_int(cfg, key, problems)
    if isinstance(cfg.get("seed"), bool) or not isinstance(cfg.get("seed"), int):
        problems.append(f"seed={cfg.get('seed')!r} is not valid: need an integer")
    gpu = cfg.get("gpu")
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
        problems.append(f"gpu={gpu!r} is not valid: need a CUDA device index >= 0")
    problems += _switch_problems(cfg)
    problems += run_dir_problems(cfg.get("save_dir"), cfg.get("name"))
    metrics = cfg.get("eval_fn_list")
    if not isinstance(metrics, (list, tuple)) or not metrics or any(m not in METRIC_NAMES for m in map(str, metrics)) \
            or len(set(map(str, metrics))) != len(metrics):
        problems.append(f"eval_fn_list={metrics!r} is not valid: choose one or more of {', '.join(METRIC_NAMES)}, "
                        f"each once")
    if cfg.get("wandb_mode") not in ("online", "offline", "disabled"):
        problems.append(f"wandb_mode={cfg.get('wandb_mode')!r} is not valid: online, offline or disabled")

    for group, registry in (("data", DATASETS), ("model", MODELS), ("sampler", SAMPLERS)):
        block = cfg.get(group)
        if not isinstance(block, Mapping) or "name" not in block:
            problems.append(f"{group} is missing: choose one with {group}=<option> (see configs/{group}/)")
        elif not isinstance(block["name"], str) or block["name"] not in registry:
            problems.append(f"{group}.name={block['name']!r} is not valid; valid: {', '.join(registry.names())}")

    problems += _data_problems(cfg.get("data") if isinstance(cfg.get("data"), Mapping) else {})

    task_group = cfg.get("task_group")
    task = cfg.get("task")
    if not isinstance(task, Mapping) or not task:
        problems.append("task is missing: choose one with task=<option> (see configs/task/)")
    elif not isinstance(task_group, str) or not isinstance(task.get(task_group), Mapping):
        groups = [k for k, v in task.items() if isinstance(v, Mapping)]
        problems.append(f"task_group={task_group!r} is not valid for this task; valid: {', '.join(groups)}")
    else:
        group_cfg = task[task_group] or {}
        name = (group_cfg.get("operator") or {}).get("name")
        if not isinstance(name, str) or name not in OPERATORS:
            problems.append(f"task.{task_group}.operator.name={name!r} is not valid; valid: {', '.join(OPERATORS.names())}")
        side, data_side = (group_cfg.get("operator") or {}).get("resolution"), (cfg.get("data") or {}).get("resolution")
        if isinstance(data_side, int) and side is not None and side != data_side:
            problems.append(f"task.{task_group}.operator.resolution={side!r} is not valid: the images are "
                            f"data.resolution={data_side} px; leave it at ${{data.resolution}} (the default)")

    model = cfg.get("model") or {}
    if isinstance(model.get("name"), str) and model["name"] in MODELS:
        fitting = MODELS.get(model["name"]).task_groups
        if isinstance(task_group, str) and task_group in TASK_GROUPS and task_group not in fitting:
            problems.append(f"task_group={task_group!r} does not fit model {model['name']!r}; valid: "
                            f"{', '.join(fitting)}")
    return problems
