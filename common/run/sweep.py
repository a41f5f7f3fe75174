"""Hydra multirun (``-m``) bookkeeping for ``posterior_sample.py``: what each job did, one summary at the end,
a non-zero exit status when a job failed, and a clean stop of the whole sweep on Ctrl-C / SIGTERM.

Each job, in whatever process its launcher runs it, records its outcome in ``<sweep dir>/.job-<number>.json``
(number, overrides, exit code, why it failed) through :func:`record`. The :class:`SweepSummary` callback
(``hydra.callbacks`` in ``configs/config.yaml``) clears those records when a sweep starts and, when it ends,
prints one line per job and exits with status 1 when any job failed. A job stopped by a signal prints the same
summary itself, says how to resume, and exits with status 130, which stops the sweep (the launcher starts no
further job).

Exit codes of a job are those of :func:`common.run.job.run`: 0 ok, 1 some samples diverged, 2 bad input,
3 out of memory, 4 disk full, 130 interrupted.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.config.resolvers import hydra_run_dir

#: a job's record in the sweep folder: hidden files beside the job folders
RECORD = ".job-{}.json"
#: why a job with this exit code failed, when it gave no message of its own
REASONS = {1: "some samples diverged (NaN/inf); see its metrics.json", 2: "bad input", 3: "out of memory",
           4: "the disk is full", 130: "interrupted"}


@dataclass
class JobOutcome:
    """What one job of a sweep did."""

    number: int
    overrides: list[str]
    code: int
    reason: str = ""
    run_dir: str = ""
    #: the job's folder name when it is not its overrides as written (sanitised: see resolvers.job_folder)
    folder: str = ""

    @property
    def ok(self) -> bool:
        return self.code == 0

    def line(self, hide: frozenset[str] = frozenset()) -> str:
        """``#n ok|failed (exit c)  overrides [folder f]: why``, leaving out the overrides in ``hide``; the folder
        only when its name is not the overrides as written."""
        status = "ok" if self.ok else f"failed (exit {self.code})"
        why = "" if self.ok else f": {self.reason or REASONS.get(self.code, 'error')}"
        shown = ",".join(o for o in self.overrides if o not in hide) or "(no overrides)"
        renamed = f" [folder {self.folder}]" if self.folder else ""
        return f"  #{self.number} {status:<16} {shown}{renamed}{why}"


def record(sweep_dir: str | Path, outcome: JobOutcome) -> None:
    """Write one job's outcome (atomically: a reader never sees half a record)."""
    folder = Path(sweep_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RECORD.format(outcome.number)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(outcome)))
    os.replace(tmp, path)


def outcomes(sweep_dir: str | Path) -> list[JobOutcome]:
    """The recorded outcomes of a sweep, by job number (unreadable records are skipped)."""
    found = []
    for path in Path(sweep_dir).glob(RECORD.format("*")):
        try:
            found.append(JobOutcome(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(found, key=lambda o: o.number)


def summary(sweep_dir: str | Path) -> tuple[str, bool]:
    """(the summary text, whether every recorded job is ok). Each job is named by the overrides that tell it
    apart (overrides shared by every job are left out)."""
    done = outcomes(sweep_dir)
    failed = [o for o in done if not o.ok]
    shared = frozenset.intersection(*(frozenset(o.overrides) for o in done)) if len(done) > 1 else frozenset()
    head = (f"sweep summary: {len(done) - len(failed)} of {len(done)} job(s) ok"
            + (f", {len(failed)} failed" if failed else "") + f" (run folders under {sweep_dir})")
    return "\n".join([head, *(o.line(shared) for o in done)]), not failed


def stop_sweep(sweep_dir: str | Path, stopped: JobOutcome) -> None:
    """After a job was interrupted: the summary, how to resume, and exit status 130 (stops the whole sweep)."""
    text, _ = summary(sweep_dir)
    print(f"{text}\ninterrupted: the sweep stopped in job #{stopped.number} ({','.join(stopped.overrides)}); "
          f"later jobs did not start. Run the same command again to resume: finished jobs are found complete and "
          f"skipped, the stopped job goes on from its last finished batch.", file=sys.stderr, flush=True)
    raise SystemExit(130)


def swept_keys(sweep_dir: str | Path) -> set[str]:
    """The keys a sweep varies: its sweep overrides (``a=1,2``, ``range(…)``, ``choice(…)``, …) as recorded in
    ``<sweep dir>/multirun.yaml`` (written by the launcher before the jobs start); empty when unreadable."""
    try:
        overrides = list(OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra.overrides.task)
        parsed = OverridesParser.create().parse_overrides(overrides)
    except (OSError, ValueError, OmegaConfBaseException, HydraException):
        return set()
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def brief_name(overrides: list[str], swept: set[str]) -> str:
    """A job's name from its values of the swept keys, e.g. ``task=inpainting,seed=2`` (all its overrides when
    the swept keys are unknown)."""
    chosen = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept]
    return ",".join(chosen or overrides)


class SweepSummary(Callback):
    """Clears the job records when a sweep starts; prints the summary when it ends, exit status 1 if a job failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Say where the job folders go when an earlier single run holds the planned folder; clear old records."""
        sweep_dir, planned = Path(config.hydra.sweep.dir), hydra_run_dir(_root_=config)
        if str(sweep_dir) == f"{planned}.sweep":
            print(f"note: {planned} holds a single run's results; this sweep's job folders go beside it, under "
                  f"{sweep_dir}", flush=True)
        for path in sweep_dir.glob(RECORD.format("*")):
            path.unlink(missing_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        text, all_ok = summary(config.hydra.sweep.dir)
        print(text, file=sys.stdout if all_ok else sys.stderr, flush=True)
        if not all_ok:
            raise SystemExit(1)  # Hydra's multirun itself always exits 0
