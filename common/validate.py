"""Fail fast: check a resolved experiment config before any expensive work.

:func:`validate` returns one message per problem, each naming the key, the bad value and what is valid;
the entry point prints them all and stops. Checks that need the filesystem or a registry (data folder,
checkpoint, operator/resolution compatibility) happen when the cheap objects are built, still before any
sampling.
"""
from __future__ import annotations

from typing import Any, Mapping

from common.metrics import METRIC_NAMES
from common.registry import DATASETS, MODELS, OPERATORS, SAMPLERS

TASK_GROUPS = ("pixel", "pixel_hmc", "ldm", "sd")


def _positive_int(cfg: Mapping[str, Any], key: str, problems: list[str], where: str = "") -> None:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.append(f"{where}{key}={value!r} is not valid: need a positive integer")


def validate(cfg: Mapping[str, Any]) -> list[str]:
    """Problems with an experiment config (a plain, resolved dict); empty when it is valid."""
    problems: list[str] = []
    for key in ("batch_size", "num_runs"):
        _positive_int(cfg, key, problems)
    if not isinstance(cfg.get("seed"), int):
        problems.append(f"seed={cfg.get('seed')!r} is not valid: need an integer")
    gpu = cfg.get("gpu")
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
        problems.append(f"gpu={gpu!r} is not valid: need a CUDA device index >= 0")
    name = str(cfg.get("name", ""))
    if not name or name.startswith(("/", "~")) or ".." in name.replace("\\", "/").split("/"):
        problems.append(f"name={name!r} is not valid: need a relative folder name inside save_dir (no '..', "
                        f"not absolute)")
    metrics = cfg.get("eval_fn_list")
    if not isinstance(metrics, (list, tuple)) or not metrics or any(m not in METRIC_NAMES for m in map(str, metrics)):
        problems.append(f"eval_fn_list={metrics!r} is not valid: choose one or more of {', '.join(METRIC_NAMES)}")
    if cfg.get("wandb_mode") not in ("online", "offline", "disabled"):
        problems.append(f"wandb_mode={cfg.get('wandb_mode')!r} is not valid: online, offline or disabled")

    for group, registry in (("data", DATASETS), ("model", MODELS), ("sampler", SAMPLERS)):
        block = cfg.get(group)
        if not isinstance(block, Mapping) or "name" not in block:
            problems.append(f"{group} is missing: choose one with {group}=<option> (see configs/{group}/)")
        elif not isinstance(block["name"], str) or block["name"] not in registry:
            problems.append(f"{group}.name={block['name']!r} is not valid; valid: {', '.join(registry.names())}")

    data = cfg.get("data") or {}
    start, end = data.get("start_id", 0), data.get("end_id")
    if isinstance(start, int) and isinstance(end, int) and not 0 <= start < end:
        problems.append(f"data.start_id={start}, data.end_id={end} select no images: need 0 <= start_id < end_id")
    if "resolution" in data:
        _positive_int(data, "resolution", problems, "data.")

    task_group = cfg.get("task_group")
    task = cfg.get("task")
    if not isinstance(task, Mapping) or not task:
        problems.append("task is missing: choose one with task=<option> (see configs/task/)")
    elif not isinstance(task_group, str) or task_group not in task:
        problems.append(f"task_group={task_group!r} is not valid for this task; valid: {', '.join(task)}")
    else:
        group_cfg = task[task_group] or {}
        name = (group_cfg.get("operator") or {}).get("name")
        if not isinstance(name, str) or name not in OPERATORS:
            problems.append(f"task.{task_group}.operator.name={name!r} is not valid; valid: {', '.join(OPERATORS.names())}")
        sampler = cfg.get("sampler") or {}
        key = sampler.get("task_params")
        if key and key not in group_cfg:
            problems.append(f"sampler {sampler.get('name')!r} needs task.{task_group}.{key}, which this task lacks")

    model, sampler = cfg.get("model") or {}, cfg.get("sampler") or {}
    if isinstance(model.get("name"), str) and model["name"] in MODELS and "latent" in sampler:
        model_latent = bool(getattr(MODELS.get(model["name"]), "latent", False))
        if bool(sampler["latent"]) != model_latent:
            kind = "latent" if model_latent else "pixel-space"
            problems.append(f"sampler {sampler.get('name')!r} (latent={sampler['latent']}) does not fit the {kind} "
                            f"model {model['name']!r}: use a {'latent_/sd_' if model_latent else 'pixel'} sampler")
        fitting = MODELS.get(model["name"]).task_groups
        if isinstance(task_group, str) and task_group in TASK_GROUPS and task_group not in fitting:
            problems.append(f"task_group={task_group!r} does not fit model {model['name']!r}; valid: "
                            f"{', '.join(fitting)}")
    return problems
