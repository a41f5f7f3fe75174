"""Shared test helpers; the reference fixtures the tests compare against live in ``tests/fixtures`` (see its README)."""
from __future__ import annotations

import io
import json
import lzma
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks gain nothing from threads; on shared cores extra threads only wait for each other.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_images(folder: Path, names: list[str], size: int = 16, seed: int = 0) -> dict[str, str]:
    """Write small random RGB images (format from each name's suffix) into ``folder``; returns name -> SHA-256.
    Stand-ins for the FFHQ/ImageNet demo images, which are not ours to commit."""
    import hashlib

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sums = {}
    for name in names:
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
        sums[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    return sums
