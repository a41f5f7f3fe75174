r"""Throughput benchmark (an entry point, like ``posterior_sample.py``: it reads ``configs/`` and writes files).

    python -m common.benchmark                      # CUDA if available (full-size models), else tiny models on CPU
    python -m common.benchmark --quick              # tiny models, few steps: < 1 min on a laptop CPU
    python -m common.benchmark --device cuda --batch-sizes 1,10,100 --variants fp32,bf16+channels_last+compile

Cases, each built by registry name exactly as ``posterior_sample.py`` builds it (samplers after
``importlib.import_module("daps" / "dps")``: ``common`` never imports them statically), on the task
``down_sampling`` (×4 super-resolution), with random weights:

* ``daps``        DAPS-1K (200 annealing × 5 PF-ODE steps, Langevin MCMC of the ``pixel`` group), ffhq256ddpm;
* ``latent_daps`` latent DAPS (50 × 2, the reference's LDM runs; HMC of the ``ldm`` group), ffhq256ldm;
* ``dps``         DPS-1000 (method ``ps``), ffhq256ddpm;

``--size full`` uses those architectures at 256²; ``--size tiny`` small ones (ADM at 32², LDM at 16²; the CPU
default).

What is measured, per (case, variant, batch size B): the sampler run on k outer steps (``--steps``; the full
schedule with ``--full-schedule``), after one untimed warm-up run (which also compiles), ``--repeats`` times;
the median and the spread (min, max) of the wall time t_k, and

    seconds per image  = t_k / B · N / k                     (N the full schedule's outer steps)
    NFE/s              = denoiser evaluations of the k steps · B / t_k
    FLOP per image     = F_fixed + N · F_step  (counted, not estimated: matmul/conv/attention FLOPs of the
                         forward and backward passes, torch.utils.flop_counter formulas, in an eager batch-1
                         run of a few steps, F_step read between the last two steps)
    bound              = FLOP per image / peak FLOP/s of the device at the variant's precision
    fraction of bound  = bound / seconds per image

The peak is the dense tensor-core datasheet figure (fp32 → TF32, which cuDNN uses for convolutions by default;
``--peak-tflops`` for other devices). A multiply–add counts 2 FLOPs: the ffhq256ddpm UNet costs 388 GFLOP per
256² forward pass; DPS's backward pass to the input costs about one more forward (no weight gradients).
Peak memory is ``torch.cuda.max_memory_allocated`` (weights included) on CUDA, the process's peak RSS on CPU.

Not timed: building the model, the measurements, the sampler and the generators; timed: ``sampler.sample``
with no callback (no progress bar, no per-step metrics), bracketed by device synchronisations. GPU runs that
hit the 10-minute limit of a session can be split with ``--cases`` / ``--variants``; the CSV is rewritten after
every row, so a run cut short keeps what it measured.

The table is printed and written to ``--out`` (CSV, one self-describing row per measurement: device, torch
version, precision flags, git commit) and beside it as Markdown (``.md``) for the README.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from common.acceleration import accelerate
from common.models import build_model
from common.models.base import DiffusionModel
from common.operators import build_operator
from common.random import make_generator, rand
from common.registry import SAMPLERS

REPO = Path(__file__).resolve().parents[1]
SEED = 0

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
PRECISIONS = ("fp32", "bf16", "fp16")
VARIANT_FLAGS = ("channels_last", "compile")
CSV_FIELDS = ("case", "sampler", "model", "size", "precision", "channels_last", "compile", "batch", "steps_timed",
              "steps_full", "repeats", "status", "s_per_image", "s_per_image_min", "s_per_image_max", "nfe_per_image",
              "nfe_per_s", "decoder_evals_per_image", "gflop_per_image", "achieved_tflops", "peak_tflops",
              "bound_s_per_image", "fraction_of_bound", "peak_mem_gb", "mem_kind", "device", "torch", "cuda",
              "cudnn_tf32", "matmul_tf32", "float32_matmul_precision", "git_commit", "git_dirty", "timestamp")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmarked sampler: its registry name, config files and full-size model."""

    key: str
    label: str
    sampler: str
    sampler_yaml: str
    model_yaml: str
    task_group: str
    schedule_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: fewest outer steps the sampler accepts (DPS's learned-range variance needs two DDPM steps)
    min_steps: int = 1

    def full_steps(self) -> int:
        return outer_steps(self.sampler_config())

    def sampler_config(self, steps: int | None = None) -> dict[str, Any]:
        """Registry kwargs of the sampler (yaml + task block + overrides); ``steps`` outer steps if given."""
        cfg = load_yaml(f"sampler/{self.sampler_yaml}.yaml")
        task_key = cfg.pop("task_params", None)
        for key in ("name", "latent"):
            cfg.pop(key, None)
        if task_key:
            cfg[task_key] = task_group(self.task_group)[task_key]
        for key, value in self.schedule_overrides.items():
            cfg["annealing_scheduler_config" if key == "annealing_steps" else "diffusion_scheduler_config"][
                "num_steps"] = value
        if steps is not None:
            if "annealing_scheduler_config" in cfg:
                cfg["annealing_scheduler_config"]["num_steps"] = steps
            else:
                cfg["num_steps"], cfg["timestep_respacing"] = steps, None
        return cfg


CASES: dict[str, Case] = {case.key: case for case in (
    Case("daps", "DAPS-1K pixel", "edm_daps", "edm_daps", "ffhq256ddpm", "pixel"),
    Case("latent_daps", "LatentDAPS-100", "latent_edm_daps", "edm_daps", "ffhq256ldm", "ldm",
         {"annealing_steps": 50, "ode_steps": 2}),
    Case("dps", "DPS-1000", "dps", "dps", "ffhq256ddpm", "pixel", min_steps=2),
)}


def load_yaml(relative: str) -> dict[str, Any]:
    """A config file as Hydra reads it (OmegaConf's YAML: ``1e-4`` is a float), interpolations unresolved."""
    return OmegaConf.to_container(OmegaConf.load(REPO / "configs" / relative))


def task_group(group: str) -> dict[str, Any]:
    return load_yaml("task/down_sampling.yaml")[group]


def outer_steps(sampler_config: Mapping[str, Any]) -> int:
    """N: annealing steps (DAPS) or DDPM steps (DPS) of a sampler config."""
    if "annealing_scheduler_config" in sampler_config:
        return int(sampler_config["annealing_scheduler_config"]["num_steps"])
    return int(sampler_config["num_steps"])


def model_config(case: Case, size: str, precision: str) -> dict[str, Any]:
    """Model registry kwargs: the full-size yaml or the tiny architecture, random weights, ``precision``."""
    cfg = load_yaml(f"model/{case.model_yaml}.yaml")
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


@contextmanager
def count_calls(model: DiffusionModel) -> Iterator[dict[str, int]]:
    """Per-sample calls of the denoiser (``tweedie`` / ``ddpm_output``) and of ``decode`` while inside."""
    counts = {"nfe": 0, "decode": 0}

    def counted(name: str, key: str) -> Callable[..., Any]:
        method = getattr(model, name)

        def wrapper(x: torch.Tensor, *args: Any) -> Any:
            counts[key] += x.shape[0]
            return method(x, *args)
        return wrapper

    names = {"tweedie": "nfe", "ddpm_output": "nfe"} | ({"decode": "decode"} if model.latent else {})
    for name, key in names.items():
        setattr(model, name, counted(name, key))
    try:
        yield counts
    finally:
        for name in names:
            delattr(model, name)


# ---------------------------------------------------------------------------------------------- running
@dataclasses.dataclass
class Problem:
    """A batch of measurements y = A(x) + n and the per-sample generators of the sampler."""

    operator: Any
    y: torch.Tensor
    seeds: list[int]

    def generators(self, device: torch.device) -> list[torch.Generator]:
        return [make_generator(SEED, i, 0, device=device) for i in self.seeds]


def make_problem(case: Case, model: DiffusionModel, batch: int, device: torch.device) -> Problem:
    """Random images in [−1, 1] (per-sample generators) measured by the case's operator."""
    params = dict(task_group(case.task_group)["operator"], resolution=model.image_shape[-1])
    operator = build_operator(**params).to(device)
    seeds = list(range(batch))
    x = 2 * rand(model.image_shape, [make_generator(SEED, i, "image") for i in seeds]).to(device) - 1
    y = operator.measure(x, [make_generator(SEED, i, "noise", device=device) for i in seeds])
    return Problem(operator, y, seeds)


def run_sampler(case: Case, model: DiffusionModel, problem: Problem, steps: int, device: torch.device,
                callback: Callable[[dict[str, Any]], None] | None = None) -> None:
    sampler = SAMPLERS.build(case.sampler, **case.sampler_config(steps))
    sampler.sample(model, problem.operator, problem.y, generators=problem.generators(device), callback=callback)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Profile:
    """Per-image counts: the fixed part (initial draw, final decode) and the part per outer step."""

    flops_fixed: float
    flops_step: float
    nfe_step: float
    decode_step: float


def profile(case: Case, model: DiffusionModel, device: torch.device) -> Profile:
    """Counted FLOPs and calls of an eager batch-1 run of s + 1 outer steps, s = ``case.min_steps``.

    The sampler's callback, called at the end of every outer step, snapshots the counters: the difference
    between the last two snapshots is one step; the total minus (s + 1) steps is the fixed part.
    """
    problem = make_problem(case, model, 1, device)
    counter, snapshots = FlopCounter(), []
    with count_calls(model) as calls, counter:
        run_sampler(case, model, problem, case.min_steps + 1, device,
                    callback=lambda _: snapshots.append((counter.flops, calls["nfe"], calls["decode"])))
        total = counter.flops
    (f1, n1, d1), (f2, n2, d2) = snapshots[-2:]
    return Profile(flops_fixed=total - len(snapshots) * (f2 - f1), flops_step=f2 - f1, nfe_step=n2 - n1,
                   decode_step=d2 - d1)


def peak_memory_gb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30, "cuda max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "process peak RSS"


def time_case(case: Case, model: DiffusionModel, batch: int, steps: int, repeats: int,
              device: torch.device) -> tuple[list[float], float, str]:
    """Wall times of ``repeats`` sampler calls after one warm-up call, and the peak memory during them.

    Sampler, measurements and generators are made before the clock starts: the time is the sampling loop.
    """
    problem = make_problem(case, model, batch, device)
    sampler = SAMPLERS.build(case.sampler, **case.sampler_config(steps))
    generators = [problem.generators(device) for _ in range(repeats + 1)]
    sampler.sample(model, problem.operator, problem.y, generators=generators.pop())  # warm-up (and compilation)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for gens in generators:
        synchronize(device)
        start = time.perf_counter()
        sampler.sample(model, problem.operator, problem.y, generators=gens)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return (times, *peak_memory_gb(device))


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


def git_state() -> tuple[str, bool]:
    """(commit, working tree has changes), read-only git queries; ("unknown", False) outside a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, dirty


def environment(device: torch.device) -> dict[str, Any]:
    commit, dirty = git_state()
    return {"device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda or "",
            "cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(), "git_commit": commit,
            "git_dirty": dirty, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}


def parse_variant(spec: str) -> dict[str, Any]:
    """``bf16+channels_last+compile`` -> precision and flags."""
    precision, *flags = spec.split("+")
    if precision not in PRECISIONS or any(f not in VARIANT_FLAGS for f in flags):
        raise ValueError(f"variant {spec!r} is not valid; valid: a precision ({', '.join(PRECISIONS)}) followed by "
                         f"any of {', '.join('+' + f for f in VARIANT_FLAGS)}")
    return {"precision": precision, **{f: f in flags for f in VARIANT_FLAGS}}


def measure(case: Case, variant: dict[str, Any], size: str, batch: int, steps: int, repeats: int,
            device: torch.device, model: DiffusionModel, prof: Profile, peak: float | None) -> dict[str, Any]:
    """One table row (status ``ok`` or ``OOM``)."""
    full = case.full_steps()
    row: dict[str, Any] = {"case": case.label, "sampler": case.sampler, "model": case.model_yaml, "size": size,
                           **variant, "batch": batch, "steps_timed": steps, "steps_full": full, "repeats": repeats,
                           "nfe_per_image": prof.nfe_step * full,
                           "decoder_evals_per_image": prof.decode_step * full,
                           "gflop_per_image": (prof.flops_fixed + full * prof.flops_step) / 1e9,
                           "peak_tflops": peak}
    try:
        times, memory, mem_kind = time_case(case, model, batch, steps, repeats, device)
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {**row, "status": "OOM"}
    per_image = [t / batch * full / steps for t in times]
    median = statistics.median(per_image)
    bound = row["gflop_per_image"] * 1e9 / (peak * 1e12) if peak else None
    return {**row, "status": "ok", "s_per_image": median, "s_per_image_min": min(per_image),
            "s_per_image_max": max(per_image), "nfe_per_s": prof.nfe_step * full / median,
            "achieved_tflops": row["gflop_per_image"] / median / 1e3, "bound_s_per_image": bound,
            "fraction_of_bound": bound / median if bound else None, "peak_mem_gb": memory, "mem_kind": mem_kind}


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None or value == "":
        return "n/a"
    return format(value, spec) if isinstance(value, float) else str(value)


def variant_label(row: Mapping[str, Any]) -> str:
    return "+".join([row["precision"]] + [f for f in VARIANT_FLAGS if row[f]])


def seconds_cell(row: Mapping[str, Any]) -> str:
    if row["status"] != "ok":
        return row["status"]
    return f"{row['s_per_image']:.3g} [{row['s_per_image_min']:.3g}, {row['s_per_image_max']:.3g}]"


TABLE_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("case", lambda r: r["case"]),
    ("size", lambda r: r["size"]),
    ("variant", lambda r: variant_label(r)),
    ("batch", lambda r: str(r["batch"])),
    ("steps", lambda r: f"{r['steps_timed']}/{r['steps_full']}"),
    ("s/image [min, max]", seconds_cell),
    ("bound s/image", lambda r: _fmt(r.get("bound_s_per_image"))),
    ("% of bound", lambda r: "n/a" if r.get("fraction_of_bound") is None else f"{100 * r['fraction_of_bound']:.1f}"),
    ("NFE/s", lambda r: _fmt(r.get("nfe_per_s"), ".4g")),
    ("TFLOP/s", lambda r: _fmt(r.get("achieved_tflops"))),
    ("GFLOP/image", lambda r: f"{r['gflop_per_image']:.4g}"),
    ("peak mem GB", lambda r: _fmt(r.get("peak_mem_gb"))),
)


def format_table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """The rows as an aligned text table (or a Markdown table)."""
    header = [name for name, _ in TABLE_COLUMNS]
    body = [[cell(r) for _, cell in TABLE_COLUMNS] for r in rows]
    if markdown:
        lines = [header, ["---"] * len(header), *body]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(str(x)) for x in column) for column in zip(header, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [header, *body])


def write_outputs(rows: Sequence[dict[str, Any]], env: Mapping[str, Any], out: Path) -> None:
    """CSV (every row with the environment) and the Markdown table beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**env, **row})
    memory = rows[0].get("mem_kind", "") if rows else ""
    note = (f"Device: {env['device']}; torch {env['torch']} (CUDA {env['cuda'] or '-'}); commit {env['git_commit']}"
            f"{' (uncommitted changes)' if env['git_dirty'] else ''}; cuDNN TF32 {env['cudnn_tf32']}, matmul TF32 "
            f"{env['matmul_tf32']}; {env['timestamp']}. s/image: median over repeats, extrapolated from the timed "
            f"steps to the full schedule; bound: counted FLOPs / datasheet peak; memory: {memory}.")
    out.with_suffix(".md").write_text(note + "\n\n" + format_table(rows, markdown=True) + "\n")


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m common.benchmark", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models, 1 timed step (2 for DPS), 1 repeat")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    parser.add_argument("--batch-sizes", default=None, help="comma list (default 1,10,100 on CUDA, 1,10 on CPU)")
    parser.add_argument("--out", type=Path, default=None, help="CSV path (default results/benchmark/<device>.csv)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--variants", default=None, help="comma list like fp32,bf16+channels_last+compile "
                        "(default: fp32,bf16+channels_last,bf16+channels_last+compile on CUDA, fp32 on CPU)")
    parser.add_argument("--size", choices=("tiny", "full"), default=None, help="default: full on CUDA, tiny on CPU")
    parser.add_argument("--steps", type=int, default=None, help="outer steps timed per run (default per case)")
    parser.add_argument("--full-schedule", action="store_true", help="time the whole schedule (slow)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 3, quick 1)")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for +compile variants")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for the bound (unknown GPUs)")
    return parser.parse_args(argv)


#: outer steps timed per run: (default, --quick)
DEFAULT_STEPS = {"daps": (2, 1), "latent_daps": (1, 1), "dps": (10, 2)}


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    importlib.import_module("daps")  # registers the DAPS samplers
    importlib.import_module("dps")  # registers the DPS samplers
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    size = args.size or ("tiny" if args.quick or not cuda else "full")
    batches = [int(b) for b in (args.batch_sizes or ("1,10,100" if cuda else "1,10")).split(",")]
    variants = [parse_variant(v) for v in (args.variants or ("fp32,bf16+channels_last,bf16+channels_last+compile"
                                                             if cuda else "fp32")).split(",")]
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        raise ValueError(f"unknown cases {unknown}; valid: {', '.join(CASES)}")
    repeats = args.repeats or (1 if args.quick else 3)
    env = environment(device)
    out = args.out or REPO / "results" / "benchmark" / (
        f"{env['device'].split(' (')[0].replace(' ', '_')}-{env['git_commit']}.csv")
    print(f"benchmark on {env['device']}, torch {env['torch']}, commit {env['git_commit']}; {size} models")
    rows: list[dict[str, Any]] = []
    for key in args.cases.split(","):
        case = CASES[key]
        steps = case.full_steps() if args.full_schedule else (args.steps or DEFAULT_STEPS[key][args.quick])
        for variant in variants:
            cfg = model_config(case, size, variant["precision"])
            model = build_model(**cfg).to(device)
            prof = profile(case, model, device)
            accelerate(model, compile=variant["compile"], channels_last=variant["channels_last"],
                       compile_mode=args.compile_mode)
            peak = args.peak_tflops or (peak_tflops(env["device"], variant["precision"]) if cuda else None)
            for batch in batches:
                rows.append(measure(case, variant, size, batch, steps, repeats, device, model, prof, peak))
                row = rows[-1]
                print(f"  {case.label} {variant_label(row)} batch {batch}: {seconds_cell(row)} s/image", flush=True)
                write_outputs(rows, env, out)  # after every row: a run cut short keeps what it measured
            del model
            if cuda:
                torch.cuda.empty_cache()
    print("\n" + format_table(rows))
    print(f"\nwritten: {out} and {out.with_suffix('.md')}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
