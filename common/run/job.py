"""One job: a composed config in, a finished run folder and an exit code out.

    validate -> build (dataset, operator, model, sampler, metrics) -> hold the folder -> experiment loop -> finish

Exit codes: 0 ok, 1 some samples diverged, 2 bad input, 3 out of memory, 4 disk full, 130 interrupted (Ctrl-C /
SIGTERM; rerun to resume).
"""
from __future__ import annotations

import contextlib
import errno
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from common.config.compose import CONFIG_GROUPS, check_task_group_overrides, resolve_config, selected_task
from common.config.validate import validate
from common.data.datasets import ImageDataset, build_dataset
from common.data.operator_state import StatePlan, split_operator_config
from common.errors import ConfigError, InputError, SettingError
from common.evaluation.finish import finish_run, refresh_report
from common.evaluation.metrics import Metrics
from common.evaluation.summary import SCREENFUL, markdown_table
from common.models import MODELS, build_model
from common.models.acceleration import accelerate
from common.models.base import DiffusionModel
from common.models.checkpoints import CheckpointError
from common.operators import build_operator
from common.operators.base import Operator
from common.results.fingerprint import config_parts, file_digests
from common.results.provenance import LOG_FILE, Invocation, known, terminal_log
from common.results.reuse import check_run_directory
from common.results.run_dir import RunDirectory, RunDirectoryError
from common.run import distributed, sweep
from common.run.experiment import OutOfMemory, Outputs, first_step_diverges, prepare_inputs, run_experiment
from common.run.tracking import Tracker, run_tags
from common.sampling import Sampler, build_sampler, check_combination, check_settings


def select_device(gpu: int, ranks: distributed.Ranks) -> torch.device:
    """cuda:<gpu> (cuda:LOCAL_RANK under torchrun) when CUDA is available, else the CPU with a notice."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{ranks.device_index if ranks.world_size > 1 else gpu}")
    if ranks.is_main:
        print(f"note: CUDA is not available; gpu={gpu} ignored, running on the CPU")
    return torch.device("cpu")


def rank_label(ranks: distributed.Ranks) -> str:
    """``[rank r/W] `` before a process's own messages under torchrun / SLURM tasks; nothing for one process."""
    return f"[rank {ranks.rank}/{ranks.world_size}] " if ranks.world_size > 1 else ""


def largest_settings(resolved: Mapping[str, Any], shown: int = 4) -> list[str]:
    """``key=value`` of the ``shown`` numeric settings of the sampler, the selected task group and the model with the
    largest magnitude (a list counts by its largest entry): the suspects when a sampler diverges at once."""
    found: list[tuple[float, str]] = []

    def visit(value: Any, path: str) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                visit(inner, f"{path}.{key}")
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
            found.append((max(abs(float(v)) for v in value if not isinstance(v, bool)) if any(
                not isinstance(v, bool) for v in value) else 0.0, f"{path}={list(value)}"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append((abs(float(value)), f"{path}={value}"))

    group = resolved["task_group"]
    visit(resolved["sampler"], "sampler")
    visit(resolved["task"][group], f"task.{group}")
    visit(resolved["model"], "model")
    return [text for _, text in sorted(found, key=lambda item: -item[0])[:shown]]


def run(cfg: DictConfig, run_dir: Path, ranks: distributed.Ranks = distributed.Ranks(),
        choices: Mapping[str, str] | None = None) -> int:
    """Run one experiment; returns the exit code (module docstring).

    Nothing is written before the config is validated and built. From then on the run folder is locked
    (a second writer is refused naming the pid), what is printed is copied to ``run.log``, and the invocation
    is recorded in ``provenance.json`` (:mod:`common.results.provenance`); a run refused there leaves no new folder.
    A full disk, before or during sampling, is exit code 4 with finished batches kept."""
    with contextlib.ExitStack() as held:
        invocation: list[Invocation] = []  # filled once the folder is held (main rank)
        try:
            code = _run(cfg, run_dir, ranks, choices, held, invocation)
        except ConfigError:
            _close(invocation, 2)
            raise
        except OSError as err:
            if err.errno != errno.ENOSPC:
                _close(invocation, None)
                raise
            print(f"{rank_label(ranks)}error: the disk is full ({err.filename or run_dir}); finished batches are "
                  f"saved in {run_dir}; free space and run the same command again to resume", file=sys.stderr)
            code = 4
        except BaseException:
            _close(invocation, None)  # stopped by an exception (see run.log): no exit code of its own
            raise
        _close(invocation, code)
        return code


def _close(invocation: list[Invocation], code: int | None) -> None:
    """Record the invocation's end in provenance.json (main rank: ``invocation`` holds it), then rewrite the run's
    report.html so that it shows this final status."""
    if invocation:
        invocation[0].end(code)
        refresh_report(invocation[0].directory)


def build(resolved: Mapping[str, Any], device: torch.device
          ) -> tuple[ImageDataset, Operator, StatePlan, Sampler, DiffusionModel, Metrics]:
    """The parts of one run, by registry name, from the validated config: dataset, operator (and where its per-image
    state comes from), sampler, model, metrics. A setting they refuse, a sampler not defined for the model and
    operator, or a missing checkpoint is a :class:`ConfigError` naming its key, before any sampling."""
    task_group = resolved["task_group"]
    group = resolved["task"][task_group]
    try:
        dataset = build_dataset(**resolved["data"])
        try:
            operator_params, state_plan = split_operator_config(group["operator"])
            operator = build_operator(**operator_params).to(device)
        except SettingError as err:
            raise err.at(f"task.{task_group}") from None
        sampler = build_sampler(resolved["sampler"])
        check_combination(resolved["sampler"]["name"], sampler, MODELS.get(resolved["model"]["name"]), operator)
        model = accelerate(build_model(**resolved["model"]).to(device), compile=resolved["compile"],
                           channels_last=resolved["channels_last"], compile_mode=resolved["compile_mode"])
        check_settings(sampler, model, operator)
        with warnings.catch_warnings():
            if not dataset.ground_truth:  # no metric is computed: a notice about missing metric weights is noise
                warnings.simplefilter("ignore")
            metrics = Metrics(resolved["eval_fn_list"], device=device)
    except CheckpointError as err:
        raise ConfigError(str(err)) from err
    if tuple(model.image_shape[-2:]) != (dataset.resolution, dataset.resolution):
        raise ConfigError(f"data.resolution={dataset.resolution} does not match model {resolved['model']['name']!r}, "
                          f"which makes {model.image_shape[-1]}x{model.image_shape[-2]} images")
    return dataset, operator, state_plan, sampler, model, metrics


def _run(cfg: DictConfig, run_dir: Path, ranks: distributed.Ranks, choices: Mapping[str, str] | None,
         held: contextlib.ExitStack, invocation: list[Invocation]) -> int:
    """The body of :func:`run`: ``held`` keeps the folder lock and the terminal log until :func:`run` returns;
    ``invocation`` receives the provenance entry (set its ``model_calls_per_sample`` to record that count)."""
    resolved = resolve_config(cfg)
    problems = validate(resolved)
    if problems:
        raise ConfigError("\n".join(problems))
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    check_task_group_overrides(overrides, resolved["task_group"], resolved["task"])
    resolved["task"] = selected_task(resolved["task"], resolved["task_group"])
    if ranks.world_size > 1 and resolved["gpu"] != 0:
        raise ConfigError(f"gpu={resolved['gpu']} is not valid under torchrun: each rank uses cuda:LOCAL_RANK; "
                          f"choose devices with CUDA_VISIBLE_DEVICES and leave gpu=0")
    device = select_device(resolved["gpu"], ranks)
    task_group = resolved["task_group"]
    dataset, operator, state_plan, sampler, model, metrics = build(resolved, device)
    directory = RunDirectory(run_dir)
    if ranks.is_main:
        try:
            held.enter_context(directory.locked(discard_if_new_on=(ConfigError,)))
        except RunDirectoryError as err:  # another process holds the folder
            raise ConfigError(str(err)) from err
    notes = [] if resolved["overwrite"] else check_run_directory(run_dir, resolved)
    checkpoints = file_digests(resolved["model"], known(directory).get("checkpoints", {}))
    try:  # every input is checked before overwrite=true moves anything
        inputs = prepare_inputs(dataset, operator, seed=resolved["seed"], num_runs=resolved["num_runs"],
                                device=device, state_plan=state_plan, fingerprint=config_parts(resolved, checkpoints),
                                log=print if ranks.is_main else lambda message: None)
    except SettingError as err:
        raise err.at(f"task.{task_group}") from None
    if first_step_diverges(dataset, operator, model, sampler, inputs, seed=resolved["seed"], device=device):
        raise ConfigError(f"sampler {resolved['sampler']['name']!r} diverges (NaN/inf) at its first step on image "
                          f"{dataset.names()[0]}: a step size, scale or prior setting is too large for this problem; "
                          f"the largest settings are {', '.join(largest_settings(resolved))}")
    if ranks.is_main:
        try:
            moved = directory.start_over() if resolved["overwrite"] else None
        except RunDirectoryError as err:  # another process took the new folder meanwhile
            raise ConfigError(str(err)) from err
        held.enter_context(terminal_log(run_dir / LOG_FILE))
        if moved is not None:
            notes.append(f"overwrite=true: the previous results in {run_dir} were moved to {moved} (delete it when "
                         f"no longer needed); starting over")
        for note in notes:
            print(note)
        directory.write_text("config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        invocation.append(Invocation(directory, sys.argv, overrides, checkpoints,
                                     {g: str(c) for g, c in (choices or {}).items() if g in CONFIG_GROUPS}))
    distributed.barrier(ranks)  # the folder is prepared before any rank reads it
    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"
    tracker = Tracker.start(resolved, run_dir, enabled=resolved["wandb"] and ranks.is_main,
                            project=resolved["project_name"], entity=resolved["wandb_entity"],
                            mode=resolved["wandb_mode"], tags=run_tags(choices or {}, resolved["task_group"]),
                            # a sweep's jobs: one W&B group (the sweep's name), each named by its swept values
                            name=sweep.brief_name(overrides, sweep.swept_keys(run_dir.parent)) if in_sweep else None,
                            group=run_dir.parent.name if in_sweep else None)
    outputs = Outputs(save_samples=resolved["save_samples"], save_traj=resolved["save_traj"],
                      save_traj_video=resolved["save_traj_video"], trajectory_points=resolved["trajectory_points"],
                      trajectory_images=resolved["trajectory_images"],
                      show_progress=resolved["show_progress"], on_step=tracker.on_step if tracker.active else None,
                      progress_label=f"rank {ranks.rank}/{ranks.world_size}" if ranks.world_size > 1 else "sampling",
                      on_batch=tracker.log_records if tracker.active else None)
    try:
        summary = run_experiment(dataset, operator, model, sampler, directory, metrics, seed=resolved["seed"],
                                 num_runs=resolved["num_runs"], batch_size=resolved["batch_size"], device=device,
                                 outputs=outputs, auto_batch=resolved["auto_batch"], ranks=ranks,
                                 log=print if ranks.is_main else lambda message: None, inputs=inputs)
    except (InputError, RunDirectoryError) as err:  # inputs that do not fit, or samples made differently:
        # found before sampling
        raise ConfigError(str(err)) from err
    except KeyboardInterrupt:
        if ranks.is_main:
            finish_run(directory, metrics.names if dataset.ground_truth else [])
        print(f"{chr(10) if sys.stderr.isatty() else ''}{rank_label(ranks)}interrupted: finished batches are saved "
              f"in {run_dir}; run the same command again to resume", file=sys.stderr)  # own line, after a bar or ^C
        return 130
    except OutOfMemory as err:
        if ranks.is_main:
            finish_run(directory, metrics.names if dataset.ground_truth else [])
        print(f"{rank_label(ranks)}error: {err}", file=sys.stderr)
        return 3
    if not ranks.is_main:
        return 0
    calls = [r["model_calls"] for r in directory.records() if r.get("model_calls") is not None]
    if invocation and calls:
        invocation[0].model_calls_per_sample = sum(calls) / len(calls)
    tracker.finish(summary, run_dir, invocation[0].total_wall_s() if invocation else None)
    print(markdown_table(summary, list(summary["summary"]), max_images=SCREENFUL))
    print(f"results in {run_dir}")
    return 1 if summary["failed"] else 0
