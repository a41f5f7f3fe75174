"""The run directory ``save_dir/name/``: the only code that writes results (storage only: no device).

Layout::

    config.yaml                       resolved config
    protocol.json                     data list and checksums, operator-state source, metric implementations,
                                      package versions (copied into metrics.json)
    provenance.json                   how the folder was made: one entry per invocation (command line, overrides,
                                      git commit and dirty flag, start/end time, wall time, model calls per
                                      sample; see :mod:`common.results.provenance`) and the checkpoint digests
    run.log                           what the runs printed (appended by every invocation)
    run.lock                          locked (``fcntl.flock``) by the process writing the folder; holds its pid.
                                      Only a flock target: it stays after a clean finish, and a leftover file
                                      holds nothing (the lock is released when its holder ends, even by SIGKILL)
    samples/{id:05d}_run{r:04d}.png   reconstructions
    inputs/{id:05d}_gt.png            ground truth;  inputs/{id:05d}_measurement.png: y resized for viewing
    measurements/{id:05d}.pt          raw y and the operator state (mask, kernel) to rerun on the same data
    records/{id:05d}_run{r:04d}.json  per-sample metrics and the sample's fingerprint (what resume reads back)
    raw/{id:05d}_run{r:04d}.pt        float16 sample (num_runs >= 2: the uncertainty maps); raw/{id:05d}_gt.pt
    trajectory/{id:05d}_run{r:04d}.png  progress strip (rows x0hat, x0y, x_t); .gif with save_traj_video
    uncertainty/{id:05d}_mean.png, _std.png (heat map), {id:05d}.pt (float mean/std); calibration.png
    metrics.json, eval.md, records.csv, grid_results.png   built by :meth:`RunDirectory.finish` from the records

Every file is written atomically (temporary file + rename) with the mode ``open()`` would give it
(0o666 & ~umask), so a crash never leaves a half-written result. JSON never holds NaN or ±inf (they are
written as null), so every JSON file reads back.

Integrity. A sample is finished when its record is readable, carries the fingerprint the current experiment
expects (:mod:`common.results.fingerprint`: model and checkpoints, task block and operator state, sampler, data
settings, seed, image content, run) and, when they are kept, its PNG and float sample exist. A record of
the experiment's (image, run) pairs with another fingerprint stops the run (:class:`RunDirectoryError`,
naming what differs) before anything is written; ``overwrite=true`` moves the old folder aside instead
(:meth:`RunDirectory.start_over`). Unreadable records (a truncated write from a killed process on a full
disk) are redone; files in ``records/`` that are not records are ignored; both with a notice.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.results.fingerprint import SampleKeys, differences

LOCK_FILE = "run.lock"
#: the layout's folders and files: an entry of one of these names must be a real folder / regular file (not a
#: symbolic link, FIFO or device), else the folder is refused before anything is written
FOLDERS = ("samples", "inputs", "measurements", "records", "raw", "trajectory", "uncertainty")
FILES = ("config.yaml", "protocol.json", "provenance.json", "run.log", LOCK_FILE, "metrics.json", "eval.md",
         "records.csv", "grid_results.png")
RECORD_NAME = re.compile(r"^(\d+)_run(\d+)\.json$")


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked: another process holds it, or it holds samples made
    differently (the message says what differs and how to proceed)."""


def file_mode() -> int:
    """0o666 & ~umask: the mode ``open()`` gives a new file (``tempfile.mkstemp`` would give 0o600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by None, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(payload: Any, indent: int = 1) -> str:
    """JSON that always reads back: non-finite floats as null (:func:`json_safe`), ``allow_nan=False``."""
    return json.dumps(json_safe(payload), indent=indent, allow_nan=False)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> 8-bit RGB (NaN shown black)."""
    unit = (torch.nan_to_num(image.detach().cpu()).float() * 0.5 + 0.5).clamp(0, 1)  # metrics.to_unit
    array = (unit * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_png(path: Path) -> torch.Tensor:
    """An 8-bit RGB file -> (3, H, W) in [-1, 1]."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB")).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1


def torch_bytes(payload: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def view_measurement(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A measurement shown as an image of ``size``: resized bilinearly; non-image-range data (e.g. Fourier
    magnitudes) is standardised first so it is visible."""
    y = y.detach().float().cpu()
    if y.ndim != 3 or y.shape[0] != 3:
        y = y.reshape(1, *y.shape[-2:]).expand(3, -1, -1) if y.ndim >= 2 else torch.zeros(3, *size)
    if y.abs().max() > 1.5:
        y = ((y - y.mean()) / (y.std() + 1e-8)).clamp(-1.5, 1.5) / 1.5
    return F.interpolate(y[None], size=size, mode="bilinear", align_corners=False)[0]


class RunDirectory:
    """Writes and reads back the results of one experiment (see module docstring). Nothing is created
    until something is written or :meth:`locked` is entered."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None
        self._new = False  # the held folder was made by this process (absent, empty, or started over)
        self._expected: SampleKeys | None = None
        self._need_image = self._need_raw = False

    # ------------------------------------------------------------------ names
    def sample_path(self, image_id: int, run: int) -> Path:
        return self.root / "samples" / f"{image_id:05d}_run{run:04d}.png"

    def record_path(self, image_id: int, run: int) -> Path:
        return self.root / "records" / f"{image_id:05d}_run{run:04d}.json"

    def raw_path(self, image_id: int, run: int | None) -> Path:
        """The float sample of (image, run); ``run=None``: the ground truth."""
        return self.root / "raw" / (f"{image_id:05d}_gt.pt" if run is None else f"{image_id:05d}_run{run:04d}.pt")

    # ------------------------------------------------------------------ lock and overwrite
    @contextlib.contextmanager
    def locked(self, discard_if_new_on: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """Hold the folder for the block: an exclusive ``fcntl.flock`` on ``run.lock`` (the folder is created
        here). Another holder: :class:`RunDirectoryError` naming its pid. When the block raises one of
        ``discard_if_new_on`` (a refusal) and the folder is new (it was absent or empty, or was started over),
        it is removed again, unless samples were finished meanwhile (a refusal found mid-run, such as an input image
        replaced during sampling, keeps every finished result)."""
        self._new = not self.root.is_dir() or not any(self.root.iterdir())
        self.root.mkdir(parents=True, exist_ok=True)
        odd = self.layout_problems()
        if odd:
            raise RunDirectoryError(f"run directory {self.root} holds entries where its own files belong: "
                                    f"{'; '.join(odd)}; move them away or choose another name=...")
        self._lock_fd = self._acquire()
        try:
            yield
        except discard_if_new_on:
            if self._new and not any((self.root / "records").glob("*.json")):
                shutil.rmtree(self.root, ignore_errors=True)
            raise
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None

    def layout_problems(self) -> list[str]:
        """Entries named like the layout's folders (:data:`FOLDERS`) that are no real folder, and like its files
        (:data:`FILES`) that are no regular file; symbolic links are refused either way (never followed)."""
        problems = []
        for names, wanted, test in ((FOLDERS, "a folder", stat.S_ISDIR), (FILES, "a regular file", stat.S_ISREG)):
            for name in names:
                try:
                    mode = os.lstat(self.root / name).st_mode
                except FileNotFoundError:
                    continue
                if not test(mode):
                    problems.append(f"'{name}' is {_kind(mode)}, not {wanted}")
        return problems

    def _acquire(self) -> int:
        """Open ``run.lock`` without following a link and without blocking (a FIFO), refuse anything but a regular
        file, then take the flock (:class:`RunDirectoryError` naming the holder's pid when it is held)."""
        path = self.root / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
        except OSError as err:
            kind = _kind(os.lstat(path).st_mode) if os.path.lexists(path) else os.strerror(err.errno or 0)
        else:
            kind = None if stat.S_ISREG(os.fstat(fd).st_mode) else _kind(os.fstat(fd).st_mode)
            if kind:
                os.close(fd)
        if kind:
            raise RunDirectoryError(f"run directory {self.root}: the lock file {path} is {kind}, not a regular "
                                    f"file; remove it (it only serves as a lock) or choose another name=...")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirectoryError(f"run directory {self.root} is in use by another run (pid {holder}, lock file "
                                    f"{path}): wait until it ends, or choose another name=...") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def start_over(self) -> Path | None:
        """``overwrite=true``: move the previous results aside in one rename of the folder, to
        ``<name>.old-<YYYYmmdd-HHMMSS>``, and go on in a new empty folder (locked in turn); returns where the
        old results went (None: there were none). Call inside :meth:`locked`."""
        if self._lock_fd is None:
            raise RuntimeError("start_over() needs the lock: call it inside RunDirectory.locked()")
        if not any(p.name != LOCK_FILE for p in self.root.iterdir()):
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target, suffix = self.root.with_name(f"{self.root.name}.old-{stamp}"), 1
        while target.exists():
            target, suffix = self.root.with_name(f"{self.root.name}.old-{stamp}-{suffix}"), suffix + 1
        os.rename(self.root, target)
        old, self._lock_fd = self._lock_fd, None
        try:
            self.root.mkdir(exist_ok=True)
            self._lock_fd = self._acquire()
        finally:
            os.close(old)
        self._new = True
        return target

    # ------------------------------------------------------------------ writers
    def write_bytes(self, relative: str, data: bytes) -> None:
        atomic_write_bytes(self.root / relative, data)

    def write_text(self, relative: str, text: str) -> None:
        atomic_write_bytes(self.root / relative, text.encode())

    def write_image(self, relative: str, image: torch.Tensor) -> None:
        atomic_write_bytes(self.root / relative, png_bytes(to_pil(image)))

    def write_json(self, relative: str, payload: Any, indent: int = 1) -> None:
        """JSON that reads back: non-finite floats are written as null (:func:`json_text`)."""
        self.write_text(relative, json_text(payload, indent))

    def write_inputs(self, image_id: int, gt: torch.Tensor | None, y: torch.Tensor,
                     state: dict[str, torch.Tensor], image_size: tuple[int, int], raw: bool = False) -> None:
        """Ground truth, a viewable measurement, and the raw y with the operator state (``raw``: also the
        float ground truth, for the uncertainty maps)."""
        if gt is not None:
            self.write_image(f"inputs/{image_id:05d}_gt.png", gt)
            if raw:
                atomic_write_bytes(self.raw_path(image_id, None), torch_bytes(gt.detach().float().cpu()))
        self.write_image(f"inputs/{image_id:05d}_measurement.png", view_measurement(y, image_size))
        payload = {"y": y.detach().cpu(), "state": {k: v.detach().cpu() for k, v in state.items()}}
        atomic_write_bytes(self.root / "measurements" / f"{image_id:05d}.pt", torch_bytes(payload))

    def write_sample(self, image_id: int, run: int, sample: torch.Tensor, record: dict[str, Any],
                     save_image: bool = True, raw: bool = False) -> None:
        """One reconstruction and its metrics record (the record last: it marks the sample as finished; it
        carries the fingerprint set by :meth:`expect`, and NaN/inf values become null); ``raw``: also the sample
        as float16 (for the posterior mean/std maps)."""
        if save_image:
            atomic_write_bytes(self.sample_path(image_id, run), png_bytes(to_pil(sample)))
        if raw:
            atomic_write_bytes(self.raw_path(image_id, run), torch_bytes(sample.detach().cpu().half()))
        payload = {"image_id": image_id, "run": run, **record}
        if self._expected is not None:
            payload["fingerprint"] = self._expected.of(image_id, run)
        atomic_write_bytes(self.record_path(image_id, run), json_text(payload).encode())

    def write_trajectory(self, image_id: int, run: int, strip: bytes, video: bytes | None = None) -> None:
        """A sample's progress strip (PNG) and, when given, its animation (GIF), drawn by the evaluation figures."""
        atomic_write_bytes(self.root / "trajectory" / f"{image_id:05d}_run{run:04d}.png", strip)
        if video is not None:
            atomic_write_bytes(self.root / "trajectory" / f"{image_id:05d}_run{run:04d}.gif", video)

    # ------------------------------------------------------------------ readers
    def read_json(self, relative: str) -> Any:
        """The payload of a JSON file of the folder; None when it is missing or unreadable."""
        try:
            return json.loads((self.root / relative).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None

    def _scan(self, log: Callable[[str], None] | None = None) -> dict[tuple[int, int], dict[str, Any]]:
        """Every readable record by (image id, run). ``log`` gets one line per unreadable record (treated as
        unfinished: the sample is made again) and per file in ``records/`` that is no record (ignored)."""
        found: dict[tuple[int, int], dict[str, Any]] = {}
        folder = self.root / "records"
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                continue  # an atomic write cut short by a killed process
            match = RECORD_NAME.match(path.name)
            if match is None or not path.is_file():  # only regular files are read (a FIFO would block)
                if log:
                    log(f"note: ignoring {path}: not a sample record (a file records/<id>_run<r>.json)")
                continue
            pair = (int(match[1]), int(match[2]))
            try:
                record = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if not isinstance(record, dict) or (record.get("image_id"), record.get("run")) != pair:
                if log:
                    log(f"note: {path} is unreadable or damaged (e.g. cut short by a full disk); "
                        f"image {pair[0]} run {pair[1]} is sampled again")
                continue
            found[pair] = record
        return found

    def _current(self, found: dict[tuple[int, int], dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
        """The records of the expected experiment with its fingerprint (all records before :meth:`expect`)."""
        if self._expected is None:
            return found
        pairs = self._expected.pairs()
        return {p: r for p, r in found.items()
                if p in pairs and not differences(self._expected.of(*p), r.get("fingerprint"))}

    def expect(self, keys: SampleKeys, *, image: bool, raw: bool, log: Callable[[str], None]) -> None:
        """Set the fingerprints the current experiment's samples carry (records written from now on carry
        them; :meth:`finished` and :meth:`records` count only records that match) and whether a finished
        sample also needs its PNG (``image``) and float sample (``raw``) on disk. A record of one of the
        experiment's (image, run) pairs with another fingerprint raises :class:`RunDirectoryError` naming the
        samples and what differs. Records of other pairs (more images or runs than now) are left alone."""
        found = self._scan(log)
        pairs = keys.pairs()
        stale: dict[tuple[str, ...], list[tuple[int, int]]] = {}
        for pair, record in sorted(found.items()):
            if pair in pairs:
                changed = differences(keys.of(*pair), record.get("fingerprint"))
                if changed:
                    stale.setdefault(tuple(changed), []).append(pair)
        if stale:
            raise RunDirectoryError(f"run directory {self.root} holds samples made differently: "
                                    + "; ".join(_describe_stale(found, changed, where)
                                                for changed, where in stale.items())
                                    + ". Pass overwrite=true to start over (the old folder is moved aside), "
                                      "or choose another name=...")
        self._expected, self._need_image, self._need_raw = keys, image, raw
        for pair in sorted(found):
            if pair in pairs and image and not self.sample_path(*pair).is_file():
                log(f"note: {self.sample_path(*pair)} is missing: image {pair[0]} run {pair[1]} is sampled again")
            elif pair in pairs and raw and not self.raw_path(*pair).is_file():
                log(f"note: {self.raw_path(*pair)} (the float sample the posterior maps need) is missing: "
                    f"image {pair[0]} run {pair[1]} is sampled again")

    def finished(self) -> set[tuple[int, int]]:
        """(image id, run) pairs finished on disk (see :meth:`expect`)."""
        done = set(self._current(self._scan()))
        return {p for p in done if (not self._need_image or self.sample_path(*p).is_file())
                and (not self._need_raw or self.raw_path(*p).is_file())}

    def records(self) -> list[dict[str, Any]]:
        """The readable records (of the expected experiment, once :meth:`expect` was called), by (image, run)."""
        current = self._current(self._scan())
        return [current[p] for p in sorted(current)]



def _kind(mode: int) -> str:
    """What a file mode is, in words ("a symbolic link", "a FIFO (named pipe)", ...)."""
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISREG, "a regular file"))
    return next((word for test, word in kinds if test(mode)), "an unknown kind of file")


#: what a differing fingerprint key means, for the refusal message
_CHANGES = {"image": "the input image changed", "operator_state": "the loaded operator state (mask/kernel) changed",
            "checkpoints": "a checkpoint file changed", "model": "model settings", "task": "task settings",
            "sampler": "sampler settings", "data": "data settings", "metrics": "eval_fn_list", "seed": "seed"}


def _describe_stale(found: dict[tuple[int, int], dict[str, Any]], changed: tuple[str, ...],
                    pairs: list[tuple[int, int]], shown: int = 5) -> str:
    """'image 3 (name.png) runs [0, 1]: the input image changed' for the first ``shown`` images."""
    runs: dict[int, list[int]] = {}
    for image_id, run in pairs:
        runs.setdefault(image_id, []).append(run)
    names = [f"image {i} ({found[(i, r[0])].get('name')}) runs {r}" for i, r in list(runs.items())[:shown]]
    more = f" and {len(runs) - shown} more image(s)" if len(runs) > shown else ""
    if all(found[p].get("fingerprint") is None for p in pairs):
        why = "no fingerprint (written by an older version, so what made them is unknown)"
    else:
        why = ", ".join(_CHANGES.get(k, k) for k in changed)
    return f"{', '.join(names)}{more}: {why}"
