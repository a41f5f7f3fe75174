"""The rules for reusing a run folder: a rerun must hold the same config (settings that do not change results aside),
more runs or images extend it, and a refused run leaves no empty folder behind."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from common.errors import ConfigError

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
