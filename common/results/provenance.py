"""How results were made: the software environment, the git state of this checkout, and, for a run folder,
one entry per invocation in ``provenance.json`` plus the terminal log ``run.log``.

The one place for environment and git information (the experiment's ``protocol.json``, the benchmark and the
accuracy tool all read it from here).
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, TextIO

import torch

from common.results.run_dir import RunDirectory

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "torchvision", "numpy", "piq", "lpips", "scipy", "scikit-image", "hydra-core", "diffusers")
PROVENANCE_FILE = "provenance.json"
LOG_FILE = "run.log"


def environment() -> dict[str, Any]:
    """Python, platform and the versions of the packages the numbers depend on (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions,
            "cuda": torch.version.cuda}


@dataclass(frozen=True)
class GitState:
    """The checkout's commit and whether tracked files differ from it (None, None outside a checkout)."""

    commit: str | None
    dirty: bool | None

    def describe(self, length: int = 12) -> str:
        """``<commit[:length]>`` with ``-dirty`` appended for uncommitted changes; ``unknown`` outside git."""
        if self.commit is None:
            return "unknown"
        return self.commit[:length] + ("-dirty" if self.dirty else "")


def git_state(repo: Path = REPO) -> GitState:
    """Read-only git queries (``rev-parse HEAD``, ``status --porcelain --untracked-files=no``)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return GitState(None, None)
    return GitState(commit, bool(dirty))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Invocation:
    """One invocation's entry in the run folder's ``provenance.json``::

        {"invocations": [{"command": [...], "overrides": [...], "choices": {group: config name}, "git_commit",
                          "git_dirty", "started", "ended",
                          "wall_s", "exit_code", "model_calls_per_sample"}, ...],
         "checkpoints": {path: {"size", "mtime_ns", "sha256"}}}

    Entries accumulate: a resumed folder lists every invocation that wrote to it. Written under the run
    folder's lock (:meth:`RunDirectory.locked`). ``model_calls_per_sample`` (denoiser evaluations per
    sample, as counted by the caller) is written by :meth:`end`; None when not counted. ``choices`` are the config
    names chosen per group (``sampler: demo``), which the resolved config.yaml no longer holds."""

    def __init__(self, directory: RunDirectory, command: Sequence[str], overrides: Sequence[str],
                 checkpoints: Mapping[str, Mapping[str, Any]], choices: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self._start = time.monotonic()
        git = git_state()
        self.entry: dict[str, Any] = {"command": list(command), "overrides": list(overrides),
                                      "choices": dict(choices or {}),
                                      "git_commit": git.commit, "git_dirty": git.dirty, "started": _now(),
                                      "ended": None, "wall_s": None, "exit_code": None,
                                      "model_calls_per_sample": None}
        previous = known(directory).get("invocations")
        self._invocations = [*(previous if isinstance(previous, list) else []), self.entry]
        self._checkpoints = dict(checkpoints)
        self.model_calls_per_sample: float | None = None
        self._write()

    def total_wall_s(self) -> float:
        """Wall seconds of the folder's earlier invocations plus this one's so far."""
        earlier = [i.get("wall_s") for i in self._invocations if i is not self.entry]
        return sum(w for w in earlier if isinstance(w, (int, float))) + time.monotonic() - self._start

    def end(self, exit_code: int | None) -> None:
        """Record the end time, wall time, exit code (None: stopped by an exception) and the model calls per
        sample."""
        self.entry.update(ended=_now(), wall_s=round(time.monotonic() - self._start, 3), exit_code=exit_code,
                          model_calls_per_sample=self.model_calls_per_sample)
        self._write()

    def _write(self) -> None:
        self.directory.write_json(PROVENANCE_FILE, {"invocations": self._invocations,
                                                    "checkpoints": self._checkpoints})


def known(directory: RunDirectory) -> dict[str, Any]:
    """What ``provenance.json`` holds ({} when absent or unreadable)."""
    saved = directory.read_json(PROVENANCE_FILE)
    return saved if isinstance(saved, dict) else {}


class _Tee:
    """A text stream that writes through to ``stream`` and copies each finished line to ``sink``; of a line
    redrawn with carriage returns (progress bars) only its last state is copied."""

    def __init__(self, stream: TextIO, sink: TextIO) -> None:
        self.stream, self.sink, self.pending = stream, sink, ""

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        if self.sink.closed:  # a stream kept past the block (e.g. by a progress bar) only prints
            return written
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.sink.write(line.rsplit("\r", 1)[-1] + "\n")
        if lines:
            self.sink.flush()
        return written

    def close_line(self) -> None:
        if self.pending.rsplit("\r", 1)[-1]:
            self.sink.write(self.pending.rsplit("\r", 1)[-1] + "\n")
        self.pending = ""

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the terminal's
        return getattr(self.stream, name)


@contextmanager
def terminal_log(path: Path) -> Iterator[None]:
    """Copy what is printed to stdout and stderr inside the block into ``path`` (appended, one header line
    per invocation), still printing it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as sink:
        sink.write(f"==== {_now()} pid {os.getpid()}: {' '.join(sys.argv)}\n")
        out, err = _Tee(sys.stdout, sink), _Tee(sys.stderr, sink)
        sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out.stream, err.stream
            out.close_line()
            err.close_line()
