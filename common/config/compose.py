"""Composing the experiment config: the command line as Hydra should read it, the config as plain data, and the
task reduced to its selected parameter group.

The DAPS README spells group selections ``+data=…``; our config has defaults for every group (the offline demo) and
Hydra refuses ``+group=`` for a group already in the defaults list, so :func:`prepare_argv` normalises them before
Hydra parses the command line. :func:`resolved_config` composes ``configs/`` the way ``posterior_sample.py`` does, for
the applications and the tests.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.config import resolvers  # noqa: F401  (registers the ${...} resolvers the yaml files use)
from common.errors import ConfigError

#: the repository's config folder (``posterior_sample.py`` names the same one)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
#: further config folders searched after ``configs/`` (Hydra's search path; a folder holding ``sampler/<name>.yaml``)
SEARCH_PATH: list[Path] = []

CONFIG_GROUPS = ("data", "model", "task", "sampler")


def normalize_group_overrides(argv: Sequence[str]) -> list[str]:
    """``+data=x`` / ``++data=x`` -> ``data=x`` for the four config groups.

    The DAPS README spells group selections with ``+``; our config has defaults for every group (the offline
    demo), and Hydra refuses ``+group=`` for a group already in the defaults list. Other ``+key=value``
    overrides are left alone.
    """
    out = []
    for arg in argv:
        stripped = arg.lstrip("+")
        group = stripped.split("=", 1)[0]
        out.append(stripped if arg.startswith("+") and "=" in stripped and group in CONFIG_GROUPS else arg)
    return out


#: characters with a meaning in Hydra's override grammar: a value holding one is left to the grammar as typed
GRAMMAR_CHARACTERS = set("'\"\\[]{}(),$= ")


def quote_unicode_values(argv: Sequence[str]) -> list[str]:
    """``name=日本`` -> ``name='日本'``: Hydra's grammar takes non-ASCII text only quoted and otherwise stops with a
    lexer error; a plain ``key=value`` whose value has non-ASCII letters and no grammar characters is quoted."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        plain = bool(sep and value) and not value.isascii() and not GRAMMAR_CHARACTERS & set(value)
        out.append(f"{key}='{value}'" if plain and not arg.startswith("-") else arg)
    return out


#: a value that makes an override a sweep (``a=1,2``, ``choice(…)``, ``range(…)``, ``glob(…)``)
SWEEP_VALUE = re.compile(r",|^\s*(choice|range|glob|interval|tag|sort|shuffle)\(")
_ABSENT = object()


def mark_unknown_keys(argv: Sequence[str]) -> list[str]:
    """``a.b=v`` -> ``+a.b=v`` for a key the composed config does not have, so that a misspelled key gets the same
    refusal with or without ``+`` (the strict key checks name it and suggest the closest key, exit code 2) instead
    of Hydra's "Could not override". The config is composed with the command line's group selections; when they
    are swept, or it does not compose, the command line is left to Hydra as it is."""
    selections, plain = [], []
    for index, arg in enumerate(argv):
        key, sep, value = arg.partition("=")
        if not sep or arg.startswith(("-", "+", "~")) or "/" in key or key.startswith("hydra."):
            continue
        if key in CONFIG_GROUPS:
            if SWEEP_VALUE.search(value):
                return list(argv)
            selections.append(arg)
        else:
            plain.append((index, key))
    if not plain:
        return list(argv)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("config", overrides=selections)
    except HydraException:
        return list(argv)
    out = list(argv)
    for index, key in plain:
        if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False) is _ABSENT:
            out[index] = f"+{argv[index]}"
    return out


def prepare_argv(argv: Sequence[str]) -> list[str]:
    """The command line as Hydra's grammar should read it: ``+group=`` selections normalised, misspelled keys
    marked for our key check, non-ASCII values quoted (:func:`normalize_group_overrides`,
    :func:`mark_unknown_keys`, :func:`quote_unicode_values`)."""
    return quote_unicode_values(mark_unknown_keys(normalize_group_overrides(argv)))


def check_task_group_overrides(overrides: Sequence[str], task_group: str, task: Mapping[str, Any]) -> None:
    """An override of ``task.<group>.…`` for a group other than the selected one would change nothing: refuse it."""
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        parts = key.split(".")
        if len(parts) >= 2 and parts[0] == "task" and parts[1] in task and parts[1] != task_group \
                and isinstance(task[parts[1]], Mapping):
            raise ConfigError(f"override {override!r} sets task group {parts[1]!r}, but task_group={task_group!r} "
                              f"is selected, so it would change nothing; set task.{task_group}.{'.'.join(parts[2:])} "
                              f"or choose task_group={parts[1]}")


def selected_task(task: Mapping[str, Any], task_group: str) -> dict[str, Any]:
    """The task config as the run uses it: its scalar keys (``name``) and the selected group only."""
    return {k: v for k, v in task.items() if k == task_group or not isinstance(v, Mapping)}


def resolve_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data, every interpolation resolved; one that does not resolve (a missing key, an unset
    environment variable, a malformed expression) is a :class:`ConfigError` naming the key that holds it."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        reason = str(getattr(err, "msg", err)).split("\n")[0]
        key = err.full_key or "the config"
        expression: Any = OmegaConf.to_container(cfg, resolve=False)
        for part in str(err.full_key or "").split("."):
            expression = expression.get(part) if isinstance(expression, dict) else None
        shown = f"={expression}" if isinstance(expression, str) and err.full_key else ""  # names the keys it uses
        raise ConfigError(f"{key}{shown}: the interpolation cannot be resolved ({reason}); give the key a plain "
                          f"value or fix the ${{...}} expression (or the keys it refers to)") from None


class NoConfig(LookupError):
    """A config group option (e.g. ``configs/sampler/<name>.yaml``) that does not exist."""


def resolved_config(overrides: Sequence[str]) -> dict[str, Any]:
    """The config ``posterior_sample.py`` would run with these overrides, every interpolation resolved and the task
    reduced to its selected group (as the run's ``config.yaml``); :class:`NoConfig` for a missing group option."""
    search = ([f"hydra.searchpath=[{','.join(f'file://{Path(p).resolve()}' for p in SEARCH_PATH)}]"]
              if SEARCH_PATH else [])
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[*normalize_group_overrides(overrides), *search])
    except MissingConfigException as err:
        raise NoConfig(str(err).split("\n")[0]) from None
    resolved = resolve_config(cfg)
    resolved["task"] = selected_task(resolved["task"], resolved["task_group"])
    return resolved
