"""The experiment loop: measure each image once, sample every (image, run) in batches, write as we go.

    y_i     = A(x_i) + n,  noise and operator state (mask, kernel) drawn from (seed, image id)
    x̂_{i,r} = sampler.sample(model, A, y_i, generator(seed, image id, run))

Work items (image, run) are batched together (``batch_size`` items per sampler call, runs and images
mixed), each with its own generator, so results do not depend on the batch size. Every finished batch is
on disk before the next starts; items already on disk are skipped (resume).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from common.data import ImageDataset
from common.distributed import Ranks, barrier
from common.metrics import Metrics
from common.models.base import DiffusionModel
from common.operators.base import Operator, stack_states
from common.progress import Progress
from common.random import make_generator
from common.run_dir import RunDirectory


@dataclass
class Outputs:
    """What to write besides samples and metrics."""

    save_samples: bool = True
    save_traj: bool = False
    save_traj_video: bool = False
    trajectory_points: int = 10
    show_progress: bool = True
    on_step: Callable[[dict[str, float]], None] | None = None  # per-step scalars (residual, sigma), e.g. W&B


@dataclass
class Measurement:
    image: torch.Tensor
    y: torch.Tensor
    state: dict[str, torch.Tensor]


def measure(operator: Operator, image: torch.Tensor, image_id: int, seed: int) -> Measurement:
    """y = A(x) + n for one image, its operator state and noise drawn from (seed, image id)."""
    state = operator.draw_state(make_generator(seed, image_id, "operator"))
    operator.set_state(stack_states([state]))
    y = operator.measure(image[None], [make_generator(seed, image_id, "measurement")])[0]
    return Measurement(image, y, state)


class OutOfMemory(RuntimeError):
    """The device ran out of memory at a batch size (results of earlier batches are on disk)."""


def run_experiment(dataset: ImageDataset, operator: Operator, model: DiffusionModel, sampler: Any,
                   run_dir: RunDirectory, metrics: Metrics, *, seed: int, num_runs: int, batch_size: int,
                   device: torch.device, outputs: Outputs = Outputs(), auto_batch: bool = False,
                   ranks: Ranks = Ranks(), log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Sample every (image, run) not yet on disk; returns the summary written to ``metrics.json``
    (on rank 0; other ranks return None after the barrier).

    A CUDA out-of-memory error halves the batch and retries when ``auto_batch``; otherwise it raises
    :class:`OutOfMemory` naming the batch size. Either way, finished batches stay on disk.
    """
    while True:
        try:
            _sample_all(dataset, operator, model, sampler, run_dir, metrics, seed=seed, num_runs=num_runs,
                        batch_size=batch_size, device=device, outputs=outputs, indices=ranks.shard(len(dataset)),
                        log=log)
            break
        except torch.cuda.OutOfMemoryError as err:
            torch.cuda.empty_cache()
            if not auto_batch or batch_size == 1:
                raise OutOfMemory(f"CUDA ran out of memory at batch_size={batch_size}; results of finished batches "
                                  f"are kept in {run_dir.root}. Rerun with batch_size={max(batch_size // 2, 1)} "
                                  f"(or auto_batch=true) to resume") from err
            batch_size //= 2
            log(f"CUDA ran out of memory; retrying the remaining samples with batch_size={batch_size}")
    barrier(ranks)
    if not ranks.is_main:
        return None
    return run_dir.finish(metrics.names, dict(zip(range(dataset.start, dataset.end), dataset.names())))


def _sample_all(dataset: ImageDataset, operator: Operator, model: DiffusionModel, sampler: Any,
                run_dir: RunDirectory, metrics: Metrics, *, seed: int, num_runs: int, batch_size: int,
                device: torch.device, outputs: Outputs, indices: Sequence[int], log: Callable[[str], None]) -> None:
    done = run_dir.finished()
    items = [(index, run) for run in range(num_runs) for index in indices]
    todo = [(index, run) for index, run in items if (dataset.start + index, run) not in done]
    if len(todo) < len(items):
        log(f"resuming: {len(items) - len(todo)} of {len(items)} samples already in {run_dir.root}")
    cache: dict[int, Measurement] = {}
    names = dataset.names()
    for first in range(0, len(todo), batch_size):
        batch = todo[first:first + batch_size]
        for index, _ in batch:
            if index not in cache:
                image_id, image = dataset[index]
                cache[index] = measure(operator, image.to(device), image_id, seed)
                run_dir.write_inputs(image_id, image, cache[index].y, cache[index].state, image.shape[-2:])
        ids = [dataset.start + index for index, _ in batch]
        gt = torch.stack([cache[index].image for index, _ in batch])
        y = torch.stack([cache[index].y for index, _ in batch])
        operator.set_state(stack_states([cache[index].state for index, _ in batch]))
        generators = [make_generator(seed, image_id, run, device=device) for image_id, (_, run) in zip(ids, batch)]
        progress = Progress(len(batch), gt, record_frames=outputs.save_traj, points=outputs.trajectory_points,
                            show_bar=outputs.show_progress, latent=model.latent, on_step=outputs.on_step,
                            description=f"batch {first // batch_size + 1}/{-(-len(todo) // batch_size)}")
        samples = sampler.sample(model, operator, y, generators=generators, callback=progress)
        values = metrics(samples, gt)
        with torch.no_grad():
            residual = operator.loss(torch.nan_to_num(samples), y).sqrt().cpu()
        for k, (image_id, (index, run)) in enumerate(zip(ids, batch)):
            record = {"name": names[index], "residual": float(residual[k]),
                      "failed_at_step": progress.failed_at[k],
                      **{m: (None if v is None or not torch.isfinite(v[k]) else float(v[k]))
                         for m, v in values.items()}}
            if progress.failed_at[k] is not None:
                record["residual"] = None
                log(f"image {image_id} run {run}: the sampler diverged (NaN/inf) at step {progress.failed_at[k]}")
            if outputs.save_traj:
                run_dir.write_trajectory(image_id, run, progress.frames[k], video=outputs.save_traj_video)
            run_dir.write_sample(image_id, run, samples[k], record, save_image=outputs.save_samples)
