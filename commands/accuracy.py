r"""Sampler accuracy against exact posteriors:
``python -m commands.accuracy [--quick] [--samplers A,B] [--out DIR] [--no-doc]``.

With a stationary Gaussian prior (:data:`GAUSS_PRIOR`, the demo prior's class) and a Gaussian-mixture prior on
16×16×3 images the posterior under y = A x + N(0, σ_y² I) is known in closed form
(:mod:`common.evaluation.exact_posterior`), so we
can measure whether a posterior sampler samples it, rather than how close one sample lands to one ground truth.

Problems: the linear tasks at 16×16 with σ_y = 0.05 (×4 down-sampling, an 8×8 box hole, 70 % random
inpainting, a 9×9 Gaussian blur of std 1.5 px) on :data:`GAUSS_PRIOR`; ×4 down-sampling on the CLI's ``gmm``
prior; and a bimodal problem: two components, weights 0.7 / 0.3, equal covariances, means that differ only
inside the box hole, which the measurement therefore cannot tell apart (the exact posterior weights equal
the prior's).

Samplers: exact posterior draws (the Monte-Carlo floor of every metric); hand-tuned DPS (method ps, three step
sizes ζ, two step counts; x̂0 not clipped: the priors are not bounded to [−1, 1]) and DAPS (Langevin, HMC and MH
inner chains at several budgets, its data term exp(−‖A x − y‖²/τ²) with τ = √2 σ_y so that its target is the
true posterior, a per-problem step size); and every sampler registered in ``common.registry.SAMPLERS``, with no
code of its own here: its settings are the real config composed for the problem (``sampler=<name>``,
``model=demo|gmm``, ``task=<the problem's task>``, ``data.resolution=16``, the model's task group), one row at
that budget (``<name>@paper``) and, for a sampler with a top-level ``num_steps``, one with ``num_steps`` chosen
so that it makes about 100 model calls per sample (``<name>@100``; calls measured, not assumed). A sampler that
cannot run on a problem (model space, operator capabilities, its own check) is skipped and listed.
NFE counts model (denoiser) calls per sample (:func:`common.sampling.counting.count_calls`); wall time is
``time.perf_counter`` around building the sampler and sampling, reported only.

Output: one table printed; ``accuracy.csv`` and ``accuracy.md`` (the table with its command, git commit,
legend and skipped samplers) in ``--out``; a full (not ``--quick``) run also copies the latter to
``docs/accuracy.md`` unless ``--no-doc``.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import yaml

from commands.configs import sampler_settings
from common.config.compose import CONFIG_DIR, NoConfig
from common.errors import ConfigError
from common.evaluation.exact_posterior import (
    GaussianMixture,
    dense_operator,
    linear_gaussian_posterior,
    prior_mixture,
    sample_metrics,
)
from common.evaluation.tables import aligned, csv_text, markdown
from common.models import build_model
from common.models.base import DiffusionModel
from common.models.gmm import GaussianMixturePrior
from common.models.latent_view import IdentityAutoencoder
from common.operators import build_operator
from common.operators.base import Operator
from common.operators.measurement import draw_states, simulate
from common.random import make_generator
from common.registry import SAMPLERS
from common.results.provenance import git_state
from common.sampling import build_sampler, check_combination, unsupported
from common.sampling.counting import count_calls

REPO = CONFIG_DIR.parent
METRICS = ("mean_rmse", "mean_z", "std_ratio", "w2", "mode_tv", "diverged")
COLUMNS = ("problem", "sampler", "nfe", "vjp", "wall_s", *METRICS)
SKIP_COLUMNS = ("sampler", "problems", "reason")
RESOLUTION, SIGMA_Y = 16, 0.05
#: model calls per sample of the ``<name>@100`` rows
CALL_BUDGET = 100


# ---------------------------------------------------------------------------------------------------- problems
@dataclass
class Problem:
    """One measurement y of one prior through one linear operator, with its exact posterior.

    ``model_config`` / ``task``: the CLI's model and task configs the problem stands for (the registered samplers'
    settings are composed from them)."""

    name: str
    model: DiffusionModel
    operator: Operator
    y: torch.Tensor            # (1, …) measurement
    sigma_y: float
    model_config: str = "demo"
    task: str = "down_sampling"
    exact: GaussianMixture = field(init=False)
    matrix_norm2: float = field(init=False)   # ‖A‖₂², largest eigenvalue of AᵀA

    def __post_init__(self) -> None:
        matrix = dense_operator(self.operator, self.model.sample_shape)
        self.exact = linear_gaussian_posterior(prior_mixture(self.model), matrix, self.y, self.sigma_y)
        self.matrix_norm2 = float(torch.linalg.matrix_norm(matrix, ord=2)) ** 2


def cli_model_params(name: str, resolution: int) -> dict[str, Any]:
    """The model block of ``configs/model/<name>.yaml`` at ``resolution`` (the CLI's own prior)."""
    params = yaml.safe_load((CONFIG_DIR / "model" / f"{name}.yaml").read_text())
    params["resolution"] = resolution
    return params


#: The prior of the ``gauss/*`` problems: a stationary 1/f^α Gaussian (``model=demo``'s class) with the parameters
#: fitted on 256-px centre crops of the four demo images and the periodic (DFT) boundary. Stated here rather than
#: read from ``configs/model/demo.yaml`` so that the problems, and the values measured on them in
#: ``docs/accuracy.md``, ``docs/baselines.md`` and ``tests/baselines/``, stay fixed when the demo's prior is refitted.
GAUSS_PRIOR = {"name": "gaussian_demo", "boundary": "periodic", "mean": [0.001, -0.2652, -0.3577],
               "variance": [0.597, 0.1404, 0.0064], "alpha": [2.9823, 3.0044, 2.2795],
               "color_basis": [[-0.643, -0.6804, 0.3515], [-0.5939, 0.1531, -0.7899], [-0.4836, 0.7166, 0.5025]],
               "f0": 0.01}


def gauss_prior_params(resolution: int) -> dict[str, Any]:
    """The model block of :data:`GAUSS_PRIOR` at ``resolution``."""
    return {**GAUSS_PRIOR, "resolution": resolution}


def _box_mask(resolution: int, side: int) -> torch.Tensor:
    """A centred side×side hole (False = missing), shape (1, n, n): one image's inpainting state."""
    mask = torch.ones(resolution, resolution, dtype=torch.bool)
    lo = (resolution - side) // 2
    mask[lo:lo + side, lo:lo + side] = False
    return mask[None]


def bimodal_prior(resolution: int, side: int = 8, amplitude: float = 0.5) -> GaussianMixturePrior:
    """Two components of :data:`GAUSS_PRIOR`'s covariance, weights 0.7 / 0.3, means μ ± a·u₁ inside the centred
    ``side``-px box (u₁ the luminance direction) and equal outside it."""
    demo = gauss_prior_params(resolution)
    base = torch.tensor(demo["mean"]).reshape(3, 1, 1).expand(3, resolution, resolution)
    luminance = torch.tensor(demo["color_basis"])[:, 0].reshape(3, 1, 1)
    inside = (~_box_mask(resolution, side)).float()
    covariance = {"variance": demo["variance"], "alpha": demo["alpha"]}
    components = [{"weight": w, "mean": (base + s * amplitude * luminance * inside).tolist(), **covariance}
                  for w, s in ((0.7, 1.0), (0.3, -1.0))]
    return GaussianMixturePrior(resolution, components, color_basis=demo["color_basis"], f0=demo["f0"])


#: accuracy task -> (the CLI task config it stands for, its operator at 16×16)
TASKS = {
    "down_sampling": ("down_sampling", dict(name="down_sampling", scale_factor=4)),
    "inpainting_box": ("inpainting", dict(name="inpainting", mask_type="box", mask_len_range=[8, 9])),
    "inpainting_rand": ("inpainting_rand", dict(name="inpainting", mask_type="random", mask_prob_range=[0.7, 0.71])),
    "gaussian_blur": ("gaussian_blur", dict(name="gaussian_blur", kernel_size=9, intensity=1.5)),
}
PROBLEMS = tuple(f"gauss/{task}" for task in TASKS) + ("gmm/down_sampling", "gmm/bimodal_box")
QUICK_PROBLEMS = ("gauss/down_sampling", "gmm/bimodal_box")


def build_problem(name: str, seed: int = 0, resolution: int = RESOLUTION, sigma_y: float = SIGMA_Y) -> Problem:
    """Problem ``name`` of :data:`PROBLEMS` (module docstring), its ground truth and noise drawn from ``seed``."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown accuracy problem {name!r}; valid: {', '.join(PROBLEMS)}")
    prior, task = name.split("/")
    noise = [make_generator(seed, name, "noise")]
    if task == "bimodal_box":  # the hole hides exactly where the two components differ
        model = bimodal_prior(resolution)
        operator = build_operator(sigma=sigma_y, resolution=resolution, **TASKS["inpainting_box"][1])
        x = model.means[:1] + model.covariances[0].sample([make_generator(seed, name, "x")])
        y = simulate(operator, x, [{"mask": _box_mask(resolution, 8)}], noise)
        return Problem(name, model, operator, y, sigma_y, "gmm", TASKS["inpainting_box"][0])
    config = "demo" if prior == "gauss" else "gmm"   # the CLI model whose sampler settings the problem uses
    model = build_model(**(gauss_prior_params(resolution) if prior == "gauss" else cli_model_params("gmm", resolution)))
    task_config, operator_params = TASKS[task]
    operator = build_operator(sigma=sigma_y, resolution=resolution, **operator_params)
    states = draw_states(operator, [make_generator(seed, name, "state")])
    y = simulate(operator, model.sample([make_generator(seed, name, "x")]), states, noise)
    return Problem(name, model, operator, y, sigma_y, config, task_config)


# ---------------------------------------------------------------------------------------------------- samplers
class Skip(Exception):
    """This sampler configuration does not run on this problem (the message says why)."""


@dataclass(frozen=True)
class SamplerSpec:
    """One row's sampler: ``name`` in SAMPLERS (or ``exact``) and its settings.

    ``from_config``: start from ``configs/sampler/<name>.yaml`` composed for the problem's model and task;
    ``params``: settings on top (or, without ``from_config``, all of them); ``calls``: set the top-level
    ``num_steps`` so that the sampler makes about this many model calls per sample (:func:`steps_for_calls`),
    skipped when that is the config's own ``num_steps`` and ``beside_own`` (the config's row is in the table);
    ``step_fraction`` (DAPS): the MCMC step size is set per problem by :func:`daps_step_size`.
    """

    label: str
    name: str
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    from_config: bool = False
    calls: int | None = None
    beside_own: bool = False
    step_fraction: float | None = None

    def resolve(self, problem: Problem) -> dict[str, Any]:
        """The sampler block for ``problem`` (:func:`common.sampling.build_sampler` takes it); :class:`Skip`."""
        if self.from_config:
            model = model_for(self.name, problem)
            problem_why = unsupported(SAMPLERS.get(self.name), model, problem.operator)
            if problem_why:
                raise Skip(problem_why)
            try:
                settings = sampler_settings(self.name, model=problem.model_config, task=problem.task,
                                            resolution=RESOLUTION, task_group="ldm" if model.latent else None)
            except NoConfig:
                raise Skip(f"no configs/sampler/{self.name}.yaml") from None
        else:
            settings = {"name": self.name}
        settings = {**settings, **self.params}
        if self.step_fraction is not None:
            mcmc = dict(settings["mcmc_sampler_config"])
            mcmc["lr"] = daps_step_size(problem.matrix_norm2, mcmc["tau"],
                                        settings["annealing_scheduler_config"]["sigma_min"], self.step_fraction)
            settings["mcmc_sampler_config"] = mcmc
        if self.calls is not None:
            if not isinstance(settings.get("num_steps"), int):
                raise Skip("no top-level num_steps to set a budget with")
            steps = steps_for_calls(problem, settings, self.calls)
            if self.beside_own and steps == settings["num_steps"]:
                raise Skip(f"its own budget already is about {self.calls} model calls (the @paper row)")
            settings["num_steps"] = steps
        return settings


def model_for(name: str, problem: Problem) -> DiffusionModel:
    """The problem's prior as sampler ``name`` needs it: behind an identity autoencoder for latent-only samplers
    (:class:`~common.models.latent_view.IdentityAutoencoder`: the same exact posterior)."""
    spaces = SAMPLERS.get(name).spaces if name in SAMPLERS else {"pixel"}
    return IdentityAutoencoder(problem.model) if "pixel" not in spaces else problem.model


def calls_per_sample(problem: Problem, settings: Mapping[str, Any]) -> float:
    """Model calls per sample of one sampler run (batch 1) with these settings."""
    sampler = build_sampler(settings)
    with count_calls(problem.model) as counts:
        sampler.sample(model_for(settings["name"], problem), problem.operator, problem.y,
                       generators=[make_generator(0, "count")])
    return float(counts["nfe"])


def steps_for_calls(problem: Problem, settings: Mapping[str, Any], calls: int) -> int:
    """``num_steps`` whose run makes about ``calls`` model calls per sample: the calls c(k) = a + b·k of runs with
    k = 2 and 4 steps (measured) give k = round((calls − a) / b), at least 1."""
    c2, c4 = (calls_per_sample(problem, {**settings, "num_steps": k}) for k in (2, 4))
    per_step = (c4 - c2) / 2
    if per_step <= 0:
        raise Skip(f"its model calls do not grow with num_steps ({c2:g} at 2 steps, {c4:g} at 4)")
    return max(1, round((calls - (c2 - 2 * per_step)) / per_step))


def daps_step_size(matrix_norm2: float, tau: float, sigma_min: float, fraction: float) -> float:
    """η = fraction · 2/L with L = 2‖A‖²/τ² + 1/σ_min², the largest curvature of the DAPS inner target
    ‖A x − y‖²/τ² + ‖x − x̂0‖²/(2σ_t²) (2/L: the stability limit of a gradient step)."""
    return fraction * 2 / (2 * matrix_norm2 / tau ** 2 + 1 / sigma_min ** 2)


def daps_spec(label: str, anneal: int, ode: int, mcmc: dict[str, Any], sigma_y: float,
              step_fraction: float = 0.1) -> SamplerSpec:
    """DAPS with ``anneal`` annealing steps (σ 100 → 0.1), ``ode`` PF-ODE steps, τ = √2 σ_y, the Gaussian
    approximation of p(x0 | x_t) and a per-problem step size (:func:`daps_step_size`)."""
    return SamplerSpec(label, "edm_daps", {
        "annealing_scheduler_config": {"num_steps": anneal, "sigma_max": 100, "sigma_min": 0.1, "timestep": "poly-7"},
        "diffusion_scheduler_config": {"num_steps": ode, "sigma_min": 0.01, "timestep": "poly-7"},
        "mcmc_sampler_config": {"tau": math.sqrt(2) * sigma_y, "prior_solver": "gaussian", "lr": 0.0, **mcmc}},
        step_fraction=step_fraction)


def dps_spec(steps: int, scale: float) -> SamplerSpec:
    """DPS (ps) with ``steps`` respaced DDPM steps and step size ζ = ``scale``, x̂0 not clipped."""
    return SamplerSpec(f"DPS-{steps} ζ={scale:g}", "dps", {"timestep_respacing": str(steps), "method": "ps",
                                                           "scale": scale, "clip_denoised": False})


LANGEVIN = {"mc_algo": "langevin", "num_steps": 10, "lr_min_ratio": 1.0}
HMC = {"mc_algo": "hmc", "num_steps": 10, "lr_min_ratio": 1.0, "momentum": 0.5}
MH = {"mc_algo": "mh", "num_steps": 10, "lr_min_ratio": 1.0}


def mmps_spec(cg_iterations: int) -> SamplerSpec:
    """MMPS with 100 steps (100 model calls) and ``cg_iterations`` CG iterations per step, the rest its defaults."""
    return SamplerSpec(f"MMPS-100 K={cg_iterations}", "mmps", {"num_steps": 100, "cg_iterations": cg_iterations})


def fps_smc_spec(particles: int, steps: int = 100) -> SamplerSpec:
    """FPS-SMC with ``steps`` DDIM steps and M = ``particles`` particles per sample (c = 0.95, its config's);
    M·steps model calls per sample, memory per sample ∝ M."""
    return SamplerSpec(f"FPS-SMC-{steps} M={particles}", "fps_smc",
                       {"num_steps": steps, "num_particles": particles, "c_rate": 0.95})


def tuned_specs(quick: bool = False, sigma_y: float = SIGMA_Y) -> list[SamplerSpec]:
    """Exact draws, DPS at three ζ and two step counts, DAPS-100/1K/4K (Langevin), DAPS-1K with HMC and MH, MMPS-100
    with 2 and 3 CG iterations (its config's 1 is the ``mmps@paper`` row), FPS-SMC-100 with M = 1, 4, 16, 64 particles.

    DAPS-N: N = annealing steps × PF-ODE steps model calls (100 = 50×2, 1K = 200×5, 4K = 200×20); the MCMC
    steps (10 per annealing step, ``prior_solver=gaussian``) call no model.
    """
    if quick:
        return [SamplerSpec("exact", "exact"), dps_spec(50, 0.3),
                daps_spec("DAPS-50 LGV", 25, 2, {**LANGEVIN, "num_steps": 5}, sigma_y)]
    return [SamplerSpec("exact", "exact"),
            dps_spec(100, 0.1), dps_spec(100, 0.3), dps_spec(100, 1.0), dps_spec(1000, 0.3),
            daps_spec("DAPS-100 LGV", 50, 2, LANGEVIN, sigma_y),
            daps_spec("DAPS-1K LGV", 200, 5, LANGEVIN, sigma_y),
            daps_spec("DAPS-4K LGV", 200, 20, LANGEVIN, sigma_y),
            daps_spec("DAPS-1K HMC", 200, 5, HMC, sigma_y),
            daps_spec("DAPS-1K MH", 200, 5, MH, sigma_y),
            mmps_spec(2), mmps_spec(3),
            *(fps_smc_spec(m) for m in (1, 4, 16, 64))]


def registered_specs(quick: bool = False, names: Sequence[str] | None = None) -> list[SamplerSpec]:
    """Every registered sampler (or those of ``names``) from its config: at its own budget and at
    :data:`CALL_BUDGET` model calls (``quick``: the latter only)."""
    specs = []
    for name in SAMPLERS.names() if names is None else names:
        if not quick:
            specs.append(SamplerSpec(f"{name}@paper", name, from_config=True))
        specs.append(SamplerSpec(f"{name}@{CALL_BUDGET}", name, from_config=True, calls=CALL_BUDGET,
                                 beside_own=not quick))
    return specs


def sampler_grid(quick: bool = False, sigma_y: float = SIGMA_Y, names: Sequence[str] | None = None
                 ) -> list[SamplerSpec]:
    """The rows of the table: :func:`tuned_specs`, then :func:`registered_specs` (of ``names``; None: all)."""
    return tuned_specs(quick, sigma_y) + registered_specs(quick, names)


# --------------------------------------------------------------------------------------------------- measuring
def run_one(problem: Problem, spec: SamplerSpec, num_samples: int, seed: int = 0) -> dict[str, Any]:
    """Draw ``num_samples`` posterior samples in one batch; the row of the table for this pair (:class:`Skip`)."""
    generators = [make_generator(seed, problem.name, spec.label, i) for i in range(num_samples)]
    settings = None if spec.name == "exact" else spec.resolve(problem)
    start = time.perf_counter()
    with count_calls(problem.model) as counts:
        if settings is None:
            samples = problem.exact.sample(generators)
        else:
            sampler, model = build_sampler(settings), model_for(spec.name, problem)
            try:
                check_combination(spec.name, sampler, model, problem.operator)
            except ConfigError as err:
                raise Skip(str(err)) from None
            y = problem.y.expand(num_samples, *problem.y.shape[1:])
            samples = sampler.sample(model, problem.operator, y, generators=generators).samples
    wall = time.perf_counter() - start
    metrics = sample_metrics(samples, problem.exact)
    nfe, vjp = (counts[key] / num_samples for key in ("nfe", "vjp"))
    return {"problem": problem.name, "sampler": spec.label, "nfe": int(nfe) if nfe.is_integer() else nfe,
            "vjp": int(vjp) if vjp.is_integer() else vjp, "wall_s": wall,
            **{k: metrics.get(k, float("nan")) for k in METRICS}}


def run_problem(name: str, specs: Sequence[SamplerSpec], num_samples: int, seed: int = 0,
                threads: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Every sampler of ``specs`` on problem ``name`` (one worker's job; ``threads`` sets torch's CPU threads):
    the rows, and the skipped configurations (problem, sampler, reason)."""
    if threads is not None:
        torch.set_num_threads(threads)
    problem = build_problem(name, seed)
    rows, skipped = [], []
    for spec in specs:
        try:
            rows.append(run_one(problem, spec, num_samples, seed))
        except Skip as why:
            skipped.append({"problem": name, "sampler": spec.label, "reason": str(why)})
    return rows, skipped


def run_benchmark(names: Sequence[str], specs: Sequence[SamplerSpec], num_samples: int, seed: int = 0,
                  jobs: int = 1, threads: int = 1, progress: Callable[[dict[str, Any]], None] | None = None
                  ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Every (problem, sampler) pair, problem-major; problems spread over ``jobs`` processes. Rows and skips."""
    results: dict[str, tuple[list[dict[str, Any]], list[dict[str, str]]]] = {}

    def done(name: str, result: tuple[list[dict[str, Any]], list[dict[str, str]]]) -> None:
        results[name] = result
        for row in result[0] if progress is not None else ():
            progress(row)

    if jobs <= 1:
        for name in names:
            done(name, run_problem(name, specs, num_samples, seed, threads))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(run_problem, name, specs, num_samples, seed, threads): name for name in names}
            for future in as_completed(futures):
                done(futures[future], future.result())
    return ([row for name in names for row in results[name][0]],
            [skip for name in names for skip in results[name][1]])


# ---------------------------------------------------------------------------------------------------- reporting
def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    return markdown(COLUMNS, [[_cell(row[c]) for c in COLUMNS] for row in rows])


def skipped_table(skipped: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """Skips grouped by (sampler, reason), the problems joined."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for skip in skipped:
        grouped.setdefault((skip["sampler"], skip["reason"]), []).append(skip["problem"])
    return [{"sampler": s, "problems": ", ".join(p), "reason": r} for (s, r), p in grouped.items()]


LEGEND = """\
Columns (per problem and sampler, over n samples drawn in one batch; D = 768 pixels):

- `nfe`: denoiser (model) calls per sample, forward; `vjp`: backward passes through the denoiser per sample (the
  gradients of DPS, ΠGDM, MMPS and PSLD; each costs about one more forward pass); `wall_s`: seconds for the whole
  batch (reported, not asserted).
- `mean_rmse`: ‖x̄ − m‖/√D, sample mean against the exact posterior mean m.
- `mean_z`: sqrt(mean_i (x̄_i − m_i)²/C_ii), the same in posterior-std units; an exact sampler gives ≈ 1/√n.
- `std_ratio`: mean_i ŝ_i/√C_ii, sample over exact per-pixel std (1 calibrated, < 1 over-confident).
- `w2`: Bures 2-Wasserstein distance between the Gaussian fits N(x̄, Ĉ) and N(m, C), divided by √D.
- `mode_tv`: mixtures only, total variation between the exact posterior weights and the fraction of samples
  whose most probable exact component is k.
- `diverged`: fraction of samples with non-finite values (left out of the metrics).

The `exact` rows draw from the exact posterior: their values are the Monte-Carlo floor at this n.
DAPS targets the posterior with τ = √2 σ_y (its data term is exp(−‖Ax − y‖²/τ²)); DAPS-N counts
annealing × PF-ODE steps (100 = 50×2, 1K = 200×5, 4K = 200×20; σ from 100 to 0.1), each annealing step
running 10 MCMC steps with the Gaussian approximation p(x0 | x_t) ≈ N(x̂0, σ_t² I) (`prior_solver=gaussian`,
no model calls) and a constant step size η = 0.1 · 2/L, L = 2‖A‖²/τ² + 1/σ_min² (a tenth of the stability
limit, per problem). DPS runs method ps with step size ζ on the plain residual norm ‖y − A x̂0‖, x̂0
unclipped; it has no notion of σ_y. MMPS-100 K=k: `sampler=mmps` (100 steps, η = 1) with k conjugate-gradient
iterations per step instead of its config's 1 (the paper's Sec. 3.2: "a few"); 100 forward and 100 (k + 1)
backward passes per sample.

`<name>@paper` rows run each registered sampler with its config as the CLI composes it for the problem's
model and task (`model=demo|gmm`, `task=...`, `data.resolution=16`, task group `gaussian`); `<name>@100` rows
the same with `num_steps` set so that the measured model calls per sample are about 100. Samplers that do not
run on a problem are listed below the table with the reason.
"""


#: the calibration goal: per-pixel std within 10 % of the exact one, mean within 0.2 posterior stds, ≤ 100 calls
CALIBRATED = {"std_ratio": (0.9, 1.1), "mean_z": 0.2, "nfe": 100}


def calibration_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per Gaussian/mixture problem: the samplers that meet :data:`CALIBRATED`, and each sampler's dispersion at its
    cheapest row (under: std ratio < 0.9, over: > 1.1), computed from the table's rows."""
    low, high = CALIBRATED["std_ratio"]
    lines = [f"Calibrated at ≤ {CALIBRATED['nfe']} model calls ({low} ≤ std_ratio ≤ {high} and mean_z ≤ "
             f"{CALIBRATED['mean_z']}; model calls are forward network evaluations, `nfe`, as papers count them; "
             f"the backward passes, `vjp`, are in the table), per problem:", ""]
    for problem in dict.fromkeys(r["problem"] for r in rows):
        mine = [r for r in rows if r["problem"] == problem and r["sampler"] != "exact"]
        good = [r["sampler"] for r in mine if 0 < r["nfe"] <= CALIBRATED["nfe"] and low <= r["std_ratio"] <= high
                and r["mean_z"] <= CALIBRATED["mean_z"]]
        under = sorted({r["sampler"] for r in mine if r["std_ratio"] < low})
        over = sorted({r["sampler"] for r in mine if r["std_ratio"] > high})
        lines.append(f"- `{problem}`: {', '.join(good) or '**none**'}; under-dispersed (std_ratio < {low}): "
                     f"{', '.join(under) or 'none'}; over-dispersed (> {high}): {', '.join(over) or 'none'}")
    return "\n".join(lines) + "\n"


def document(rows: Sequence[dict[str, Any]], skipped: Sequence[Mapping[str, str]], command: str,
             num_samples: int, wall: float) -> str:
    """``docs/accuracy.md``: command, commit, environment, legend, the table and the skipped samplers."""
    skips = skipped_table(skipped)
    return (f"# Sampler accuracy against exact posteriors\n\n"
            f"Generated by `{command}` at commit `{git_state().describe(7)}` on {time.strftime('%Y-%m-%d')} "
            f"(torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} thread(s), "
            f"n = {num_samples} samples per row, {wall:.0f} s in all). Do not edit by hand: rerun the command.\n\n"
            f"Problems: 16×16×3 images, σ_y = {SIGMA_Y}; `gauss/*` the stationary Gaussian `GAUSS_PRIOR` of "
            f"`commands/accuracy.py` (the demo prior's class, periodic boundary, with its sampler settings), "
            f"`gmm/down_sampling` the CLI's `model=gmm`, `gmm/bimodal_box` two components that differ only "
            f"inside the box hole (posterior weights 0.7 / 0.3, the measurement cannot tell them apart).\n\n"
            f"{LEGEND}\n{calibration_summary(rows)}\n{markdown_table(rows)}"
            + (f"\nSkipped:\n\n{markdown(SKIP_COLUMNS, [[s[c] for c in SKIP_COLUMNS] for s in skips])}"
               if skips else ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="two problems, 64 samples, three tuned rows and the registered samplers at 100 calls only")
    parser.add_argument("--out", default="results/accuracy", help="folder for accuracy.csv and accuracy.md")
    parser.add_argument("--samples", type=int, default=None, help="samples per row (default 256; quick: 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: fastest for these small batches and stable timings)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes, one problem each at a time")
    parser.add_argument("--no-doc", action="store_true", help="do not replace docs/accuracy.md after a full run")
    parser.add_argument("--samplers", default=None,
                        help="comma list of registered samplers given rows of their own (default: all)")
    parser.add_argument("--rows", default=None,
                        help="comma list of row-label prefixes to keep (e.g. exact,FPS-SMC; default: every row)")
    args = parser.parse_args(argv)
    names = None if args.samplers is None else args.samplers.split(",")
    unknown = [name for name in names or () if name not in SAMPLERS]
    if unknown:
        parser.error(f"--samplers: unknown {', '.join(unknown)}; registered: {', '.join(SAMPLERS.names())}")
    num_samples = args.samples or (64 if args.quick else 256)
    if num_samples < 2:
        parser.error(f"--samples={num_samples}: need at least 2 samples for a standard deviation")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    problems = QUICK_PROBLEMS if args.quick else PROBLEMS
    progress = lambda row: print(f"  {row['problem']:<20} {row['sampler']:<15} mean_z {row['mean_z']:7.3f}  "
                                 f"std_ratio {row['std_ratio']:6.3f}  w2 {row['w2']:6.4f}  {row['wall_s']:6.1f} s",
                                 flush=True)
    grid = sampler_grid(args.quick, names=names)
    if args.rows is not None:
        grid = [spec for spec in grid if spec.label.startswith(tuple(args.rows.split(",")))]
    rows, skipped = run_benchmark(problems, grid, num_samples, seed=args.seed,
                                  jobs=args.jobs, threads=args.threads, progress=progress)
    wall = time.perf_counter() - start
    table = markdown_table(rows)
    print(table)
    skips = skipped_table(skipped)
    if skips:
        print("skipped:\n" + aligned(SKIP_COLUMNS, [[s[c] for c in SKIP_COLUMNS] for s in skips]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m commands.accuracy" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    text = document(rows, skipped, command, num_samples, wall)
    (out / "accuracy.csv").write_text(csv_text(rows, COLUMNS))
    (out / "accuracy.md").write_text(text)
    if not args.quick and not args.no_doc:
        (REPO / "docs").mkdir(exist_ok=True)
        (REPO / "docs" / "accuracy.md").write_text(text)
    print(f"wrote {out / 'accuracy.csv'}, {out / 'accuracy.md'} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
