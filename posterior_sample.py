"""Posterior sampling for image inverse problems with diffusion priors (DAPS, DPS): the Hydra entry point.

    python posterior_sample.py                      # offline demo
    python posterior_sample.py +data=demo-ffhq +model=ffhq256ddpm +task=phase_retrieval +sampler=edm_daps \
        task_group=pixel num_runs=4 name=phase_retrieval_demo

Validate -> build (dataset, operator, model, sampler, metrics) -> loop (common.experiment) -> write.
"""
from __future__ import annotations

import errno
import signal
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import hydra
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import daps  # noqa: F401  (registers the DAPS samplers)
import dps  # noqa: F401  (registers the DPS samplers)
from common.checkpoints import CheckpointError
from common import distributed
from common.acceleration import accelerate
from common.data import build_dataset
from common.experiment import OutOfMemory, Outputs, run_experiment
from common.metrics import Metrics
from common.models import build_model
from common.operators import build_operator
from common.protocol import InputError, split_operator_config
from common.registry import SAMPLERS
from common.run_dir import RunDirectory
from common.tracking import Tracker, run_tags
from common.validate import validate

CONFIG_GROUPS = ("data", "model", "task", "sampler")


def normalize_group_overrides(argv: Sequence[str]) -> list[str]:
    """``+data=x`` / ``++data=x`` -> ``data=x`` for the four config groups.

    The DAPS README spells group selections with ``+``; our config has defaults for every group (the offline
    demo), and Hydra refuses ``+group=`` for a group already in the defaults list. Other ``+key=value``
    overrides are left alone.
    """
    out = []
    for arg in argv:
        stripped = arg.lstrip("+")
        group = stripped.split("=", 1)[0]
        out.append(stripped if arg.startswith("+") and "=" in stripped and group in CONFIG_GROUPS else arg)
    return out


def select_device(gpu: int, ranks: distributed.Ranks) -> torch.device:
    """cuda:<gpu> (cuda:LOCAL_RANK under torchrun) when CUDA is available, else the CPU with a notice."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{ranks.device_index if ranks.world_size > 1 else gpu}")
    if ranks.is_main:
        print(f"note: CUDA is not available; gpu={gpu} ignored, running on the CPU")
    return torch.device("cpu")


class ConfigError(ValueError):
    """Bad input found before sampling; the message says what and what is valid."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as Ctrl-C."""


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def check_run_directory(run_dir: Path, resolved: dict[str, Any]) -> None:
    """An existing run directory must hold the same config, unless overwrite=true."""
    saved = run_dir / "config.yaml"
    if not saved.is_file() or resolved.get("overwrite"):
        return
    # settings that do not change the results (batching is result-invariant by design)
    ignore = ("resume", "overwrite", "show_progress", "wandb", "wandb_mode", "wandb_entity", "project_name", "gpu",
              "batch_size", "auto_batch")
    old = {k: v for k, v in (yaml.safe_load(saved.read_text()) or {}).items() if k not in ignore}
    new = {k: v for k, v in resolved.items() if k not in ignore}
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(f"run directory {run_dir} holds results of a different config (differs in: "
                          f"{', '.join(changed)}); choose another name=..., or pass overwrite=true")
    if not resolved.get("resume", True):
        raise ConfigError(f"run directory {run_dir} already has results and resume=false; "
                          f"choose another name=... or pass resume=true / overwrite=true")


def run(cfg: DictConfig, run_dir: Path, ranks: distributed.Ranks = distributed.Ranks(),
        choices: Mapping[str, str] | None = None) -> int:
    """Run one experiment; returns the exit code: 0 ok, 1 some samples diverged, 2 bad input, 3 out of memory,
    4 disk full, 130 interrupted (Ctrl-C / SIGTERM; rerun to resume)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    problems = validate(resolved)
    if problems:
        raise ConfigError("\n".join(problems))
    if ranks.world_size > 1 and resolved["gpu"] != 0:
        raise ConfigError(f"gpu={resolved['gpu']} is not valid under torchrun: each rank uses cuda:LOCAL_RANK; "
                          f"choose devices with CUDA_VISIBLE_DEVICES and leave gpu=0")
    check_run_directory(run_dir, resolved)
    device = select_device(resolved["gpu"], ranks)
    group = resolved["task"][resolved["task_group"]]
    sampler_cfg = dict(resolved["sampler"])
    sampler_name, task_key = sampler_cfg.pop("name"), sampler_cfg.pop("task_params", None)
    sampler_cfg.pop("latent", None)
    try:
        dataset = build_dataset(**resolved["data"])
        operator_params, state_plan = split_operator_config(group["operator"])
        operator = build_operator(**operator_params).to(device)
        model = accelerate(build_model(**resolved["model"]).to(device), compile=resolved["compile"],
                           channels_last=resolved["channels_last"], compile_mode=resolved["compile_mode"])
        sampler = SAMPLERS.build(sampler_name, **sampler_cfg, **({task_key: group[task_key]} if task_key else {}))
        metrics = Metrics(resolved["eval_fn_list"], device=device)
    except (ValueError, TypeError, CheckpointError) as err:
        raise ConfigError(str(err)) from err
    if tuple(model.image_shape[-2:]) != (dataset.resolution, dataset.resolution):
        raise ConfigError(f"data.resolution={dataset.resolution} does not match model {resolved['model']['name']!r}, "
                          f"which makes {model.image_shape[-1]}x{model.image_shape[-2]} images")
    directory = RunDirectory(run_dir)
    if ranks.is_main:
        directory.write_text("config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    tracker = Tracker.start(resolved, run_dir, enabled=resolved["wandb"] and ranks.is_main,
                            project=resolved["project_name"], entity=resolved["wandb_entity"],
                            mode=resolved["wandb_mode"], tags=run_tags(choices or {}, resolved["task_group"]))
    outputs = Outputs(save_samples=resolved["save_samples"], save_traj=resolved["save_traj"],
                      save_traj_video=resolved["save_traj_video"], trajectory_points=resolved["trajectory_points"],
                      show_progress=resolved["show_progress"], on_step=tracker.on_step if tracker.active else None)
    try:
        summary = run_experiment(dataset, operator, model, sampler, directory, metrics, seed=resolved["seed"],
                                 num_runs=resolved["num_runs"], batch_size=resolved["batch_size"], device=device,
                                 outputs=outputs, auto_batch=resolved["auto_batch"], ranks=ranks,
                                 log=print if ranks.is_main else lambda message: None, state_plan=state_plan)
    except InputError as err:  # a loaded operator state or a measurement that does not fit: found before sampling
        raise ConfigError(str(err)) from err
    except KeyboardInterrupt:
        if ranks.is_main:
            directory.finish(metrics.names if dataset.ground_truth else [])
        print(f"interrupted: finished batches are saved in {run_dir}; run the same command again to resume",
              file=sys.stderr)
        return 130
    except OutOfMemory as err:
        if ranks.is_main:
            directory.finish(metrics.names if dataset.ground_truth else [])
        print(f"error: {err}", file=sys.stderr)
        return 3
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        print(f"error: the disk is full ({err.filename}); finished batches are saved in {run_dir}; free space "
              f"and run the same command again to resume", file=sys.stderr)
        return 4
    if not ranks.is_main:
        return 0
    tracker.log_records(directory.records())
    tracker.finish(summary, run_dir)
    print((run_dir / "eval.md").read_text())
    print(f"results in {run_dir}")
    return 1 if summary["failed"] else 0


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> int:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    ranks = distributed.ranks_from_env()
    if ranks.launcher == "torchrun" and HydraConfig.get().mode.name == "MULTIRUN":
        print("error: -m (multirun) cannot be combined with torchrun (WORLD_SIZE > 1): sweep with a Hydra "
              "launcher, and use torchrun for one run at a time", file=sys.stderr)
        sys.exit(2)
    distributed.init(ranks)
    try:
        code = run(cfg, run_dir, ranks, choices=dict(HydraConfig.get().runtime.choices))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    finally:
        distributed.shutdown(ranks)
    if code and HydraConfig.get().mode.name == "RUN":
        sys.exit(code)
    return code


if __name__ == "__main__":
    sys.argv = normalize_group_overrides(sys.argv)
    main()
