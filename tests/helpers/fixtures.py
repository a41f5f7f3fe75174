"""Test data: the reference fixtures the tests compare against (``tests/fixtures``, see its README) and stand-in
images."""
from __future__ import annotations

import hashlib
import io
import json
import lzma
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


def load_fixture(name: str):
    """A reference fixture from ``tests/fixtures``: ``.pt`` files are stored xz-compressed (``NAME.pt.xz``) and load
    through ``weights_only`` unpickling; ``.json`` is parsed; a ``.tsv`` listing gives ``[(key, shape), ...]``."""
    path = FIXTURES / name
    if path.suffix == ".pt":
        with lzma.open(path.with_name(path.name + ".xz")) as packed:
            return torch.load(io.BytesIO(packed.read()), weights_only=True, map_location="cpu")
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".tsv":
        rows = [line.split("\t") for line in path.read_text().splitlines() if line]
        return [(k, tuple(int(s) for s in shape.split(",") if s)) for k, shape in rows]
    raise ValueError(f"unknown fixture kind: {name}")


def make_images(folder: Path, names: list[str], size: int = 16, seed: int = 0) -> dict[str, str]:
    """Write small random RGB images (format from each name's suffix) into ``folder``; returns name -> SHA-256.
    Stand-ins for the FFHQ/ImageNet demo images, which are not ours to commit."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sums = {}
    for name in names:
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
        sums[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    return sums
