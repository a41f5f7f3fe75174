"""What determines a sample, as short digests: a finished sample is reused only when its record's
fingerprint equals the one the current run expects.

A sample x̂_{i,r} = sampler(model, A_i, y_i, generator(seed, i, r)) is determined by

* the run-wide settings (:func:`config_parts`): the model config and the content of every file it names
  (checkpoints), the selected task group's block, the sampler config, the data settings other than the id
  range, the metric list and the seed;
* per image i (:class:`SampleKeys`): the image content as the dataset delivers it (the resized tensor, or y
  and its stored state when there is no ground truth) and the operator state A_i when it is loaded or shared
  (a state drawn from (seed, i) is already fixed by the seed and the task);
* the run index r.

Digests are the first 16 hex digits of SHA-256 over canonical JSON (sorted keys) or over tensor bytes
(dtype and shape included).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from common.data.id_lists import file_sha256

DIGEST_LENGTH = 16
#: data settings that select which images run, not what a sample of one image is
RANGE_KEYS = ("start_id", "end_id")
DRAWN = "drawn from (seed, image id)"


def digest(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value`` (sorted keys), shortened."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_LENGTH]


def tensor_digest(tensors: Mapping[str, torch.Tensor] | torch.Tensor) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of each tensor, names sorted, shortened."""
    items = sorted(tensors.items()) if isinstance(tensors, Mapping) else [("", tensors)]
    sha = hashlib.sha256()
    for name, tensor in items:
        value = tensor.detach().cpu().contiguous()
        sha.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        sha.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return sha.hexdigest()[:DIGEST_LENGTH]


def file_digests(config: Any, known: Any) -> dict[str, dict[str, Any]]:
    """{path: {"size", "mtime_ns", "sha256"}} for every string in ``config`` (at any depth) that names an
    existing regular file (the checkpoints). ``known`` holds earlier results: a file whose size and mtime are
    unchanged is not read again (the cache kept in the run folder's ``provenance.json``; whatever it holds,
    a damaged entry is recomputed). Folders (e.g. a diffusers model directory) are not hashed."""
    out: dict[str, dict[str, Any]] = {}
    for text in _strings(config):
        path = Path(text).expanduser()
        if not path.is_file():
            continue
        stat = os.stat(path)
        entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        cached = known.get(text) if isinstance(known, Mapping) else None
        cached = cached if isinstance(cached, Mapping) else {}  # a damaged cache entry is recomputed
        same = all(cached.get(k) == v for k, v in entry.items()) and isinstance(cached.get("sha256"), str)
        out[text] = {**entry, "sha256": cached["sha256"] if same else file_sha256(path)}
    return out


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def config_parts(resolved: Mapping[str, Any], checkpoints: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The run-wide part of every sample's fingerprint, from the resolved experiment config and the
    :func:`file_digests` of the model config."""
    group = resolved["task_group"]
    data = {k: v for k, v in resolved["data"].items() if k not in RANGE_KEYS}
    return {"model": digest(resolved["model"]),
            "checkpoints": digest({path: entry["sha256"] for path, entry in checkpoints.items()}),
            "task": digest({"task_group": group, "block": resolved["task"][group]}),
            "sampler": digest(resolved["sampler"]), "data": digest(data),
            "metrics": digest(sorted(resolved["eval_fn_list"])), "seed": resolved["seed"]}


@dataclass(frozen=True)
class SampleKeys:
    """The fingerprint every (image, run) of the current experiment must carry."""

    common: Mapping[str, Any]
    images: Mapping[int, Mapping[str, str]]  # image id -> {"image": digest, "operator_state": digest or DRAWN}
    num_runs: int

    @classmethod
    def build(cls, common: Mapping[str, Any], ids: Sequence[int], image: Callable[[int], torch.Tensor],
              state: Callable[[int], Mapping[str, torch.Tensor] | None], num_runs: int) -> "SampleKeys":
        """``image(index)``: what the sampler conditions on for item ``index`` (the ground truth, or y);
        ``state(index)``: its loaded/shared/stored operator state, None when drawn from (seed, image id)."""
        images = {}
        for index, image_id in enumerate(ids):
            loaded = state(index)
            images[image_id] = {"image": tensor_digest(image(index)),
                                "operator_state": DRAWN if loaded is None else tensor_digest(dict(loaded))}
        return cls(dict(common), images, num_runs)

    def of(self, image_id: int, run: int) -> dict[str, Any]:
        """The fingerprint of sample (image, run)."""
        return {**self.common, "image_id": image_id, **self.images[image_id], "run": run}

    def pairs(self) -> set[tuple[int, int]]:
        """Every (image id, run) of the experiment."""
        return {(i, r) for i in self.images for r in range(self.num_runs)}


def differences(expected: Mapping[str, Any], found: Mapping[str, Any] | None) -> list[str]:
    """The fingerprint keys whose values differ (every key when ``found`` is None: no fingerprint)."""
    found = found or {}
    return sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
