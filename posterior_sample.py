"""Posterior sampling for image inverse problems with diffusion priors (DAPS, DPS): the Hydra entry point.

    python posterior_sample.py                      # offline demo
    python posterior_sample.py +data=demo-ffhq +model=ffhq256ddpm +task=phase_retrieval +sampler=edm_daps \
        task_group=pixel num_runs=4 name=phase_retrieval_demo

Validate -> build (dataset, operator, model, sampler, metrics) -> loop (common.experiment) -> write.
"""
from __future__ import annotations

import contextlib
import errno
import importlib
import signal
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import hydra
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from commands import sweep
from common import config_resolvers  # noqa: F401  (registers ${box_side_range:…}, ${model_task_group:…})
from common import distributed, threads
from common.acceleration import accelerate
from common.checkpoints import CheckpointError
from common.data import build_dataset
from common.errors import ConfigError, SettingError
from common.experiment import OutOfMemory, Outputs, run_experiment
from common.fingerprint import config_parts, file_digests
from common.metrics import Metrics
from common.models import MODELS, build_model
from common.operators import build_operator
from common.protocol import InputError, split_operator_config
from common.provenance import LOG_FILE, Invocation, known, terminal_log
from common.run_dir import RunDirectory, RunDirectoryError
from common.sampling import build_sampler, check_combination, check_settings
from common.tracking import Tracker, run_tags
from common.validate import run_dir_problems, validate


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


#: characters with a meaning in Hydra's override grammar: a value holding one is left to the grammar as typed
GRAMMAR_CHARACTERS = set("'\"\\[]{}(),$= ")


def quote_unicode_values(argv: Sequence[str]) -> list[str]:
    """``name=日本`` -> ``name='日本'``: Hydra's grammar takes non-ASCII text only quoted and otherwise stops with a
    lexer error; a plain ``key=value`` whose value has non-ASCII letters and no grammar characters is quoted."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        plain = bool(sep and value) and not value.isascii() and not GRAMMAR_CHARACTERS & set(value)
        out.append(f"{key}='{value}'" if plain and not arg.startswith("-") else arg)
    return out


def select_device(gpu: int, ranks: distributed.Ranks) -> torch.device:
    """cuda:<gpu> (cuda:LOCAL_RANK under torchrun) when CUDA is available, else the CPU with a notice."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{ranks.device_index if ranks.world_size > 1 else gpu}")
    if ranks.is_main:
        print(f"note: CUDA is not available; gpu={gpu} ignored, running on the CPU")
    return torch.device("cpu")


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as Ctrl-C."""


def _raise_interrupted(signum: int, frame: object) -> None:
    """The first SIGINT / SIGTERM stops the run (:class:`Interrupted`); later ones only say that the stop is under
    way, so that saving finished results and the summary is not cut short by a traceback."""
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, _already_stopping)
    raise Interrupted(f"signal {signum}")


def rank_label(ranks: distributed.Ranks) -> str:
    """``[rank r/W] `` before a process's own messages under torchrun / SLURM tasks; nothing for one process."""
    return f"[rank {ranks.rank}/{ranks.world_size}] " if ranks.world_size > 1 else ""


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     line: str | None = None) -> str:
    """``warnings.formatwarning`` of the command line: ``warning: <message>``, without file, line and source."""
    return f"warning: {message}\n"


def _already_stopping(signum: int, frame: object) -> None:
    print("\nstopping: finished results are being saved", file=sys.stderr, flush=True)


#: settings that do not change the results (batching is result-invariant by design)
RESULT_INVARIANT = ("resume", "overwrite", "show_progress", "wandb", "wandb_mode", "wandb_entity", "project_name",
                    "gpu", "batch_size", "auto_batch")
#: settings that select which samples run: a change extends (or narrows) a run instead of contradicting it
EXTENDING = ("num_runs", "data.start_id", "data.end_id")


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": value} for every leaf of a nested config (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        out.update(_flat(value, path + ".") if isinstance(value, Mapping) and value else {path: value})
    return out


def check_task_group_overrides(overrides: Sequence[str], task_group: str, task: Mapping[str, Any]) -> None:
    """An override of ``task.<group>.…`` for a group other than the selected one would change nothing: refuse it."""
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        parts = key.split(".")
        if len(parts) >= 2 and parts[0] == "task" and parts[1] in task and parts[1] != task_group \
                and isinstance(task[parts[1]], Mapping):
            raise ConfigError(f"override {override!r} sets task group {parts[1]!r}, but task_group={task_group!r} "
                              f"is selected, so it would change nothing; set task.{task_group}.{'.'.join(parts[2:])} "
                              f"or choose task_group={parts[1]}")


def selected_task(task: Mapping[str, Any], task_group: str) -> dict[str, Any]:
    """The task config as the run uses it: its scalar keys (``name``) and the selected group only."""
    return {k: v for k, v in task.items() if k == task_group or not isinstance(v, Mapping)}


def check_run_directory(run_dir: Path, resolved: dict[str, Any]) -> list[str]:
    """An existing run directory must hold the same config (its ``config.yaml``, leaving out the settings in
    :data:`RESULT_INVARIANT`), unless overwrite=true (then it is started over: see RunDirectory.start_over).
    More runs or images (:data:`EXTENDING`) extend it: returns a note saying so. ConfigError naming every
    differing key path otherwise, and when resume=false finds results."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return []
    how = "choose another name=..., or pass overwrite=true to start over (the old folder is moved aside)"
    try:
        old = yaml.safe_load(saved.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"run directory {run_dir}: {saved.name} is unreadable ({type(err).__name__}); "
                          f"{how}") from None
    if not isinstance(old, dict):
        raise ConfigError(f"run directory {run_dir}: {saved.name} holds no config; {how}")
    old_flat, new_flat = _flat(old), _flat(resolved)
    keys = {k for k in set(old_flat) | set(new_flat) if k.split(".")[0] not in RESULT_INVARIANT and k not in EXTENDING}
    changed = sorted(k for k in keys if old_flat.get(k) != new_flat.get(k))
    if changed:
        raise ConfigError(f"run directory {run_dir} holds results of a different config (differs in: "
                          f"{', '.join(changed)}); {how}")
    if not resolved.get("resume", True):
        raise ConfigError(f"run directory {run_dir} already has results and resume=false; "
                          f"choose another name=... or pass resume=true / overwrite=true")
    moved = [f"{k} {old_flat.get(k)} -> {new_flat.get(k)}" for k in EXTENDING if old_flat.get(k) != new_flat.get(k)]
    if not moved:
        return []
    return [f"note: extending the run in {run_dir} ({'; '.join(moved)}): finished samples of the same settings are "
            f"reused, the others are made; the summary covers the samples now selected"]


def resolve_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data, every interpolation resolved; one that does not resolve (a missing key, an unset
    environment variable, a malformed expression) is a :class:`ConfigError` naming the key that holds it."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        reason = str(getattr(err, "msg", err)).split("\n")[0]
        key = err.full_key or "the config"
        expression: Any = OmegaConf.to_container(cfg, resolve=False)
        for part in str(err.full_key or "").split("."):
            expression = expression.get(part) if isinstance(expression, dict) else None
        shown = f"={expression}" if isinstance(expression, str) and err.full_key else ""  # names the keys it uses
        raise ConfigError(f"{key}{shown}: the interpolation cannot be resolved ({reason}); give the key a plain "
                          f"value or fix the ${{...}} expression (or the keys it refers to)") from None


def run(cfg: DictConfig, run_dir: Path, ranks: distributed.Ranks = distributed.Ranks(),
        choices: Mapping[str, str] | None = None) -> int:
    """Run one experiment; returns the exit code: 0 ok, 1 some samples diverged, 2 bad input, 3 out of memory,
    4 disk full, 130 interrupted (Ctrl-C / SIGTERM; rerun to resume).

    Nothing is written before the config is validated and built. From then on the run folder is locked
    (a second writer is refused naming the pid), what is printed is copied to ``run.log``, and the invocation
    is recorded in ``provenance.json`` (:mod:`common.provenance`); a run refused there leaves no new folder."""
    with contextlib.ExitStack() as held:
        invocation: list[Invocation] = []  # filled once the folder is held (main rank)
        try:
            code = _run(cfg, run_dir, ranks, choices, held, invocation)
        except ConfigError:
            if invocation:
                invocation[0].end(2)
            raise
        except BaseException:
            if invocation:
                invocation[0].end(None)  # stopped by an exception (see run.log): no exit code of its own
            raise
        if invocation:
            invocation[0].end(code)
        return code


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
    directory = RunDirectory(run_dir)
    if ranks.is_main:
        try:
            held.enter_context(directory.locked(discard_if_new_on=(ConfigError,)))
        except RunDirectoryError as err:  # another process holds the folder
            raise ConfigError(str(err)) from err
    notes = [] if resolved["overwrite"] else check_run_directory(run_dir, resolved)
    checkpoints = file_digests(resolved["model"], known(directory).get("checkpoints", {}))
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
        invocation.append(Invocation(directory, sys.argv, overrides, checkpoints))
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
                      show_progress=resolved["show_progress"], on_step=tracker.on_step if tracker.active else None,
                      progress_label=f"rank {ranks.rank}/{ranks.world_size}" if ranks.world_size > 1 else "sampling",
                      on_batch=tracker.log_records if tracker.active else None)
    try:
        summary = run_experiment(dataset, operator, model, sampler, directory, metrics, seed=resolved["seed"],
                                 num_runs=resolved["num_runs"], batch_size=resolved["batch_size"], device=device,
                                 outputs=outputs, auto_batch=resolved["auto_batch"], ranks=ranks,
                                 log=print if ranks.is_main else lambda message: None, state_plan=state_plan,
                                 fingerprint=config_parts(resolved, checkpoints))
    except (InputError, RunDirectoryError) as err:  # inputs that do not fit, or samples made differently:
        # found before sampling
        raise ConfigError(str(err)) from err
    except KeyboardInterrupt:
        if ranks.is_main:
            directory.finish(metrics.names if dataset.ground_truth else [])
        print(f"{chr(10) if sys.stderr.isatty() else ''}{rank_label(ranks)}interrupted: finished batches are saved "
              f"in {run_dir}; run the same command again to resume", file=sys.stderr)  # own line, after a bar or ^C
        return 130
    except OutOfMemory as err:
        if ranks.is_main:
            directory.finish(metrics.names if dataset.ground_truth else [])
        print(f"{rank_label(ranks)}error: {err}", file=sys.stderr)
        return 3
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        print(f"{rank_label(ranks)}error: the disk is full ({err.filename}); finished batches are saved in {run_dir}; "
              f"free space and run the same command again to resume", file=sys.stderr)
        return 4
    if not ranks.is_main:
        return 0
    calls = [r["model_calls"] for r in directory.records() if r.get("model_calls") is not None]
    if invocation and calls:
        invocation[0].model_calls_per_sample = sum(calls) / len(calls)
    tracker.finish(summary, run_dir)
    print((run_dir / "eval.md").read_text())
    print(f"results in {run_dir}")
    return 1 if summary["failed"] else 0


#: Hydra's job folder for a config whose save_dir or name is refused: Hydra creates the job folder before
#: :func:`main` runs, so a refused ``name=../../x`` or ``save_dir=/proc/x`` must not become that folder; the run is
#: then stopped by validation before anything is written
REFUSED_RUN_DIR = Path(tempfile.gettempdir()) / "posterior_sample-refused"


def hydra_run_dir(*, _root_: DictConfig) -> str:
    """``hydra.run.dir`` / ``hydra.sweep.dir`` (the ``${run_dir:}`` resolver): ``save_dir/name``, or
    :data:`REFUSED_RUN_DIR` when :func:`~common.validate.run_dir_problems` refuses them or they do not resolve."""
    save_dir, name = (OmegaConf.select(_root_, key, throw_on_resolution_failure=False) for key in ("save_dir", "name"))
    return str(REFUSED_RUN_DIR) if run_dir_problems(save_dir, name) else f"{save_dir}/{name}"


OmegaConf.register_new_resolver("run_dir", hydra_run_dir, replace=True)


def remove_empty_folders(run_dir: Path, save_dir: Path) -> None:
    """A refused run creates nothing: remove the run folder Hydra made before :func:`run` started, and its
    parents below ``save_dir`` (a sweep's folder), where they are empty."""
    save_dir = save_dir.expanduser().resolve()
    for folder in [run_dir.resolve(), *run_dir.resolve().parents]:
        if save_dir not in folder.parents:
            return
        try:
            folder.rmdir()
        except FileNotFoundError:  # already removed (RunDirectory.locked discards a refused new folder)
            continue
        except OSError:  # not empty (or not ours to remove)
            return


#: the packages whose modules register samplers (DAPS, DPS; the baselines DDRM … ReSample)
SAMPLER_PACKAGES = ("daps", "dps", "baselines")


def load_samplers() -> None:
    """Import every sampler package so that its samplers register in SAMPLERS (the applications in ``commands/`` call
    this too). Run again inside :func:`main`: a launcher job (submitit) runs ``main`` unpickled from ``__main__``,
    without this module's import-time code."""
    for package in SAMPLER_PACKAGES:
        importlib.import_module(package)


load_samplers()


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> int:
    load_samplers()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _raise_interrupted)
    threads.limit_threads()  # torch threads <= the cores granted (affinity, cgroup quota), unless OMP_NUM_THREADS
    ranks = distributed.ranks_from_env()
    if ranks.launcher == "torchrun" and HydraConfig.get().mode.name == "MULTIRUN":
        print("error: -m (multirun) cannot be combined with torchrun (WORLD_SIZE > 1): sweep with a Hydra "
              "launcher, and use torchrun for one run at a time", file=sys.stderr)
        sys.exit(2)
    distributed.init(ranks)
    busy = None if torch.cuda.is_available() else threads.busy_note()
    if busy and ranks.is_main:
        print(busy)
    warnings.formatwarning = one_line_warning
    if not ranks.is_main:  # every rank would repeat rank 0's notices (missing metric weights, precision, ...)
        warnings.simplefilter("ignore")
    reason = ""
    try:
        code = run(cfg, run_dir, ranks, choices=dict(HydraConfig.get().runtime.choices))
    except ConfigError as err:
        print(f"{rank_label(ranks)}error: {err}", file=sys.stderr)
        reason = str(err).splitlines()[0]
        save_dir = OmegaConf.select(cfg, "save_dir", throw_on_resolution_failure=False)
        if isinstance(save_dir, str) and save_dir:  # else Hydra's folder is REFUSED_RUN_DIR: nothing to remove
            remove_empty_folders(run_dir, Path(save_dir))
        code = 2
    except OSError as err:  # the disk was full before sampling began (run() reports a full disk mid-run itself)
        if err.errno != errno.ENOSPC:
            raise
        print(f"{rank_label(ranks)}error: the disk is full ({err.filename or run_dir}); free space and run the same "
              f"command again",
              file=sys.stderr)
        code = 4
    except Exception as err:  # a bug: one run has its traceback from Hydra; a sweep records it and goes on
        if not multirun:
            raise
        traceback.print_exc()
        reason, code = f"{type(err).__name__}: {err} (traceback above)", 1
    finally:
        distributed.shutdown(ranks)
    if code == 130:  # stopping: a further Ctrl-C / SIGTERM must not cut the summary and the exit short
        for stop in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop, signal.SIG_IGN)
    if multirun:
        hydra_cfg = HydraConfig.get()
        outcome = sweep.JobOutcome(number=hydra_cfg.job.num, overrides=list(hydra_cfg.overrides.task), code=code,
                                   reason=reason, run_dir=str(run_dir))
        sweep.record(hydra_cfg.sweep.dir, outcome)
        if code == 130:
            sweep.stop_sweep(hydra_cfg.sweep.dir, outcome)  # exits 130: no further job starts
    elif code:
        sys.exit(code)
    return code


if __name__ == "__main__":
    sys.argv = quote_unicode_values(normalize_group_overrides(sys.argv))
    main()
