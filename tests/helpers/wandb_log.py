"""Read an offline W&B run folder: config, tags, history and summary from its ``run-<id>.wandb`` log.

The log is a LevelDB-style file (a 7-byte W&B header, then 32 KiB blocks of [crc32, length, type] chunks)
of ``wandb_internal_pb2.Record`` protobufs; the media are plain files under ``files/media``.
"""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7


def read_wandb_log(path: Path) -> list:
    """Records of an offline ``.wandb`` file (file header 7 bytes, then LevelDB log chunks)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B log"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 or pos + HEADER + length > len(data):  # end, or a chunk still being written
            break
        body, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        pending = body if kind in (1, 2) else pending + body
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _key(item) -> str:
    return "/".join(item.nested_key) or item.key


def finished_log(run_folder: Path, timeout: float = 60.0) -> list:
    """The records of the run's log once W&B's writer process has written its final (``exit``) record:
    ``run.finish()`` can return before the writer has flushed the file."""
    (log_file,) = run_folder.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = read_wandb_log(log_file)
        size = log_file.stat().st_size
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            time.sleep(0.2)
            if log_file.stat().st_size == size:
                return records
        elif time.monotonic() > deadline:
            pytest.fail(f"{log_file} has no exit record after {timeout} s")
        else:
            time.sleep(0.2)


def decode(run_folder: Path) -> dict:
    """{'config', 'tags', 'project', 'history' (list of dicts), 'summary'} of one offline run folder."""
    out = {"config": {}, "tags": [], "project": None, "history": [], "summary": {}}
    for record in finished_log(run_folder):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["tags"], out["project"] = list(record.run.tags), record.run.project
            out["config"].update({_key(u): json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "config":
            out["config"].update({_key(u): json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            out["history"].append({_key(u): json.loads(u.value_json) for u in record.history.item})
        elif kind == "summary":
            out["summary"].update({_key(u): json.loads(u.value_json) for u in record.summary.update})
    return out
