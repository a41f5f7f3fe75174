"""Shared pieces of the evaluation tests: a tiny in-memory dataset, a fixed-mask operator, a fast sampler."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from common.data.datasets import ImageDataset
from common.data.operator_state import StatePlan
from common.evaluation.metrics import Metrics
from common.models.gaussian import GaussianPrior
from common.operators.base import LinearOperator
from common.operators.noise import GaussianNoise
from common.random import make_generator
from common.results.run_dir import RunDirectory
from common.run.experiment import Outputs, run_experiment
from daps.sampler import DAPS

QUIET = Outputs(save_traj=False, show_progress=False)


class TensorImages(ImageDataset):
    """Images held in memory with the given ids (default 0..n-1): a test dataset."""

    def __init__(self, images: torch.Tensor, ids: list[int] | None = None) -> None:
        self.images, self.resolution = images, images.shape[-1]
        self._ids = list(range(len(images))) if ids is None else list(ids)
        self.start, self.end = min(self._ids), max(self._ids) + 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return self._ids[index], self.images[index]

    def ids(self) -> list[int]:
        return list(self._ids)

    def names(self) -> list[str]:
        return [f"image{i}" for i in self._ids]


class FixedMask(LinearOperator):
    """y = m ⊙ x with one fixed 0/1 mask (a test operator without random state)."""

    def __init__(self, mask: torch.Tensor, sigma: float) -> None:
        super().__init__(GaussianNoise(sigma))
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return tuple(y.shape)


def small_prior(resolution: int = 8) -> GaussianPrior:
    return GaussianPrior(resolution, mean=[0.1, -0.2, 0.0], variance=[0.25] * 3, alpha=[2.0] * 3, f0=0.1)


def prior_images(count: int, resolution: int = 8) -> torch.Tensor:
    return small_prior(resolution).sample([make_generator(11, i) for i in range(count)]).clamp(-1, 1)


def exact_daps(sigma_y: float, num_steps: int = 20, mcmc_steps: int = 30) -> DAPS:
    """DAPS whose target is exactly the Gaussian posterior: exact prior solver, τ = √2 σ_y."""
    mcmc = {"num_steps": mcmc_steps, "lr": 5e-3, "tau": math.sqrt(2) * sigma_y, "lr_min_ratio": 0.02,
            "prior_solver": "exact", "prior_sigma_min": 0.001, "mc_algo": "langevin"}
    return DAPS.from_config({"num_steps": num_steps, "sigma_max": 10, "sigma_min": 0.05, "timestep": "poly-7"},
                {"num_steps": 5, "sigma_min": 0.01}, mcmc)


def run(dataset, operator, model, sampler, root: Path, *, seed: int = 3, num_runs: int = 2, batch_size: int = 4,
        metrics=("psnr",), plan: StatePlan = StatePlan(), outputs: Outputs = QUIET) -> tuple[RunDirectory, dict]:
    directory = RunDirectory(root)
    summary = run_experiment(dataset, operator, model, sampler, directory, Metrics(list(metrics)), seed=seed,
                             num_runs=num_runs, batch_size=batch_size, device=torch.device("cpu"), outputs=outputs,
                             log=lambda message: None, state_plan=plan)
    return directory, summary
