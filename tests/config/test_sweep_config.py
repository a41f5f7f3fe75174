"""configs/sweep.yaml: the command a ``wandb agent`` builds from it composes into a valid experiment."""
from __future__ import annotations

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common.config.compose import normalize_group_overrides
from common.config.validate import validate
from tests.helpers.fixtures import REPO

sweep_utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils")
SWEEP = yaml.safe_load((REPO / "configs" / "sweep.yaml").read_text())


def agent_command(values: dict) -> list[str]:
    """The argument list ``wandb agent`` runs for one trial (its macro substitution, wandb_agent.py)."""
    macros = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros.update(interpreter=["python"], program=[SWEEP["program"]], env=["/usr/bin/env"])
    out = []
    for chunk in map(str, sweep_utils.create_sweep_command(SWEEP["command"])):
        out += macros.get(chunk[2:-1], []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return out


@pytest.mark.parametrize("bound", ["min", "max"])
def test_agent_command_composes_into_a_valid_experiment(bound, monkeypatch):
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    values = {k: spec[bound] for k, spec in SWEEP["parameters"].items()}
    command = agent_command(values)
    assert command[:3] == ["/usr/bin/env", "python", "posterior_sample.py"] and (REPO / command[2]).is_file()
    overrides = normalize_group_overrides(command[3:])
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
    assert validate(cfg) == []
    assert cfg["wandb"] is True and cfg["name"] == "sweep/abc123"
    for key, value in values.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == pytest.approx(value), key
    assert cfg["task_group"] == "pixel_hmc" and cfg["num_runs"] == 4


def test_the_optimised_metric_is_a_key_the_tracker_writes():
    assert SWEEP["method"] in ("bayes", "random", "grid")
    metric = SWEEP["metric"]["name"]
    name, _, stat = metric.partition("_")
    assert name in ("psnr", "ssim", "lpips") and stat in ("mean", "std", "best_oracle_mean", "best_residual_mean")
    assert SWEEP["metric"]["goal"] == ("minimize" if name == "lpips" else "maximize")
