"""The experiment loop: measure each image once, sample every (image, run) in batches, write as we go.

    y_i     = A(x_i) + n,  noise and operator state (mask, kernel) drawn from (seed, image id)
    x̂_{i,r} = sampler.sample(model, A, y_i, generator(seed, image id, run)).samples

Work items (image, run) are batched together (``batch_size`` items per sampler call, runs and images
mixed), each with its own generator, so results do not depend on the batch size. Every finished batch is
on disk before the next starts; items already on disk are skipped (resume).

The operator state may instead be loaded or shared (a :class:`~common.data.operator_state.StatePlan`). A dataset
without ground truth (``dataset.ground_truth`` False) gives y directly, with the state stored beside it
(or the plan's, or drawn); its records hold the residual only. With ``num_runs`` ≥ 2 the float samples are
kept for the posterior mean/std maps (:mod:`common.evaluation.uncertainty`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from common.data.datasets import ImageDataset
from common.data.operator_state import StatePlan, check_state, state_source
from common.errors import InputError
from common.evaluation.figures import trajectory_files
from common.evaluation.finish import finish_run
from common.evaluation.metrics import Metrics, residual_ratio
from common.models.base import DiffusionModel
from common.operators.base import Operator, stack_states
from common.operators.measurement import draw_states, simulate
from common.random import make_generator
from common.results.fingerprint import SampleKeys, tensor_digest
from common.results.provenance import environment
from common.results.run_dir import RunDirectory
from common.run.distributed import Ranks, barrier
from common.run.progress import Progress, RunBar
from common.sampling import Sampler, first_step_finite
from common.sampling.counting import count_calls


@dataclass
class Outputs:
    """What to write besides samples and metrics."""

    save_samples: bool = True
    save_traj: bool = False
    save_traj_video: bool = False
    trajectory_points: int = 10
    trajectory_images: int | None = 4  # progress strips only for the first this many images (None: every image)
    show_progress: bool = True
    progress_label: str = "sampling"  # the run's progress bar (torchrun: names the rank)
    on_step: Callable[[dict[str, float]], None] | None = None  # per-step scalars (residual, sigma), e.g. W&B
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None  # a batch's records once on disk, e.g. W&B


@dataclass
class Measurement:
    image: torch.Tensor | None  # None: no ground truth
    y: torch.Tensor
    state: dict[str, torch.Tensor]


def measure(operator: Operator, image: torch.Tensor, image_id: int, seed: int,
            state: dict[str, torch.Tensor] | None = None) -> Measurement:
    """y = A(x) + n for one image, the noise drawn from (seed, image id), the operator state given or drawn
    from (seed, image id) (:mod:`common.operators.measurement`)."""
    if state is None:
        state = draw_states(operator, [make_generator(seed, image_id, "operator")])[0]
    y = simulate(operator, image[None], [state], [make_generator(seed, image_id, "measurement")])[0]
    return Measurement(image, y, state)


def _check_measurements(dataset: ImageDataset, operator: Operator, states: Callable[[int], Any],
                        device: torch.device, log: Callable[[str], None]) -> None:
    """Before sampling: a state stored with a measurement must fit the operator (keys, shapes, values), and every y
    must have the shape A gives a (3, R, R) image under its state."""
    drawn = 0
    for index, image_id in enumerate(dataset.ids()):
        _, y = dataset[index]
        state = states(image_id)
        if state is None and (state := dataset.state(index)) is not None:
            check_state(operator, state, f"measurement {dataset.names()[index]}")
        if state is None:
            state, drawn = operator.draw_state(make_generator(0, "probe")), drawn + 1
        operator.set_state(stack_states([state]))
        with torch.no_grad():
            expected = operator(torch.zeros(1, 3, dataset.resolution, dataset.resolution, device=device)).shape[1:]
        if tuple(y.shape) != tuple(expected):
            raise InputError(f"measurement {dataset.names()[index]} has shape {tuple(y.shape)}, but "
                             f"{type(operator).__name__} maps {dataset.resolution}x{dataset.resolution} images to "
                             f"{tuple(expected)}: check data.resolution and the task")
    if drawn and operator.draw_state(make_generator(0, "probe")):
        log(f"note: {drawn} measurement(s) come without an operator state (mask/kernel); it is drawn from "
            f"(seed, image id) as in a ground-truth run. Pass task.<group>.operator.state=PATH to use a saved one")


def _measurement(dataset: ImageDataset, index: int, operator: Operator, seed: int, inputs: Inputs,
                 device: torch.device) -> Measurement:
    """The measurement of item ``index``: simulated from the ground truth, or read (no ground truth). The item must
    be the one fingerprinted when the run started (a file replaced meanwhile stops the run, naming it: its samples
    would be recorded under the old content)."""
    image_id, item = dataset[index]
    if tensor_digest(item) != inputs.keys.images[image_id]["image"]:
        raise InputError(f"input {dataset.names()[index]} (image {image_id}) changed while the run was going: its "
                         f"content differs from when the run started; samples already made are kept. Leave the "
                         f"input files alone during a run and run the same command again")
    state = inputs.states(image_id)
    if dataset.ground_truth:
        return measure(operator, item.to(device), image_id, seed, state)
    if state is None:
        state = dataset.state(index) or operator.draw_state(make_generator(seed, image_id, "operator"))
    return Measurement(None, item.to(device), state)


@dataclass
class Inputs:
    """The checked inputs of an experiment: where each image's operator state comes from, and the fingerprint every
    (image, run) carries (:func:`prepare_inputs`)."""

    states: Callable[[int], dict[str, torch.Tensor] | None]
    keys: SampleKeys


def prepare_inputs(dataset: ImageDataset, operator: Operator, *, seed: int, num_runs: int, device: torch.device,
                   state_plan: StatePlan = StatePlan(), fingerprint: Mapping[str, Any] | None = None,
                   log: Callable[[str], None] = print) -> Inputs:
    """Check every input and fingerprint it, writing nothing: loaded operator states, stored states and
    measurement shapes (:class:`~common.errors.InputError`), then each image's content digest (see
    :func:`run_experiment`). Call it before a run folder is changed (``overwrite=true`` moves the old one aside
    only once the inputs are known good)."""
    states = state_source(state_plan, operator, seed, dataset.ids())
    if not dataset.ground_truth:
        _check_measurements(dataset, operator, states, device, log)
    ids = dataset.ids()
    keys = SampleKeys.build({"seed": seed, **(fingerprint or {})}, ids, lambda index: dataset[index][1],
                            lambda index: states(ids[index]) or dataset.state(index), num_runs)
    return Inputs(states, keys)


def first_step_diverges(dataset: ImageDataset, operator: Operator, model: DiffusionModel, sampler: Sampler,
                        inputs: Inputs, *, seed: int, device: torch.device) -> bool:
    """Whether the sampler's first outer step for (first image, run 0), on the measurement the run makes, is already
    non-finite (:func:`~common.sampling.first_step_finite`): settings that diverge at once are refused before the
    run instead of giving a folder of NaN samples. Writes nothing."""
    measurement = _measurement(dataset, 0, operator, seed, inputs, device)
    operator.set_state(stack_states([measurement.state]))
    generator = make_generator(seed, dataset.ids()[0], 0, device=device)
    return not first_step_finite(sampler, model, operator, measurement.y, generator)


class OutOfMemory(RuntimeError):
    """The device ran out of memory at a batch size (results of earlier batches are on disk)."""


def run_experiment(dataset: ImageDataset, operator: Operator, model: DiffusionModel, sampler: Sampler,
                   run_dir: RunDirectory, metrics: Metrics, *, seed: int, num_runs: int, batch_size: int,
                   device: torch.device, outputs: Outputs = Outputs(), auto_batch: bool = False,
                   ranks: Ranks = Ranks(), log: Callable[[str], None] = print,
                   state_plan: StatePlan = StatePlan(), fingerprint: Mapping[str, Any] | None = None,
                   inputs: Inputs | None = None) -> dict[str, Any] | None:
    """Sample every (image, run) not yet on disk; returns the summary written to ``metrics.json``
    (on rank 0; other ranks return None after the barrier).

    A sample on disk counts only when its fingerprint (``fingerprint``: the run-wide part from
    :func:`common.results.fingerprint.config_parts`, plus the seed, the image content, the operator state and the run)
    is the one expected; one of this experiment's samples made differently stops the run before anything is
    written (:class:`~common.results.run_dir.RunDirectoryError`).

    ``state_plan`` says where the operator state comes from (drawn per image by default). Loaded states and
    measurement shapes are checked first (:class:`~common.errors.InputError`, before any sampling), by
    :func:`prepare_inputs` unless its result is given as ``inputs``. An image whose content changes during the
    run stops it (:class:`~common.errors.InputError`). A CUDA
    out-of-memory error halves the batch and retries when ``auto_batch``; otherwise it raises
    :class:`OutOfMemory` naming the batch size. Either way, finished batches stay on disk.
    """
    if inputs is None:
        inputs = prepare_inputs(dataset, operator, seed=seed, num_runs=num_runs, device=device,
                                state_plan=state_plan, fingerprint=fingerprint, log=log)
    run_dir.expect(inputs.keys, image=outputs.save_samples, raw=num_runs >= 2, log=log)
    if ranks.is_main:
        run_dir.write_json("protocol.json", {
            "data": dataset.protocol(), "operator_state": state_plan.describe(), "seed": seed, "num_runs": num_runs,
            "ground_truth": dataset.ground_truth, "metrics": metrics.describe(), "environment": environment()})
    while True:
        try:
            _sample_all(dataset, operator, model, sampler, run_dir, metrics, seed=seed, num_runs=num_runs,
                        batch_size=batch_size, device=device, outputs=outputs, indices=ranks.shard(len(dataset)),
                        log=log, inputs=inputs)
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
    names = metrics.names if dataset.ground_truth else []
    return finish_run(run_dir, names, dict(zip(dataset.ids(), dataset.names())),
                          set_metric_names=metrics.set_names if dataset.ground_truth else (), device=device)


def _sample_all(dataset: ImageDataset, operator: Operator, model: DiffusionModel, sampler: Sampler,
                run_dir: RunDirectory, metrics: Metrics, *, seed: int, num_runs: int, batch_size: int,
                device: torch.device, outputs: Outputs, indices: Sequence[int], log: Callable[[str], None],
                inputs: Inputs) -> None:
    done = run_dir.finished()
    all_ids = dataset.ids()
    items = [(index, run) for run in range(num_runs) for index in indices]
    todo = [(index, run) for index, run in items if (all_ids[index], run) not in done]
    if len(todo) < len(items):
        log(f"resuming: {len(items) - len(todo)} of {len(items)} samples already in {run_dir.root}")
    cache: dict[int, Measurement] = {}
    names = dataset.names()
    keep_raw = num_runs >= 2  # float samples for the posterior mean/std maps
    size = (dataset.resolution, dataset.resolution)
    bar = RunBar(-(-len(todo) // batch_size), outputs.progress_label) if outputs.show_progress and todo else None
    for first in range(0, len(todo), batch_size):
        batch = todo[first:first + batch_size]
        for index, _ in batch:
            if index not in cache:
                cache[index] = _measurement(dataset, index, operator, seed, inputs, device)
                image = cache[index].image
                run_dir.write_inputs(all_ids[index], None if image is None else image.cpu(), cache[index].y,
                                     cache[index].state, size, raw=keep_raw)
        ids = [all_ids[index] for index, _ in batch]
        gt = torch.stack([cache[index].image for index, _ in batch]) if dataset.ground_truth else None
        y = torch.stack([cache[index].y for index, _ in batch])
        operator.set_state(stack_states([cache[index].state for index, _ in batch]))
        generators = [make_generator(seed, image_id, run, device=device) for image_id, (_, run) in zip(ids, batch)]
        strips = [outputs.save_traj and (outputs.trajectory_images is None or index < outputs.trajectory_images)
                  for index, _ in batch]
        progress = Progress(len(batch), gt, record_frames=any(strips), points=outputs.trajectory_points,
                            bar=bar, latent=model.latent, on_step=outputs.on_step)
        with count_calls(model) as calls:
            result = sampler.sample(model, operator, y, generators=generators, callback=progress)
        samples, failed_at = result.samples, result.failed_at
        values = metrics(samples, gt) if gt is not None else {}
        with torch.no_grad():
            residual = operator.loss(torch.nan_to_num(samples), y).sqrt().cpu()
        sigma = getattr(operator.noise, "sigma", None)  # Gaussian noise only
        finished: list[dict[str, Any]] = []
        for k, (image_id, (index, run)) in enumerate(zip(ids, batch)):
            record = {"name": names[index], "residual": float(residual[k]),
                      "residual_ratio": residual_ratio(float(residual[k]), sigma, y[k].numel()),
                      "failed_at_step": failed_at[k], "model_calls": calls["nfe"] / len(batch),
                      "model_backward": calls["vjp"] / len(batch),
                      **{m: (None if v is None or not torch.isfinite(v[k]) else float(v[k]))
                         for m, v in values.items()}}
            if failed_at[k] is not None:
                record["residual"] = record["residual_ratio"] = None
                log(f"image {image_id} run {run}: the sampler diverged (NaN/inf) at step {failed_at[k]}")
            trajectory = (trajectory_files(progress.frames[k], progress.frame_steps, progress.frame_times,
                                           progress.num_steps, video=outputs.save_traj_video)
                          if strips[k] else None)
            if trajectory is not None:
                run_dir.write_trajectory(image_id, run, *trajectory)
            run_dir.write_sample(image_id, run, samples[k], record, save_image=outputs.save_samples, raw=keep_raw)
            finished.append({"image_id": image_id, "run": run, **record})
        if outputs.on_batch is not None:
            outputs.on_batch(finished)
