"""Named image lists with SHA-256 checksums: the test sets of the evaluation protocol.

A list ``<name>.sha256`` (``sha256sum`` format: ``<sha256>  <file name>`` per line) names the files of a test set;
image id i is the file on line i. ``data.id_list=<name>`` looks the list up beside the data configs
(``configs/data/<name>.sha256``) or takes a path; every selected file is hashed and compared before sampling. Write
a list with ``python -m commands.protocol FOLDER > configs/data/<name>.sha256``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from common.data.files import regular_file_problem

LIST_DIR = Path(__file__).resolve().parents[2] / "configs" / "data"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_list(id_list: str) -> Path | None:
    """The list file for ``data.id_list``: an existing path, else ``configs/data/<id_list>.sha256``, else None."""
    given = Path(id_list).expanduser()
    if given.is_file():
        return given
    named = LIST_DIR / f"{id_list}.sha256"
    return named if named.is_file() else None


def read_list(path: str | Path) -> list[tuple[str, str]]:
    """(file name, sha256) per line of a ``sha256sum``-format list; a malformed line raises ValueError."""
    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{path}:{number}: expected '<64 hex digits>  <file name>', got {line!r}")
        entries.append((parts[1].strip().lstrip("*"), digest))
    if not entries:
        raise ValueError(f"image list {path} names no files")
    return entries


def verify_files(root: Path, entries: Sequence[tuple[str, str]]) -> None:
    """Every (name, sha256) must exist under ``root`` with that SHA-256; else one ValueError naming them all."""
    problems = []
    for name, expected in entries:
        path = root / name
        if problem := regular_file_problem(path):  # missing, a FIFO, a directory, ...: never opened
            problems.append(f"{name}: {problem}")
        elif (actual := file_sha256(path)) != expected:
            problems.append(f"{name}: SHA-256 {actual[:12]}... differs from the list's {expected[:12]}...")
    if problems:
        raise ValueError(f"the images in '{root}' do not match their checksum list: " + "; ".join(problems)
                         + ". Fetch them again with `bash download.sh data`, or run unverified with data.id_list=null")


def write_list(folder: str | Path, suffixes: Sequence[str]) -> str:
    """The list of a folder's image files, sorted by name (``sha256sum`` format)."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in suffixes)
    return "".join(f"{file_sha256(p)}  {p.name}\n" for p in files)
