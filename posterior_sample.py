"""Posterior sampling for image inverse problems with diffusion priors (DAPS, DPS, baselines): the Hydra entry point.

    python posterior_sample.py                      # offline demo
    python posterior_sample.py +data=demo-ffhq +model=ffhq256ddpm +task=phase_retrieval +sampler=edm_daps \\
        task_group=pixel num_runs=4 name=phase_retrieval_demo

Hydra composes ``configs/``; :func:`common.run.cli.main` runs the job (validate -> build -> loop -> finish) and
decides the exit code. Nothing imports this file.
"""
from __future__ import annotations

import importlib
import sys

import hydra
from omegaconf import DictConfig

from common.config.compose import prepare_argv
from common.run import cli

#: the packages whose modules register samplers (DAPS, DPS; the baselines DDRM … ReSample): the one place the command
#: line loads them (the library never imports a sampler package)
SAMPLER_PACKAGES = ("daps", "dps", "baselines")


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> int:
    # inside main: a launcher job (submitit) runs main unpickled, without this module's import-time code
    for package in SAMPLER_PACKAGES:
        importlib.import_module(package)
    return cli.main(cfg)


if __name__ == "__main__":
    sys.argv = prepare_argv(sys.argv)
    main()
