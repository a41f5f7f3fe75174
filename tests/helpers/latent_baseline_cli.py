"""Latent baselines (PSLD, ReSample) end to end from the CLI on the tiny LDM (through the real ``ffhq256ldm`` config)
and the tiny Stable Diffusion folder (through ``stable-diffusion-v1.5``), as tests/run/test_latent_cli.py builds
them, with a resume; and the identity-autoencoder Gaussian problem of the latent samplers' closed-form checks."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from PIL import Image

from common.evaluation.exact_posterior import dense_operator, linear_gaussian_posterior, prior_mixture
from common.models.gaussian import GaussianPrior
from common.operators import build_operator
from common.random import make_generator
from common.run import job
from tests.helpers.cli import compose_config
from tests.helpers.fixtures import REPO
from tests.helpers.gaussian_cases import assert_copies_batch_invariant
from tests.helpers.ldm_tiny import model_overrides, write_checkpoint
from tests.helpers.sd_tiny import build_tiny_sd

RES = 32  # images; tiny LDM latents 3x8x8, tiny SD latents 4x8x8 at inner resolution 16


class IdentityLatentGaussian(GaussianPrior):
    """The Gaussian demo prior seen as a latent model whose autoencoder is the identity."""

    latent = True


def demo_prior(cls: type = IdentityLatentGaussian, resolution: int = 8) -> GaussianPrior:
    """The demo prior (configs/model/demo.yaml values) as ``cls`` at ``resolution``."""
    cfg = yaml.safe_load((REPO / "configs" / "model" / "demo.yaml").read_text())
    cfg.pop("name")
    return cls(**{**cfg, "resolution": resolution})


def identity_problem(task: dict, resolution: int = 8, sigma_y: float = 0.05, seed: int = 0):
    """(identity-latent prior, operator with its state, y for a prior draw, exact posterior mean (D,) float64,
    prior mean (D,) float64)."""
    model = demo_prior(IdentityLatentGaussian, resolution)
    operator = build_operator(sigma=sigma_y, resolution=resolution, **task)
    operator.set_state({k: v[None] for k, v in operator.draw_state(make_generator(seed, "state")).items()})
    x = model.sample([make_generator(seed, "x")])
    y = operator.measure(x, [make_generator(seed, "noise")])
    prior = prior_mixture(model)
    exact = linear_gaussian_posterior(prior, dense_operator(operator, model.sample_shape), y, sigma_y)
    return model, operator, y, exact.mean, prior.mean


def tiny_assets(root: Path, sd: bool = True) -> dict[str, Path]:
    """The tiny LDM checkpoint and (unless ``sd=False``: it takes ~10 s) the tiny SD folder, written under ``root``."""
    assets = {"ldm": write_checkpoint(root / "ldm_tiny.ckpt")}
    if sd:
        assets["sd"] = build_tiny_sd(root / "sd_tiny")
    return assets


def latent_args(assets: dict[str, Path], which: str) -> list[str]:
    """Overrides selecting the tiny LDM (``which="ldm"``) or the tiny SD (``"sd"``) and their task group."""
    if which == "ldm":
        return ["model=ffhq256ldm", "task_group=ldm", *model_overrides(assets["ldm"])]
    return ["model=stable-diffusion-v1.5", "task_group=sd", f"model.model_id={assets['sd']}",
            "model.inner_resolution=16", f"model.resolution={RES}", "model.precision=fp32",
            "model.local_files_only=true"]


def latent_run_and_resume(tmp_path: Path, assets: dict[str, Path], which: str, sampler: str, task: str,
                          settings: list[str], capsys) -> dict:
    """``sampler=<sampler> task=<task>`` on the tiny model, 2 images × 2 runs (batches of 3); then one record is
    deleted and the run resumed (only that sample is redone). Returns the resolved sampler block of the saved
    config; checks that the samples are PNGs at the target resolution."""
    overrides = [f"sampler={sampler}", f"task={task}", f"data.resolution={RES}", "data.end_id=2", "batch_size=3",
                 "num_runs=2", "eval_fn_list=[psnr]", "show_progress=false", "save_traj=false",
                 f"save_dir={tmp_path}", "name=run", *latent_args(assets, which), *settings]
    run_dir = tmp_path / "run"
    assert job.run(compose_config(overrides), run_dir) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_samples"] == 4 and not metrics["failed"]
    samples = sorted((run_dir / "samples").glob("*.png"))
    assert len(samples) == 4
    first = samples[0].read_bytes()
    (run_dir / "records" / "00001_run0001.json").unlink()
    assert job.run(compose_config(overrides), run_dir) == 0
    assert "resuming: 3 of 4" in capsys.readouterr().out
    assert samples[0].read_bytes() == first
    with Image.open(samples[0]) as image:
        assert image.size == (RES, RES)
    return OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml").sampler)


def assert_batch_invariant(sampler, task: dict) -> None:
    """On the identity-autoencoder problem of ``task``: a batch of 3 equals its item 1 sampled alone with the same
    generator, and a rerun is bit-identical."""
    model, operator, y, _, _ = identity_problem(task)
    assert_copies_batch_invariant(sampler, model, operator, y)
