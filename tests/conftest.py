"""Pytest fixtures shared by every test; importable helpers live in ``tests/helpers``."""
from __future__ import annotations

import pytest
import torch

import commands.configs  # noqa: F401  (loads the sampler packages, as the applications do, and the config resolvers)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks gain nothing from threads; on shared cores extra threads only wait for each other.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
