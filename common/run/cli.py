"""The command line's policy around one job: signals, warnings, ranks, exit codes and a sweep's bookkeeping.

:func:`main` is what ``posterior_sample.py``'s Hydra entry hands the composed config to. The first Ctrl-C / SIGTERM
stops the run cleanly (exit 130, finished results kept); under ``-m`` each job's outcome is recorded for the sweep's
summary (:mod:`common.run.sweep`) instead of ending the process.
"""
from __future__ import annotations

import signal
import sys
import traceback
import warnings
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from common.errors import ConfigError
from common.results.reuse import remove_empty_folders
from common.run import distributed, sweep, threads
from common.run.job import rank_label, run


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as Ctrl-C."""


def _raise_interrupted(signum: int, frame: object) -> None:
    """The first SIGINT / SIGTERM stops the run (:class:`Interrupted`); later ones only say that the stop is under
    way, so that saving finished results and the summary is not cut short by a traceback."""
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, _already_stopping)
    raise Interrupted(f"signal {signum}")


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     line: str | None = None) -> str:
    """``warnings.formatwarning`` of the command line: ``warning: <message>``, without file, line and source."""
    return f"warning: {message}\n"


def _already_stopping(signum: int, frame: object) -> None:
    print("\nstopping: finished results are being saved", file=sys.stderr, flush=True)


def _job(cfg: DictConfig, run_dir: Path, ranks: distributed.Ranks, multirun: bool) -> int:
    """Thread limits, the process group, warnings policy, then the job itself (:func:`common.run.job.run`)."""
    threads.limit_threads()  # torch threads <= the cores granted (affinity, cgroup quota), unless OMP_NUM_THREADS
    if ranks.launcher == "torchrun" and multirun:
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
    return run(cfg, run_dir, ranks, choices=dict(HydraConfig.get().runtime.choices))


def main(cfg: DictConfig) -> int:
    """Run the job Hydra composed; returns its exit code (see :mod:`common.run.job`), or exits with it outside a
    sweep."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    ranks = distributed.ranks_from_env()
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _raise_interrupted)
    reason = ""
    try:  # from here on a signal is a clean stop, at whatever point of the job it comes
        code = _job(cfg, run_dir, ranks, multirun)
    except ConfigError as err:
        print(f"{rank_label(ranks)}error: {err}", file=sys.stderr)
        reason = str(err).splitlines()[0]
        save_dir = OmegaConf.select(cfg, "save_dir", throw_on_resolution_failure=False)
        if isinstance(save_dir, str) and save_dir:  # else Hydra's folder is REFUSED_RUN_DIR: nothing to remove
            remove_empty_folders(run_dir, Path(save_dir))
        code = 2
    except KeyboardInterrupt:  # outside sampling (the experiment loop stops on its own and returns 130)
        print(f"{rank_label(ranks)}interrupted while the job was set up or finished: finished results are kept; "
              f"run the same command again to resume", file=sys.stderr)
        reason, code = "interrupted (outside sampling)", 130
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
        folder = "" if run_dir.name == hydra_cfg.job.override_dirname else run_dir.name
        outcome = sweep.JobOutcome(number=hydra_cfg.job.num, overrides=list(hydra_cfg.overrides.task), code=code,
                                   reason=reason, run_dir=str(run_dir), folder=folder)
        sweep.record(hydra_cfg.sweep.dir, outcome)
        if code == 130:
            sweep.stop_sweep(hydra_cfg.sweep.dir, outcome)  # exits 130: no further job starts
    elif code:
        sys.exit(code)
    return code
