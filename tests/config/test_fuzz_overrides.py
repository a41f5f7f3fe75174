"""Fuzzed overrides: every hostile value of every key is run or refused before sampling, never a traceback.

A seeded generator draws (base config, key, value) cases: bases are the default config and one option of each
config group (data, model, task, sampler) on tiny settings; keys are the leaves of the resolved base (top level,
data, model, the selected task group, sampler) plus unknown ones; values are wrong types, nan, inf, negative,
huge, empty, unicode, paths and unresolvable interpolations. Each case goes through the entry point's own
validate-and-build path (:func:`job.run` up to the sampler call, which is replaced by a stop), so
the checks are the ones a user meets. The only exception allowed out is the project's
:class:`~common.errors.ConfigError`, and its message must name the key that was changed.
"""
from __future__ import annotations

import copy
import math
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

from common.errors import ConfigError
from common.run import experiment, job
from tests.helpers.cli import TINY, compose_config

SEED = 20261201
CASES = 300
#: the tiny settings without the DAPS step counts (samplers get their own below)
TINY_COMMON = [o for o in TINY if not o.startswith("sampler.")] + ["wandb_mode=disabled"]
DAPS_STEPS = [o for o in TINY if o.startswith("sampler.")]
#: the task group the default (demo) model selects
TASK_GROUP = compose_config([]).task_group
#: one option of each config group on top of the default (each is kept only if it builds unchanged; see below)
GROUP_OPTIONS = [[*DAPS_STEPS], ["model=gmm", *DAPS_STEPS], ["task=inpainting_rand", *DAPS_STEPS],
                 *([task, f"task.{TASK_GROUP}.operator.kernel_size=5", *DAPS_STEPS]
                   for task in ("task=motion_blur", "task=gaussian_blur")), ["task=hdr", *DAPS_STEPS],
                 ["task=phase_retrieval", *DAPS_STEPS], ["task=inpainting", *DAPS_STEPS],
                 ["sampler=edm_daps", *DAPS_STEPS], ["sampler=dps", "sampler.num_steps=4"],
                 ["data=measurements", *DAPS_STEPS], ["data=demo-ffhq", "data.id_list=null", *DAPS_STEPS],
                 ["model=ffhq256ddpm", *DAPS_STEPS],
                 # every other pixel-space sampler (a few steps) and the remaining operators, so their keys are
                 # fuzzed too (the latent ones, psld and resample, need a latent model: not offline)
                 *([f"sampler={name}", "sampler.num_steps=3"]
                   for name in ("ddnm", "ddrm", "diffpir", "mmps", "pigdm", "reddiff")),
                 ["sampler=dps", "sampler.num_steps=4", "task=inpainting_rand"],
                 ["sampler=diffpir", "sampler.num_steps=3", "task=phase_retrieval"],
                 ["sampler=mmps", "sampler.num_steps=3", "task=gaussian_blur", f"task.{TASK_GROUP}.operator.kernel_size=5"],
                 [*DAPS_STEPS, f"+task.{TASK_GROUP}.operator.noise=poisson", f"+task.{TASK_GROUP}.operator.rate=1.0"]]
HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, -7, 1.5, -2.5, 10 ** 12, 2 ** 63, 1e300, 1e308, math.nan, math.inf, -math.inf, "", " ",
    "abc", "0", [[0.1]], [0, 0, 0, 0], [[1, 0, 0], [1, 0, 0], [0, 0, 1]], [1.0, 1.0],
    "true", "no", "日本語", "é" * 300, "../../fuzz_escape", "/abs/fuzz", "/dev/null", "/proc/nope", "a\nb", "${nope}",
    [], [0.5], [1, 2, 3], [math.nan, 1.0], ["psnr", "psnr"], {"a": 1}, {},
]
UNKNOWN_KEYS = ["fuzz_unknown", "data.fuzz_unknown", "model.fuzz_unknown", "sampler.fuzz_unknown"]


class Built(Exception):
    """Raised in place of sampling: the config was validated and every object built."""


class NonFiniteAccepted(AssertionError):
    """An accepted config whose first sampler step is already NaN/inf: a non-finite product accepted silently."""


def stop_before_sampling(dataset, operator, model, sampler, *args: Any, **kwargs: Any) -> None:
    """In place of the experiment loop: an accepted config must give a finite first step (checked here on its own),
    then sampling stops."""
    if experiment.first_step_diverges(dataset, operator, model, sampler, kwargs["inputs"], seed=kwargs["seed"],
                                      device=kwargs["device"]):
        raise NonFiniteAccepted("accepted, but the first sampler step is already non-finite")
    raise Built


def leaves(config: Any, prefix: str = "") -> list[str]:
    """Key paths of the scalar and list leaves of a plain nested dict."""
    if not isinstance(config, dict) or not config:
        return [prefix]
    return [path for key, value in config.items() for path in leaves(value, f"{prefix}{key}.")] if prefix or \
        config else []


def links(raw: Any, resolved: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(node, source) key paths of the nodes whose value is one interpolation ``${source}`` (an inner
    ``${task_group}`` substituted), e.g. ("model.resolution", "data.resolution")."""
    if isinstance(raw, dict):
        return [link for key, value in raw.items() for link in links(value, resolved, f"{prefix}{key}.")]
    match = re.fullmatch(r"\$\{([\w.]*(?:\$\{\w+\}[\w.]*)*)\}", raw) if isinstance(raw, str) else None
    if not match:
        return []
    source = re.sub(r"\$\{(\w+)\}", lambda inner: str(resolved[inner.group(1)]), match.group(1))
    return [(prefix.rstrip("."), source)]


def key_names(key: str, pairs: list[tuple[str, str]]) -> set[str]:
    """``key`` and the paths it reaches through interpolations (either way): a refusal may name any of them."""
    names = {key}
    for node, source in pairs:
        for a, b in ((source, node), (node, source)):
            if key == a or key.startswith(a + "."):
                names.add(b + key[len(a):])
    return names


def fuzz_keys(resolved: dict[str, Any], pairs: list[tuple[str, str]]) -> list[str]:
    """Leaves of the top level, data, model, sampler and the selected task group (others are dropped by design),
    except those inside a node that is an interpolation (setting one would replace the whole node)."""
    group = resolved["task_group"]
    keys = []
    for top, value in resolved.items():
        if top == "task":
            keys += [k.rstrip(".") for k in leaves(value[group], f"task.{group}.")]
        elif isinstance(value, dict):
            keys += [k.rstrip(".") for k in leaves(value, f"{top}.")]
        else:
            keys.append(top)
    return sorted(k for k in keys if not any(k.startswith(node + ".") for node, _ in pairs))


def with_values(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with ``values`` set by key path (new keys added, as ``+key=value`` would)."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for key, value in values.items():
            OmegaConf.update(out, key, value, merge=False, force_add=True)
    return out


def attempt(cfg: DictConfig, run_dir: Path) -> ConfigError | None:
    """None when the config builds (the run stops at sampling), the ConfigError when it is refused; anything
    else propagates (a failure of the test)."""
    try:
        job.run(cfg, run_dir)
    except Built:
        return None
    except ConfigError as err:
        return err
    raise AssertionError("run() returned without reaching the sampler")


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> list[tuple[str, DictConfig, list[tuple[str, str]], list[str]]]:
    """(label, config, its interpolation links, its keys to fuzz) for each group option that builds unchanged at
    the tiny settings (the default must be one of them)."""
    patch = pytest.MonkeyPatch()
    patch.setattr(job, "run_experiment", stop_before_sampling)
    root = tmp_path_factory.mktemp("bases")
    measurements = root / "measurements"
    measurements.mkdir()
    images = root / "images"
    images.mkdir()
    for image_id in range(2):  # y of the default task (x4 down-sampling of 16 px images), and 2 images
        torch.save(torch.zeros(3, 4, 4), measurements / f"{image_id:05d}.pt")
        Image.fromarray(np.full((20, 24, 3), 40 * image_id, np.uint8)).save(images / f"{image_id}.png")
    out = []
    for i, options in enumerate(GROUP_OPTIONS):
        extra = [f"data.root={measurements}"] if "data=measurements" in options else \
            [f"data.root={images}"] if "data=demo-ffhq" in options else []
        cfg = compose_config([*TINY_COMMON, *options, *extra, f"save_dir={root}", f"name=base{i}"])
        if attempt(cfg, root / f"base{i}") is None:
            resolved = OmegaConf.to_container(cfg, resolve=True)
            pairs = links(OmegaConf.to_container(cfg, resolve=False), resolved)
            label = " ".join(o for o in options if "=" in o and "." not in o.split("=")[0]) or "default"
            out.append((label, cfg, pairs, fuzz_keys(resolved, pairs) + UNKNOWN_KEYS))
    patch.undo()
    assert out and out[0][0] == "default", "the default config must build at the tiny settings"
    built = " ".join(label for label, *_ in out)
    missing = [option for option in GROUP_OPTIONS if " ".join(o for o in option if o.startswith(("sampler=", "task=")))
               not in built]
    assert not missing, f"bases that no longer build at the tiny settings: {missing}"
    return out


@pytest.mark.slow  # about 10 s for the bases and 10 s for the 200 cases on 2 shared cores
def test_fuzzed_overrides_are_built_or_refused_naming_the_key(bases, tmp_path, monkeypatch):
    monkeypatch.setattr(job, "run_experiment", stop_before_sampling)
    rng = random.Random(SEED)
    unexpected, unnamed, refused = [], [], 0
    for case in range(CASES):
        label, base, pairs, keys = rng.choice(bases)
        key, value = rng.choice(keys), rng.choice(HOSTILE_VALUES)
        cfg = with_values(base, {"save_dir": str(tmp_path), "name": f"case{case}", key: value})
        where = f"case {case} [{label}] {key}={value!r}"
        try:
            error = attempt(cfg, tmp_path / f"case{case}")
        except Exception as err:  # noqa: BLE001 - collected: every unexpected exception is a failure
            unexpected.append(f"{where}: {type(err).__name__}: {str(err)[:200]}")
            continue
        if error is not None:
            refused += 1
            if not any(name in str(error) for name in key_names(key, pairs)):
                unnamed.append(f"{where}: {str(error)[:200]}")
    assert not unexpected, f"{len(unexpected)} unexpected exceptions:\n" + "\n".join(unexpected)
    assert not unnamed, f"{len(unnamed)} refusals do not name their key:\n" + "\n".join(unnamed)
    assert refused > CASES // 2  # the values are hostile: most cases must be refused
    assert not any(Path(p).exists() for p in ("/abs/fuzz", tmp_path.parent.parent / "fuzz_escape"))
