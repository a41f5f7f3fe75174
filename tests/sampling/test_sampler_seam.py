"""The sampler seam from the CLI: the README's "Adding a sampler" example runs as written, and every misspelled or
misdirected setting stops the run before sampling with a message naming its full key path."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from common.config import compose
from common.errors import ConfigError
from tests.helpers.cli import compose_config, run_cli
from tests.helpers.fixtures import REPO


def readme_files(section: str) -> dict[str, str]:
    """``{path: code}`` of the code blocks in a README section, each announced by a line holding its `path`."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^`([^`\n]+)`\n```\w*\n(.*?)^```", body, flags=re.M | re.S)
    assert blocks, f"no announced code blocks in README section {section!r}"
    return {path: code for path, code in blocks}


@pytest.mark.slow
@pytest.mark.parametrize("section, files, overrides", [
    ("Adding a sampler", {"baselines/ddim_projection.py", "configs/sampler/ddim_projection.yaml"},
     ["sampler=ddim_projection", "sampler.num_steps=5"]),
    ("Adding a task", {"common/operators/colorization.py", "configs/task/colorization.yaml"},
     ["+task=colorization", "sampler.annealing_scheduler_config.num_steps=5"]),
])
def test_readme_examples_run_as_written(tmp_path, section, files, overrides):
    """Each worked example of the README, its files written into a copy of the repository, runs from the CLI."""
    code = readme_files(section)
    assert set(code) == files
    repo = tmp_path / "repo"
    skipped = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache")
    shutil.copytree(REPO, repo, ignore=lambda folder, names: {*skipped(folder, names),
                                                              *({"results"} & set(names) if folder == str(REPO) else ())})
    for path, text in code.items():
        assert not (repo / path).exists()
        (repo / path).write_text(text)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "posterior_sample.py", *overrides, "data.end_id=2", "num_runs=1",
                           "show_progress=false", "save_traj=false", "eval_fn_list=[psnr]", f"save_dir={out}",
                           "name=example"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "example" / "metrics.json").is_file()
    assert sorted(p.name for p in (out / "example" / "samples").glob("*.png")) == ["00000_run0000.png",
                                                                                  "00001_run0000.png"]


@pytest.mark.parametrize("override, message", [
    ("+sampler.annealing_scheduler_config.num_stpes=3",
     r"unknown setting sampler\.annealing_scheduler_config\.num_stpes=3: .*did you mean 'num_steps'"),
    ("+sampler.mcmc_sampler_config.lrr=1e-4", r"unknown setting sampler\.mcmc_sampler_config\.lrr="),
    ("+task.pixel.mcmc_sampler_config.mc_alog=hmc", r"unknown setting sampler\.mcmc_sampler_config\.mc_alog="),
    ("+sampler.bogus=1", r"unknown setting sampler\.bogus=1: valid keys of sampler: annealing_scheduler_config"),
    ("+model.varience=1", r"unknown setting model\.varience=1: .*did you mean 'variance'"),
    ("+data.resolutoin=8", r"unknown setting data\.resolutoin=8: .*did you mean 'resolution'"),
    ("+task.pixel.operator.scale_factr=2", r"unknown setting task\.GROUP\.operator\.scale_factr=2: .*'scale_factor'"),
    ("task.pixel.mcmc_sampler_config.num_steps=1.5", r"sampler\.mcmc_sampler_config\.num_steps=1\.5 is not valid"),
    ("sampler.annealing_scheduler_config.timestep=poly-0",
     r"sampler\.annealing_scheduler_config\.timestep='poly-0' is not valid"),
    ("sampler.annealing_scheduler_config.sigma_min=200",
     r"sampler\.annealing_scheduler_config\.sigma_min=200 is not valid: need sigma_min < sigma_max = 100"),
])
def test_misspelled_or_bad_settings_stop_before_sampling(tmp_path, override, message):
    group = compose_config([]).task_group  # the group the demo model selects
    override, message = override.replace("task.pixel", f"task.{group}"), message.replace("GROUP", group)
    with pytest.raises(ConfigError, match=message):
        run_cli(tmp_path, [override])
    assert not (tmp_path / "run" / "samples").exists()


def test_overrides_aimed_at_another_task_group_are_refused():
    task = {"pixel": {"operator": {}}, "ldm": {"operator": {}}, "name": "down_sampling"}
    with pytest.raises(ConfigError, match=r"task_group='ldm' is selected.*task\.ldm\.operator\.sigma"):
        compose.check_task_group_overrides(["task.pixel.operator.sigma=0.2"], "ldm", task)
    compose.check_task_group_overrides(["task.ldm.operator.sigma=0.2", "seed=3"], "ldm", task)


def test_only_the_selected_task_group_reaches_config_yaml(tmp_path):
    code, run_dir = run_cli(tmp_path, ["sampler.annealing_scheduler_config.num_steps=2"])
    assert code == 0
    import yaml
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    group = saved["task_group"]
    assert set(saved["task"]) == {"name", group}
    # what the sampler received is in the file, resolved
    assert saved["sampler"]["mcmc_sampler_config"] == saved["task"][group]["mcmc_sampler_config"]


def test_a_sampler_refuses_an_operator_it_is_not_defined_for(tmp_path):
    with pytest.raises(ConfigError, match=r"sampler 'latent_edm_daps' cannot run here: it runs on latent-space "
                                          r"models.*Samplers that run on this model and operator: .*edm_daps"):
        run_cli(tmp_path, ["sampler=latent_edm_daps"])
