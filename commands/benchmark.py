r"""Throughput benchmark: ``python -m commands.benchmark`` (one row per registered sampler, variant and batch size).

    python -m commands.benchmark                      # CUDA if available (full-size models), else tiny models on CPU
    python -m commands.benchmark --quick              # tiny models, two timed steps, one repeat
    python -m commands.benchmark --device cuda --batch-sizes 1,10,100 --variants fp32,bf16+channels_last+compile
    python -m commands.benchmark --samplers edm_daps,dps
    python -m commands.benchmark --operators          # operator rows: forward + VJP per task, 64 and 256 px
    python -m commands.benchmark --operators --tasks down_sampling,gaussian_blur --methods fast,direct

Cases: every sampler registered in ``common.registry.SAMPLERS`` that has a ``configs/sampler/<name>.yaml``, with
no code of its own here: its settings are the real config composed as a run composes it (``sampler=<name>``,
``task=down_sampling`` (×4 super-resolution), the model's own task group) on the first model of
:data:`MODELS_BY_SPACE` it runs on (ffhq256ddpm for pixel-space samplers, ffhq256ldm for latent ones), with
random weights. ``--size full`` uses those architectures at 256²; ``--size tiny`` small ones (ADM at 32², LDM at
16²; the CPU default). A sampler that cannot run there (operator capabilities, its own check) is skipped and
listed.

What is measured, per (sampler, variant, batch size B): the sampler stopped after k of its N outer steps (the
callback, called once per outer step, stops it; ``--steps`` sets k, by default the fewest steps that make about
10 model calls, at least 2; ``--full-schedule`` runs all N), after one untimed warm-up run (which also compiles),
``--repeats`` times; the median and the spread (min, max) of the wall time t_k, and

    seconds per image  = t_k / B · N / k
    model calls/image  = NFE₀ + N · NFE_step    (network evaluations, :func:`common.sampling.counting.count_calls`)
    NFE/s              = model calls per image / seconds per image
    FLOP per image     = F₀ + N · F_step  (counted, not estimated: matmul/conv/attention FLOPs of the forward
                         and backward passes, torch.utils.flop_counter formulas, in an eager batch-1 run of three
                         steps; the step's share read between the last two steps, ₀ = the first step's excess:
                         the initial draw; work after the last step, such as a final decode, is not counted)
    bound              = FLOP per image / peak FLOP/s of the device at the variant's precision
    fraction of bound  = bound / seconds per image

The peak is the dense tensor-core datasheet figure (fp32 → TF32, which cuDNN uses for convolutions by default;
``--peak-tflops`` for other devices). A multiply–add counts 2 FLOPs: the ffhq256ddpm UNet costs 388 GFLOP per
256² forward pass; DPS's backward pass to the input costs about one more forward (no weight gradients).
Peak memory is each row's own (timed runs, after the warm-up): ``torch.cuda.max_memory_allocated`` (weights
included) on CUDA, reset per row; on a CPU the process's peak resident set size during the row (its high-water
mark, reset per row through ``/proc/self/clear_refs``), which includes the interpreter, the libraries and the
weights (0.6 GB of it is the process before any row, on our CPU test machine) and memory the allocator kept from
earlier rows. Where the mark cannot be reset (not Linux) the column is the running maximum and the table says so.

Operator rows (``--operators``, instead of the sampler table): every task config's operator (``configs/task/*.yaml``,
as a run composes it at ``--resolutions``, default 64 and 256 px) on random [−1, 1] images with per-image states and
noisy measurements; one call is ``operator.gradient(x, y)`` on a batch (forward, residual and VJP: the operator work
of one DAPS MCMC step, or of one DPS step), timed in ``--repeats`` runs (default 5) of enough calls for 0.2 s, after
two untimed calls (a warm-up, and one that sizes the runs). The table gives ms per call (median [min, max]), ms per
image, the ratio to :data:`BASELINE_TASK` at the same size and batch size in the same run (rows are grouped by size
and batch size, the baseline first) and the peak memory. ``--methods fast,direct`` adds the blurs' reference
arithmetic. Tasks whose operator cannot be built (nonlinear_blur without its checkpoint) are skipped and listed.
Written to ``results/benchmark/<device>-<commit>- operators.csv`` and ``.md`` unless ``--out`` says otherwise.

Not timed: building the model, the measurements, the sampler and the generators; timed: ``sampler.sample``,
bracketed by device synchronisations. GPU runs that hit the 10-minute limit of a session can be split with
``--samplers`` / ``--variants``; the CSV is rewritten after every row, so a run cut short keeps what it measured.

The table is printed and written to ``--out`` (CSV, one self-describing row per measurement: device, torch
version, precision flags, git commit) and beside it as Markdown (``.md``) for the README; the default file name
(``results/benchmark/<device>-<commit>.csv``) has no spaces or parentheses.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import commands.configs  # noqa: F401  (loads the sampler packages)
from common.config.compose import CONFIG_DIR, NoConfig, resolved_config
from common.data.operator_state import split_operator_config
from common.errors import ConfigError, SettingError
from common.evaluation.tables import aligned, csv_text, markdown
from common.models import build_model
from common.models.acceleration import accelerate
from common.models.base import DiffusionModel
from common.models.checkpoints import CheckpointError
from common.models.precision import PRECISIONS
from common.operators import build_operator
from common.operators.base import Operator
from common.operators.convolution import METHODS
from common.operators.measurement import draw_states, simulate
from common.random import make_generator, rand
from common.registry import SAMPLERS
from common.results.provenance import git_state
from common.sampling import Sampler, build_sampler, check_combination
from common.sampling.counting import count_calls

REPO = CONFIG_DIR.parent
SEED = 0
TASK = "down_sampling"
#: the model a sampler is benchmarked on: the first of these whose space it runs in
MODELS_BY_SPACE = (("pixel", "ffhq256ddpm"), ("latent", "ffhq256ldm"))
#: model calls the default timed steps aim at (k = the fewest outer steps that make this many, at least 2)
TIMED_CALLS = 10

#: small architectures for CPU runs and tests: ADM on 32² images; LDM on 16² images, latents 3 × 8 × 8
TINY_MODELS: dict[str, dict[str, Any]] = {
    "ddpm": {"resolution": 32, "model_config": {
        "image_size": 32, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2,2", "learn_sigma": True,
        "attention_resolutions": "16,8", "num_heads": 4, "num_head_channels": 16, "use_scale_shift_norm": True,
        "resblock_updown": True}},
    "ldm": {"resolution": 16, "unet_config": {
        "in_channels": 3, "out_channels": 3, "model_channels": 32, "attention_resolutions": [2],
        "num_res_blocks": 1, "channel_mult": [1, 2], "num_head_channels": 16},
        "first_stage_config": {"embed_dim": 3, "n_embed": 64, "ddconfig": {
            "double_z": False, "z_channels": 3, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}},
}

#: dense datasheet peaks in TFLOP/s by device-name fragment (first match wins); fp32 means TF32 tensor cores
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0}),
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0}),
)
VARIANT_FLAGS = ("channels_last", "compile")
#: writing ``5`` here resets the process's peak RSS (Linux ≥ 4.0): a CPU row measures its own peak
CLEAR_REFS = Path("/proc/self/clear_refs")
CSV_FIELDS = ("sampler", "model", "size", "precision", "channels_last", "compile", "batch", "steps_timed",
              "steps_full", "repeats", "status", "s_per_image", "s_per_image_min", "s_per_image_max", "nfe_per_image",
              "nfe_per_s", "decoder_evals_per_image", "gflop_per_image", "achieved_tflops", "peak_tflops",
              "bound_s_per_image", "fraction_of_bound", "peak_mem_gb", "mem_kind", "device", "torch", "cuda",
              "cudnn_tf32", "matmul_tf32", "float32_matmul_precision", "git_commit", "git_dirty", "timestamp",
              "load_average")
#: operator rows (``--operators``): the task each row is compared with, at the same resolution and batch size
BASELINE_TASK = "down_sampling"
#: a timed repeat of an operator row makes calls for at least this long (a fast operator takes well under 1 ms)
REPEAT_SECONDS = 0.2
OPERATOR_FIELDS = ("task", "method", "resolution", "batch", "calls_per_repeat", "repeats", "status", "ms_per_call",
                   "ms_per_call_min", "ms_per_call_max", "ms_per_image", "ratio_to_baseline", "peak_mem_gb",
                   "mem_kind", "device", "torch", "cuda", "git_commit", "git_dirty", "timestamp", "load_average")


# ---------------------------------------------------------------------------------------------- cases
@dataclasses.dataclass
class Case:
    """One benchmarked sampler: its registry name, the model config it runs on and its composed config."""

    sampler: str
    model_yaml: str
    config: dict[str, Any]  # the resolved run config (sampler, model, task of the selected group)

    @property
    def task_group(self) -> str:
        return self.config["task_group"]


def model_for(sampler: str) -> str:
    """The model config a sampler is benchmarked on (:data:`MODELS_BY_SPACE`)."""
    spaces = SAMPLERS.get(sampler).spaces
    return next(model for space, model in MODELS_BY_SPACE if space in spaces)


def make_case(sampler: str, size: str) -> Case:
    """The sampler's config composed on its model and :data:`TASK` (:class:`~common.config.compose.NoConfig`)."""
    model_yaml = model_for(sampler)
    model = resolved_config([f"model={model_yaml}"])["model"]
    resolution = TINY_MODELS[model["name"]]["resolution"] if size == "tiny" else model["resolution"]
    config = resolved_config([f"sampler={sampler}", f"model={model_yaml}", f"task={TASK}",
                              f"data.resolution={resolution}"])
    return Case(sampler, model_yaml, config)


def model_config(case: Case, size: str, precision: str) -> dict[str, Any]:
    """Model registry kwargs: the composed model block or the tiny architecture, random weights, ``precision``."""
    cfg = dict(case.config["model"])
    if size == "tiny":
        cfg = {"name": cfg["name"], **TINY_MODELS[cfg["name"]]}
    elif size != "full":
        raise ValueError(f"size={size!r} is not valid; valid: tiny, full")
    return {**cfg, "checkpoint": None, "allow_random_weights": True, "precision": precision}


# ---------------------------------------------------------------------------------------------- counting
class FlopCounter(TorchDispatchMode):
    """Counts FLOPs (2 per multiply–add) of matmuls, convolutions and attention, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


# ---------------------------------------------------------------------------------------------- running
@dataclasses.dataclass
class Problem:
    """A batch of measurements y = A(x) + n and the per-sample generators of the sampler."""

    operator: Operator
    y: torch.Tensor
    seeds: list[int]

    def generators(self, device: torch.device) -> list[torch.Generator]:
        return [make_generator(SEED, i, 0, device=device) for i in self.seeds]


def make_operator(case: Case, device: torch.device) -> Operator:
    """The case's operator as the run builds it (its task group's operator block)."""
    params, _ = split_operator_config(case.config["task"][case.task_group]["operator"])
    return build_operator(**params).to(device)


def make_problem(case: Case, model: DiffusionModel, batch: int, device: torch.device) -> Problem:
    """Random images in [−1, 1] measured by the case's operator (per-sample generators, states and noise)."""
    operator = make_operator(case, device)
    seeds = list(range(batch))
    x = 2 * rand(model.image_shape, [make_generator(SEED, i, "image") for i in seeds]).to(device) - 1
    states = draw_states(operator, [make_generator(SEED, i, "operator") for i in seeds])
    y = simulate(operator, x, states, [make_generator(SEED, i, "noise", device=device) for i in seeds])
    return Problem(operator, y, seeds)


class _Stop(Exception):
    """Raised by the callback to end a sampler run after the outer steps to be timed."""


def run_steps(sampler: Sampler, model: DiffusionModel, problem: Problem, steps: int | None, device: torch.device,
              on_step: Callable[[dict[str, Any]], None] = lambda state: None) -> int:
    """Run ``sampler`` for ``steps`` outer steps (None: all of them), calling ``on_step(state)`` after each;
    returns N, the sampler's number of outer steps (from the callback state)."""
    total = [0]

    def callback(state: dict[str, Any]) -> None:
        total[0] = int(state["num_steps"])
        on_step(state)
        if steps is not None and state["step"] + 1 >= steps:
            raise _Stop

    try:
        sampler.sample(model, problem.operator, problem.y, generators=problem.generators(device), callback=callback)
    except _Stop:
        pass
    return total[0]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Profile:
    """Per-image counts: N outer steps, the part per outer step and the initial part (before the first step)."""

    steps_full: int
    flops_fixed: float
    flops_step: float
    nfe_fixed: float
    nfe_step: float
    decode_step: float

    def timed_steps(self, quick: bool) -> int:
        """Default k: 2 (quick), else the fewest steps with about :data:`TIMED_CALLS` model calls, at least 2."""
        k = 2 if quick or self.nfe_step <= 0 else max(2, math.ceil(TIMED_CALLS / self.nfe_step))
        return min(k, self.steps_full)


def profile(sampler: Sampler, model: DiffusionModel, problem: Problem, device: torch.device) -> Profile:
    """Counted FLOPs and calls of an eager batch-1 run of three outer steps: the difference between the
    counters at the ends of the last two steps is one step; the first step's excess is the initial part."""
    counter, snapshots = FlopCounter(), []
    with count_calls(model) as calls, counter:
        full = run_steps(sampler, model, problem, 3, device,
                         on_step=lambda _: snapshots.append((counter.flops, calls["nfe"], calls["decode"])))
    if not snapshots:
        raise RuntimeError(f"{type(sampler).__name__} never called its callback: the benchmark counts and times "
                           f"outer steps through callback(state), once per step (common/sampling/seam.py)")
    (f1, n1, d1), (f2, n2, d2) = ([(0, 0, 0)] + snapshots)[-2:]  # a one-step schedule: that step is all
    (f0, n0, _) = snapshots[0]
    return Profile(steps_full=full, flops_fixed=f0 - (f2 - f1), flops_step=f2 - f1, nfe_fixed=n0 - (n2 - n1),
                   nfe_step=n2 - n1, decode_step=d2 - d1)


def reset_peak_memory(device: torch.device) -> bool:
    """Start one row's peak: the CUDA allocator's peak, or on Linux the process's RSS high-water mark (``5`` written
    to /proc/self/clear_refs resets VmHWM to the current RSS); False where the CPU peak cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_memory_gb(device: torch.device, reset: bool) -> tuple[float, str]:
    """The peak since :func:`reset_peak_memory` (``reset``: whether it could reset) and what the figure is."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30, "cuda max allocated in the row (weights included)"
    if reset:
        status = Path("/proc/self/status").read_text()
        kilobytes = int(re.search(r"^VmHWM:\s*(\d+) kB", status, re.MULTILINE).group(1))
        return kilobytes / 2 ** 20, "process peak RSS in the row (interpreter, libraries and weights included)"
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "process peak RSS so far (not resettable here: the running maximum, not the row's own)")


def time_case(case: Case, sampler: Sampler, model: DiffusionModel, batch: int, steps: int | None, repeats: int,
              device: torch.device) -> tuple[list[float], float, str]:
    """Wall times of ``repeats`` runs of ``steps`` outer steps after one warm-up run, and the peak memory.

    Measurements and generators are made before the clock starts: the time is the sampling loop."""
    problem = make_problem(case, model, batch, device)
    run_steps(sampler, model, problem, steps, device)  # warm-up (and compilation)
    synchronize(device)
    reset = reset_peak_memory(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run_steps(sampler, model, problem, steps, device)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return (times, *peak_memory_gb(device, reset))


# ---------------------------------------------------------------------------------------------- reporting
def peak_tflops(device_name: str, precision: str) -> float | None:
    """Datasheet dense peak of a known GPU at ``precision``, else None."""
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in device_name:
            return peaks[precision]
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor() or platform.machine())
    return f"CPU {model} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict[str, Any]:
    """The device and precision flags of this run, and the git state (:func:`common.results.provenance.git_state`)."""
    git = git_state()
    return {"device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda or "",
            "cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "git_commit": (git.commit or "unknown")[:12], "git_dirty": bool(git.dirty),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "load_average": " ".join(f"{load:.2f}" for load in os.getloadavg())}  # 1, 5, 15 minutes


def file_stem(text: str) -> str:
    """``text`` as a file name: runs of anything but letters, digits, ``.``, ``_`` and ``-`` become one ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def default_out(env: Mapping[str, Any]) -> Path:
    """``results/benchmark/<device>-<commit>.csv``, the device name without its thread count."""
    return REPO / "results" / "benchmark" / f"{file_stem(env['device'].split(' (')[0])}-{env['git_commit']}.csv"


def parse_variant(spec: str) -> dict[str, Any]:
    """``bf16+channels_last+compile`` -> precision and flags."""
    precision, *flags = spec.split("+")
    if precision not in PRECISIONS or any(f not in VARIANT_FLAGS for f in flags):
        raise ValueError(f"variant {spec!r} is not valid; valid: a precision ({', '.join(PRECISIONS)}) followed by "
                         f"any of {', '.join('+' + f for f in VARIANT_FLAGS)}")
    return {"precision": precision, **{f: f in flags for f in VARIANT_FLAGS}}


def measure(case: Case, sampler: Sampler, variant: dict[str, Any], size: str, batch: int, steps: int,
            repeats: int, device: torch.device, model: DiffusionModel, prof: Profile,
            peak: float | None) -> dict[str, Any]:
    """One table row (status ``ok`` or ``OOM``)."""
    full = prof.steps_full
    row: dict[str, Any] = {"sampler": case.sampler, "model": case.model_yaml, "size": size, **variant,
                           "batch": batch, "steps_timed": steps, "steps_full": full, "repeats": repeats,
                           "nfe_per_image": prof.nfe_fixed + prof.nfe_step * full,
                           "decoder_evals_per_image": prof.decode_step * full,
                           "gflop_per_image": (prof.flops_fixed + full * prof.flops_step) / 1e9,
                           "peak_tflops": peak}
    try:
        times, memory, mem_kind = time_case(case, sampler, model, batch, None if steps >= full else steps, repeats,
                                            device)
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {**row, "status": "OOM"}
    per_image = [t / batch * full / steps for t in times]
    median = statistics.median(per_image)
    bound = row["gflop_per_image"] * 1e9 / (peak * 1e12) if peak else None
    return {**row, "status": "ok", "s_per_image": median, "s_per_image_min": min(per_image),
            "s_per_image_max": max(per_image), "nfe_per_s": row["nfe_per_image"] / median,
            "achieved_tflops": row["gflop_per_image"] / median / 1e3, "bound_s_per_image": bound,
            "fraction_of_bound": bound / median if bound else None, "peak_mem_gb": memory, "mem_kind": mem_kind}


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None or value == "":
        return "n/a"
    return format(value, spec) if isinstance(value, float) else str(value)


def variant_label(row: Mapping[str, Any]) -> str:
    return "+".join([row["precision"]] + [f for f in VARIANT_FLAGS if row[f]])


def range_cell(row: Mapping[str, Any], key: str) -> str:
    """``median [min, max]`` of a timing ``key`` (with its ``_min``/``_max`` siblings), or the row's status."""
    if row["status"] != "ok":
        return row["status"]
    return f"{row[key]:.3g} [{row[key + '_min']:.3g}, {row[key + '_max']:.3g}]"


#: a table's columns: (heading, how a row's cell reads)
Columns = tuple[tuple[str, Callable[[Mapping[str, Any]], str]], ...]

TABLE_COLUMNS: Columns = (
    ("sampler", lambda r: r["sampler"]),
    ("model", lambda r: f"{r['model']} {r['size']}"),
    ("variant", variant_label),
    ("batch", lambda r: str(r["batch"])),
    ("steps", lambda r: f"{r['steps_timed']}/{r['steps_full']}"),
    ("model calls/image", lambda r: _fmt(r["nfe_per_image"], ".4g")),
    ("s/image [min, max]", lambda r: range_cell(r, "s_per_image")),
    ("bound s/image", lambda r: _fmt(r.get("bound_s_per_image"))),
    ("% of bound", lambda r: "n/a" if r.get("fraction_of_bound") is None else f"{100 * r['fraction_of_bound']:.1f}"),
    ("NFE/s", lambda r: _fmt(r.get("nfe_per_s"), ".4g")),
    ("TFLOP/s", lambda r: _fmt(r.get("achieved_tflops"))),
    ("GFLOP/image", lambda r: f"{r['gflop_per_image']:.4g}"),
    ("peak mem GB", lambda r: _fmt(r.get("peak_mem_gb"))),
)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Columns = TABLE_COLUMNS, as_markdown: bool = False
                 ) -> str:
    """The rows as an aligned text table (or a Markdown table) of ``columns`` (the sampler table's by default)."""
    header = [name for name, _ in columns]
    body = [[cell(r) for _, cell in columns] for r in rows]
    return markdown(header, body) if as_markdown else aligned(header, body)


def environment_note(env: Mapping[str, Any]) -> str:
    """The device, versions, precision flags, commit, time and CPU load of a run, in one sentence."""
    return (f"Device: {env['device']}; torch {env['torch']} (CUDA {env['cuda'] or '-'}); commit {env['git_commit']}"
            f"{' (uncommitted changes)' if env['git_dirty'] else ''}; cuDNN TF32 {env['cudnn_tf32']}, matmul TF32 "
            f"{env['matmul_tf32']}; {env['timestamp']}; load average {env['load_average']}.")


def print_summary(table: str, skipped: Mapping[str, str], out: Path) -> None:
    """The finished table on the terminal, what was skipped and why, and where the files are."""
    print("\n" + table)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    print(f"\nwritten: {out} and {out.with_suffix('.md')}")


def write_files(out: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str], env: Mapping[str, Any],
                note: str, table: str, skipped: Mapping[str, str]) -> None:
    """CSV (every row with the environment) and the Markdown ``table`` beside it, after ``note``, with what was
    skipped and why."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(csv_text([{**env, **row} for row in rows], fields))
    skips = "".join(f"- {name}: {why}\n" for name, why in skipped.items())
    out.with_suffix(".md").write_text(note + "\n\n" + table + (f"\nSkipped:\n\n{skips}" if skips else ""))


def write_outputs(rows: Sequence[Mapping[str, Any]], skipped: Mapping[str, str], env: Mapping[str, Any],
                  out: Path) -> None:
    """The sampler table's CSV and Markdown (with the skipped samplers)."""
    memory = rows[0].get("mem_kind", "") if rows else ""
    note = (f"{environment_note(env)} Task {TASK}. s/image: median over repeats, extrapolated from the timed steps to "
            f"the full schedule; bound: counted FLOPs / datasheet peak; memory: {memory}.")
    write_files(out, rows, CSV_FIELDS, env, note, format_table(rows, as_markdown=True), skipped)


# ---------------------------------------------------------------------------------------------- operator rows
def task_names() -> list[str]:
    """Every task config (``configs/task/*.yaml``), :data:`BASELINE_TASK` first."""
    names = sorted(path.stem for path in (CONFIG_DIR / "task").glob("*.yaml"))
    return [BASELINE_TASK] + [name for name in names if name != BASELINE_TASK]


def operator_params(task: str, resolution: int) -> dict[str, Any]:
    """``build_operator`` arguments of the task's operator block as a run composes it at ``resolution``."""
    config = resolved_config([f"task={task}", f"data.resolution={resolution}"])
    params, _ = split_operator_config(config["task"][config["task_group"]]["operator"])
    return params


def time_operator(operator: Operator, batch: int, resolution: int, repeats: int,
                  device: torch.device) -> tuple[list[float], int, float, str]:
    """Seconds per ``operator.gradient(x, y)`` (forward, residual, VJP: one DAPS MCMC step's operator work) on
    ``batch`` random [−1, 1] images with per-image states and noisy measurements y, in ``repeats`` timed runs of
    ``calls`` calls each (enough for :data:`REPEAT_SECONDS`, after an untimed call and one that sizes ``calls``);
    returns (seconds per call per run, calls, peak memory, what it is)."""
    seeds = range(batch)
    x = 2 * rand((3, resolution, resolution), [make_generator(SEED, i, "image") for i in seeds]).to(device) - 1
    states = draw_states(operator, [make_generator(SEED, i, "operator") for i in seeds])
    y = simulate(operator, x, states, [make_generator(SEED, i, "noise", device=device) for i in seeds])

    def seconds(calls: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            operator.gradient(x, y)
        synchronize(device)
        return time.perf_counter() - start

    seconds(1)  # warm-up
    calls = max(1, math.ceil(REPEAT_SECONDS / seconds(1)))
    reset = reset_peak_memory(device)
    times = [seconds(calls) / calls for _ in range(repeats)]
    return (times, calls, *peak_memory_gb(device, reset))


def measure_operator(task: str, method: str, operator: Operator, resolution: int, batch: int, repeats: int,
                     device: torch.device) -> dict[str, Any]:
    """One operator row (status ``ok`` or ``OOM``), without its ratio (:func:`operator_main` adds it)."""
    row: dict[str, Any] = {"task": task, "method": method, "resolution": resolution, "batch": batch,
                           "repeats": repeats}
    try:
        times, calls, memory, mem_kind = time_operator(operator, batch, resolution, repeats, device)
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {**row, "status": "OOM"}
    median = statistics.median(times) * 1e3
    return {**row, "status": "ok", "calls_per_repeat": calls, "ms_per_call": median,
            "ms_per_call_min": min(times) * 1e3, "ms_per_call_max": max(times) * 1e3, "ms_per_image": median / batch,
            "peak_mem_gb": memory, "mem_kind": mem_kind}


OPERATOR_COLUMNS: Columns = (
    ("task", lambda r: r["task"]),
    ("method", lambda r: r["method"] or "-"),
    ("px", lambda r: str(r["resolution"])),
    ("batch", lambda r: str(r["batch"])),
    ("ms/call [min, max]", lambda r: range_cell(r, "ms_per_call")),
    ("ms/image", lambda r: _fmt(r.get("ms_per_image"))),
    (f"× {BASELINE_TASK}", lambda r: _fmt(r.get("ratio_to_baseline"), ".2f")),
    ("peak mem GB", lambda r: _fmt(r.get("peak_mem_gb"))),
)


def write_operator_outputs(rows: Sequence[Mapping[str, Any]], skipped: Mapping[str, str], env: Mapping[str, Any],
                           out: Path) -> None:
    memory = rows[0].get("mem_kind", "") if rows else ""
    note = (f"{environment_note(env)} Operator rows: one call is operator.gradient(x, y) on a batch (forward, "
            f"residual, VJP), median [min, max] over repeats; × {BASELINE_TASK}: against its row of the same size "
            f"and batch in this run; method: the blur setting (- for the other tasks); memory: {memory}.")
    write_files(out, rows, OPERATOR_FIELDS, env, note, format_table(rows, OPERATOR_COLUMNS, as_markdown=True), skipped)


def operator_main(tasks: Sequence[str], methods: Sequence[str], resolutions: Sequence[int], batches: Sequence[int],
                  repeats: int, device: torch.device, env: Mapping[str, Any], out: Path) -> list[dict[str, Any]]:
    """Operator rows, grouped by resolution and batch size (the baseline first in each group, so a ratio compares
    rows measured minutes apart at most); tasks whose operator cannot be built here are skipped and listed."""
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for resolution in resolutions:
        operators: list[tuple[str, str, Operator]] = []
        for task in tasks:
            params = operator_params(task, resolution)
            for method in (methods if "method" in params else [""]):
                try:
                    built = build_operator(**{**params, **({"method": method} if method else {})}).to(device)
                except (CheckpointError, SettingError) as err:
                    skipped[task] = str(err).splitlines()[0]
                    break
                operators.append((task, method, built))
        for batch in batches:
            baseline = None
            for task, method, operator in operators:
                row = measure_operator(task, method, operator, resolution, batch, repeats, device)
                baseline = row if task == BASELINE_TASK else baseline
                if row["status"] == "ok" and baseline is not None and baseline["status"] == "ok":
                    row["ratio_to_baseline"] = row["ms_per_call"] / baseline["ms_per_call"]
                rows.append(row)
                timing = range_cell(rows[-1], "ms_per_call")
                print(f"  {task} {method or '-'} {resolution} px batch {batch}: {timing} ms/call", flush=True)
                write_operator_outputs(rows, skipped, env, out)
    write_operator_outputs(rows, skipped, env, out)
    print_summary(format_table(rows, OPERATOR_COLUMNS), skipped, out)
    return rows


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m commands.benchmark", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 timed steps, 1 repeat")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    parser.add_argument("--batch-sizes", default=None, help="comma list (default 1,10,100 on CUDA, 1,10 on CPU)")
    parser.add_argument("--out", type=Path, default=None, help="CSV path (default results/benchmark/<device>-"
                                                               "<commit>.csv)")
    parser.add_argument("--samplers", default=None, help="comma list of registered samplers (default: all)")
    parser.add_argument("--variants", default=None, help="comma list like fp32,bf16+channels_last+compile "
                        "(default: fp32,bf16+channels_last,bf16+channels_last+compile on CUDA, fp32 on CPU)")
    parser.add_argument("--size", choices=("tiny", "full"), default=None, help="default: full on CUDA, tiny on CPU")
    parser.add_argument("--steps", type=int, default=None, help="outer steps timed per run (default: see above)")
    parser.add_argument("--full-schedule", action="store_true", help="time the whole schedule (slow)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 3, quick 1)")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for +compile variants")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for the bound (unknown GPUs)")
    parser.add_argument("--operators", action="store_true", help="operator rows instead of the sampler table: "
                        "forward + VJP per task, resolution and batch size, and the ratio to down_sampling")
    parser.add_argument("--tasks", default=None, help="--operators: comma list of configs/task names (default: all)")
    parser.add_argument("--resolutions", default="64,256", help="--operators: comma list of image sides")
    parser.add_argument("--methods", default="fast", help="--operators: the blurs' method settings, comma list "
                        "(fast,direct adds the reference's dense correlation: slow at 256 px)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    names = SAMPLERS.names() if args.samplers is None else args.samplers.split(",")
    unknown = [name for name in names if name not in SAMPLERS]
    if unknown:
        raise ValueError(f"unknown samplers {unknown}; valid: {', '.join(SAMPLERS.names())}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps={args.steps}: need at least 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    batches = [int(b) for b in (args.batch_sizes or ("1,10,100" if cuda else "1,10")).split(",")]
    env = environment(device)
    if args.operators:
        tasks = task_names() if args.tasks is None else sorted(args.tasks.split(","), key=lambda t: t != BASELINE_TASK)
        methods = args.methods.split(",")
        unknown = sorted(set(tasks) - set(task_names())) + sorted(set(methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown tasks or methods {unknown}; valid tasks: {', '.join(task_names())}; "
                             f"methods: {', '.join(METHODS)}")
        out = args.out or default_out(env).with_name(default_out(env).stem + "-operators.csv")
        print(f"operator benchmark on {env['device']}, torch {env['torch']}, commit {env['git_commit']}")
        return operator_main(tasks, methods, [int(r) for r in args.resolutions.split(",")], batches,
                             args.repeats or (1 if args.quick else 5), device, env, out)
    size = args.size or ("tiny" if args.quick or not cuda else "full")
    variants = [parse_variant(v) for v in (args.variants or ("fp32,bf16+channels_last,bf16+channels_last+compile"
                                                             if cuda else "fp32")).split(",")]
    repeats = args.repeats or (1 if args.quick else 3)
    out = args.out or default_out(env)
    print(f"benchmark on {env['device']}, torch {env['torch']}, commit {env['git_commit']}; {size} models")
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            case = make_case(name, size)
        except NoConfig:
            skipped[name] = f"no configs/sampler/{name}.yaml"
            continue
        sampler = build_sampler(case.config["sampler"])
        for variant in variants:
            model = build_model(**model_config(case, size, variant["precision"])).to(device)
            try:
                check_combination(name, sampler, model, make_operator(case, device))
            except ConfigError as err:
                skipped[name] = str(err)
                break
            prof = profile(sampler, model, make_problem(case, model, 1, device), device)
            steps = prof.steps_full if args.full_schedule else min(args.steps or prof.timed_steps(args.quick),
                                                                   prof.steps_full)
            accelerate(model, compile=variant["compile"], channels_last=variant["channels_last"],
                       compile_mode=args.compile_mode)
            peak = args.peak_tflops or (peak_tflops(env["device"], variant["precision"]) if cuda else None)
            for batch in batches:
                rows.append(measure(case, sampler, variant, size, batch, steps, repeats, device, model, prof, peak))
                timing = range_cell(rows[-1], "s_per_image")
                print(f"  {name} {variant_label(rows[-1])} batch {batch}: {timing} s/image", flush=True)
                write_outputs(rows, skipped, env, out)  # after every row: a run cut short keeps what it measured
            del model
            if cuda:
                torch.cuda.empty_cache()
    write_outputs(rows, skipped, env, out)
    print_summary(format_table(rows), skipped, out)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
