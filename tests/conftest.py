"""Shared test helpers: the reference fixtures live in ../shared beside the checkout (never copied in)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures"


def load_fixture(name: str):
    """A fixture file from ../shared/fixtures (``.pt`` through weights_only loading, ``.json`` parsed)."""
    path = FIXTURES / name
    if not path.exists():
        pytest.fail(f"missing reference fixture {path} (../shared must sit beside the checkout)")
    if path.suffix == ".json":
        import json
        return json.loads(path.read_text())
    if path.suffix == ".tsv":
        rows = [line.split("\t") for line in path.read_text().splitlines() if line]
        return [(k, tuple(int(s) for s in shape.split(",") if s)) for k, shape in rows]
    return torch.load(path, weights_only=True, map_location="cpu")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks gain nothing from threads; on shared cores extra threads only wait for each other.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
