"""A sampler defined only by a module and a yaml reaches the accuracy tool and the benchmark with no other edit.

The module is written into a throw-away package, registered in SAMPLERS by importing it (as ``baselines`` does
for its modules), and its ``sampler/<name>.yaml`` lies in a throw-away config folder on the tools' config search
path: nothing in ``commands/`` names it.
"""
from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from commands import accuracy, benchmark
from common.config import compose
from common.registry import SAMPLERS

MODULE = '''
"""Toy sampler: one denoiser call to start, then three per step (model calls c(k) = 1 + 3k)."""
from typing import Sequence

import torch

from common.errors import positive_int, real
from common.random import randn
from common.registry import SAMPLERS
from common.sampling import DivergenceTracker, SampleResult


@SAMPLERS.register("toy_j")
class ToySampler:
    requires = frozenset()
    spaces = frozenset({"pixel"})

    def __init__(self, num_steps: int, sigma: float, sigma_y: float) -> None:
        self.num_steps, self.sigma = positive_int("num_steps", num_steps), real("sigma", sigma, 0, low_open=True)
        self.sigma_y = real("sigma_y", sigma_y, 0)

    @torch.no_grad()
    def sample(self, model, operator, y, *, generators: Sequence[torch.Generator], callback=None) -> SampleResult:
        tracker = DivergenceTracker(len(generators))
        x = model.tweedie(self.sigma * randn(model.sample_shape, generators, device=y.device), self.sigma)
        for step in range(self.num_steps):
            for _ in range(3):
                x = model.tweedie(x, self.sigma)
            x = tracker.check(x, step)
            if callback is not None:
                callback({"step": step, "num_steps": self.num_steps, "finite": tracker.finite,
                          "decode": model.decode, "x_t": x})
        return tracker.result(x)


@SAMPLERS.register("toy_j_latent")
class LatentToySampler(ToySampler):
    spaces = frozenset({"latent"})
'''
CONFIG = """\
name: {name}
num_steps: 5
sigma: 0.5
sigma_y: ${{task.${{task_group}}.operator.sigma}}   # the selected task group's noise level
"""


@pytest.fixture
def toy_sampler(tmp_path, monkeypatch):
    """Registers toy_j / toy_j_latent from a module in a temporary package and their yamls on the search path;
    the registry and the search path are restored afterwards."""
    package = tmp_path / "toy_j_package"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(MODULE))
    for name in ("toy_j", "toy_j_latent"):
        (tmp_path / "conf" / "sampler").mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / "sampler" / f"{name}.yaml").write_text(CONFIG.format(name=name))
    monkeypatch.setattr(SAMPLERS, "_entries", dict(SAMPLERS._entries))
    monkeypatch.setattr(compose, "SEARCH_PATH", [tmp_path / "conf"])
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("toy_j_package")
    yield
    sys.modules.pop("toy_j_package", None)


def test_the_accuracy_tool_runs_it_at_its_budget_and_at_100_model_calls(toy_sampler):
    specs = [s for s in accuracy.sampler_grid() if s.name.startswith("toy_j")]
    assert [s.label for s in specs] == ["toy_j@paper", "toy_j@100", "toy_j_latent@paper", "toy_j_latent@100"]
    problem = accuracy.build_problem("gauss/down_sampling")
    assert specs[0].resolve(problem) == {"name": "toy_j", "num_steps": 5, "sigma": 0.5, "sigma_y": 0.05}
    rows, skipped = accuracy.run_problem("gauss/down_sampling", specs, num_samples=4)
    # its latent twin runs on the same prior behind an identity autoencoder: the same calls
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("toy_j@paper", 16), ("toy_j@100", 100),  # 1 + 3·33
                                                        ("toy_j_latent@paper", 16), ("toy_j_latent@100", 100)]
    assert all(r["diverged"] == 0 and r["w2"] > 0 for r in rows) and skipped == []


def test_the_benchmark_gives_it_a_row(toy_sampler, tmp_path):
    out = tmp_path / "bench.csv"
    rows = benchmark.main(["--quick", "--device", "cpu", "--batch-sizes", "1", "--samplers", "toy_j",
                           "--out", str(out)])
    assert [(r["sampler"], r["model"], r["status"]) for r in rows] == [("toy_j", "ffhq256ddpm", "ok")]
    assert rows[0]["steps_full"] == 5 and rows[0]["nfe_per_image"] == 16  # 1 + 3 · 5
    assert "| toy_j |" in out.with_suffix(".md").read_text()
