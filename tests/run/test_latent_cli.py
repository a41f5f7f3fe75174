"""Latent DAPS from the CLI (``+sampler=latent_edm_daps task_group=ldm``, ``+sampler=sd_edm_daps task_group=sd``)
end to end on tiny models built here: a tiny LDM checkpoint through the real ``ffhq256ldm`` / ``imagenet256ldm``
configs (``ldm_tiny.py``) and a tiny Stable Diffusion folder through ``stable-diffusion-v1.5`` (``sd_tiny.py``).

The run directory must have the pixel-space layout, with decoded samples and progress frames at the target
resolution; the ImageNet class token, SD's prompt and guidance scale must reach the samples; ``batch_size`` is
the number of samples per sampler call.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from common.config.validate import validate
from common.errors import ConfigError
from common.run import job
from daps.sampler import DAPS
from tests.helpers.cli import compose_config
from tests.helpers.ldm_tiny import model_overrides, write_checkpoint
from tests.helpers.sd_tiny import build_tiny_sd

RES = 32  # images; tiny LDM latents 3x8x8, tiny SD latents 4x8x8 at inner resolution 16
STEPS = ["sampler.annealing_scheduler_config.num_steps=3", "sampler.diffusion_scheduler_config.num_steps=1"]
COMMON = [f"data.resolution={RES}", "data.end_id=2", "num_runs=1", "eval_fn_list=[psnr,ssim]", "show_progress=false",
          "trajectory_points=10", "batch_size=10", *STEPS]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assets")
    return {"ldm": write_checkpoint(root / "ldm_tiny.ckpt"),
            "cin": write_checkpoint(root / "cin_tiny.ckpt", conditional=True),
            "sd": build_tiny_sd(root / "sd_tiny")}


def ldm_args(assets: dict[str, Path]) -> list[str]:
    return ["+model=ffhq256ldm", "+sampler=latent_edm_daps", "task_group=ldm",
            "task.ldm.mcmc_sampler_config.num_steps=2", *model_overrides(assets["ldm"])]


def cin_args(assets: dict[str, Path]) -> list[str]:
    return ["+model=imagenet256ldm", "+sampler=latent_edm_daps", "task_group=ldm",
            "task.ldm.mcmc_sampler_config.num_steps=2", *model_overrides(assets["cin"], conditional=True)]


def sd_args(assets: dict[str, Path]) -> list[str]:
    return ["+model=stable-diffusion-v1.5", "+sampler=sd_edm_daps", "task_group=sd",
            "task.sd.mcmc_sampler_config.num_steps=2", f"model.model_id={assets['sd']}", "model.inner_resolution=16",
            f"model.resolution={RES}", "model.precision=fp32", "model.local_files_only=true"]


PIXEL_ARGS = ["+model=demo", "+sampler=edm_daps", "task_group=pixel", "task.pixel.mcmc_sampler_config.num_steps=2"]


def run(root: Path, name: str, args: list[str]) -> tuple[int, Path]:
    cfg = compose_config([*COMMON, f"save_dir={root}", f"name={name}", *args])
    return job.run(cfg, root / name), root / name


def layout(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


@pytest.fixture(scope="module")
def runs(tmp_path_factory, assets) -> dict[str, tuple[int, Path]]:
    root = tmp_path_factory.mktemp("runs")
    return {"pixel": run(root, "pixel", PIXEL_ARGS), "ldm": run(root, "ldm", ldm_args(assets)),
            "sd": run(root, "sd", sd_args(assets))}


@pytest.mark.parametrize("which", ["ldm", "sd"])
def test_latent_run_has_the_pixel_layout_at_the_target_resolution(runs, which):
    code, run_dir = runs[which]
    pixel_code, pixel_dir = runs["pixel"]
    assert code == 0 and pixel_code == 0
    assert layout(run_dir) == layout(pixel_dir)
    for name in ("config.yaml", "metrics.json", "eval.md", "grid_results.png"):
        assert (run_dir / name).is_file()
    samples = sorted((run_dir / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["00000_run0000.png", "00001_run0000.png"]
    assert all(image_size(p) == (RES, RES) for p in samples)
    # progress frames are decoded images (rows x0hat, x0y, x_t; one column per step), as in pixel space
    frames = sorted((run_dir / "trajectory").glob("*.png"))
    assert frames
    for frame in frames:
        assert image_size(frame) == image_size(pixel_dir / "trajectory" / frame.name)
        assert image_size(frame)[1] >= 3 * 128  # three labelled rows of tiles enlarged to >= 128 px
    assert image_size(run_dir / "grid_results.png") == image_size(pixel_dir / "grid_results.png")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["task_group"] == which and set(saved["task"]) == {"name", which}
    assert saved["sampler"]["name"] == {"ldm": "latent_edm_daps", "sd": "sd_edm_daps"}[which]


@pytest.mark.parametrize("change", ["model.guidance_scale=1.0", "model.prompt='a photo of a cat'"])
def test_sd_prompt_and_guidance_scale_reach_the_samples(tmp_path, runs, assets, change):
    code, run_dir = run(tmp_path, "changed", [*sd_args(assets), "save_traj=false", change])
    assert code == 0
    samples = sorted((runs["sd"][1] / "samples").glob("*.png"))
    assert samples
    for sample in samples:
        assert (run_dir / "samples" / sample.name).read_bytes() != sample.read_bytes()


def test_imagenet_ldm_uses_the_unconditional_class_unless_overridden(tmp_path, assets):
    code, default = run(tmp_path, "default", [*cin_args(assets), "save_traj=false"])
    assert code == 0 and yaml.safe_load((default / "config.yaml").read_text())["model"]["class_label"] == 1000
    code, again = run(tmp_path, "again", [*cin_args(assets), "save_traj=false", "model.class_label=1000"])
    code_5, five = run(tmp_path, "five", [*cin_args(assets), "save_traj=false", "model.class_label=5"])
    assert code == code_5 == 0
    samples = sorted((default / "samples").glob("*.png"))
    assert samples
    for sample in samples:
        assert (again / "samples" / sample.name).read_bytes() == sample.read_bytes()
    assert any((five / "samples" / p.name).read_bytes() != p.read_bytes() for p in (default / "samples").iterdir())


def test_batch_size_is_the_number_of_samples_per_sampler_call(tmp_path, assets, monkeypatch):
    calls = []
    sample = DAPS.sample

    def spy(self, model, operator, y, **kwargs):
        calls.append((len(y), len(kwargs["generators"]), tuple(model.sample_shape)))
        return sample(self, model, operator, y, **kwargs)

    monkeypatch.setattr(DAPS, "sample", spy)
    code, run_dir = run(tmp_path, "batches", [*ldm_args(assets), "num_runs=3", "batch_size=4", "save_traj=false"])
    # the first call is the dry first step on one sample (common.run.experiment.first_step_diverges)
    assert code == 0 and calls == [(1, 1, (3, 8, 8)), (4, 4, (3, 8, 8)), (2, 2, (3, 8, 8))]
    assert len(list((run_dir / "samples").glob("*.png"))) == 6


@pytest.mark.parametrize("model, sampler, group", [
    ("ffhq256ldm", "latent_edm_daps", "ldm"), ("imagenet256ldm", "latent_edm_daps", "ldm"),
    ("stable-diffusion-v1.5", "sd_edm_daps", "sd"), ("stable-diffusion-v2.1", "sd_edm_daps", "sd")])
@pytest.mark.parametrize("task", ["phase_retrieval", "inpainting"])
def test_daps_readme_latent_commands_compose_and_validate(model, sampler, group, task):
    """The spelling of DAPS's commands/ldm_*.sh and commands/sd_*.sh passes validation (checkpoints aside)."""
    cfg = compose_config(["+data=test-ffhq", f"+model={model}", f"+task={task}", f"+sampler={sampler}",
                          f"task_group={group}", "save_dir=results/latent", "num_runs=4",
                          "sampler.diffusion_scheduler_config.num_steps=2",
                          "sampler.annealing_scheduler_config.num_steps=50", "batch_size=10", f"name={task}", "gpu=0"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert validate(resolved) == []
    assert resolved["sampler"]["mcmc_sampler_config"]["mc_algo"] == "hmc"


@pytest.mark.parametrize("model, sampler, group, message", [
    ("ffhq256ldm", "edm_daps", "ldm", r"'edm_daps' cannot run here: it runs on pixel-space models, and this model is "
                                      r"latent-space.*that run .*latent_edm_daps"),
    ("ffhq256ldm", "latent_edm_daps", "pixel", r"task_group='pixel' does not fit model 'ldm'"),
    ("demo", "latent_edm_daps", "pixel", r"it runs on latent-space models, and this model is pixel-space"),
])
def test_mismatched_latent_settings_stop_before_sampling(tmp_path, model, sampler, group, message):
    with pytest.raises(ConfigError, match=message):
        run(tmp_path, "bad", [f"model={model}", f"sampler={sampler}", f"task_group={group}"])
    assert not (tmp_path / "bad").exists()
