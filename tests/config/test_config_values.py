"""Bad values of top-level, data, model and operator keys stop the run before sampling, each with a message naming
the full key path, the value and what is valid; a refused save_dir or name creates no folder anywhere."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from common.config import compose, resolvers
from common.config.validate import run_dir_problems
from common.errors import ConfigError
from common.run import job
from tests.helpers.cli import TINY, compose_config, run_cli
from tests.helpers.fixtures import REPO

GROUP = compose_config([]).task_group  # the task group of the default (demo) model
OPERATOR = f"task.{GROUP}.operator"


@pytest.mark.parametrize("overrides, message", [
    (["save_dir=/proc/nope"], r"save_dir='/proc/nope' is not valid: no folder can be created in '/proc'"),
    (["save_dir=/dev/null"], r"save_dir='/dev/null' is not valid: it is a file, not a folder"),
    (["save_dir="], r"save_dir='' is not valid: need the path of a folder"),
    (["trajectory_points=abc"], r"trajectory_points='abc' is not valid: need a positive integer"),
    (["trajectory_points=0"], r"trajectory_points=0 is not valid"),
    (["trajectory_images=-1"], r"trajectory_images=-1 is not valid: need an integer ≥ 0 .* or null"),
    (["data.end_id=1.5"], r"data.end_id=1.5 is not valid: need an integer > data.start_id"),
    (["data.end_id=abc"], r"data.end_id='abc' is not valid"),
    (["data.start_id=-1"], r"data.start_id=-1 is not valid: need an integer >= 0"),
    (["data.resolution=4"], rf"{OPERATOR}.scale_factor=4 is not valid: need a divisor of the resolution 4 "
                            r"\(data.resolution\) that is at most 2"),
    (["data.resolution=16384"], r"data.resolution=16384 is not valid: need an integer in \[1, 4096\]"),
    ([f"name={'n' * 300}"], r"name='n{40}'... \(300 characters\) is not valid: each part .* at most 255 bytes"),
    (["num_runs=1000000000"], r"num_runs=1000000000 is not valid: at most 10000 posterior samples per image"),
    (["overwrite=abc"], r"overwrite='abc' is not valid: need true or false"),
    (["resume=no"], r"resume='no' is not valid: need true or false"),
    (["save_traj=1"], r"save_traj=1 is not valid: need true or false"),
    (["eval_fn_list=[psnr,psnr]"], r"eval_fn_list=\['psnr', 'psnr'\] is not valid: .*each once"),
    (["model.variance=[0.5,-0.1,0.1]"], r"model.variance=\[0.5, -0.1, 0.1\] is not valid: need 3 finite numbers > 0"),
    (["model.f0=0"], r"model.f0=0 is not valid: need a finite number in \(0, 1\]"),
    (["model=gmm", "model.components.0.weight=-1"], r"model.components\[0\].weight=-1 is not valid"),
    ([f"{OPERATOR}.sigma=nan"], rf"{OPERATOR}.sigma=nan is not valid: need a finite number >= 0"),
    ([f"{OPERATOR}.sigma=inf"], rf"{OPERATOR}.sigma=inf is not valid"),
    ([f"{OPERATOR}.sigma=-0.1"], rf"{OPERATOR}.sigma=-0.1 is not valid"),
    (["task=inpainting_rand", f"{OPERATOR}.mask_prob_range=[0.5]"],
     rf"{OPERATOR}.mask_prob_range=\[0.5\] is not valid: need two numbers \[lo, hi\] with 0 <= lo <= hi <= 1"),
    (["task=inpainting_rand", f"{OPERATOR}.mask_prob_range=[0.8,0.2]"], r"need lo <= hi"),
    (["task=hdr", f"{OPERATOR}.scale=inf"], rf"{OPERATOR}.scale=inf is not valid: need a finite number > 0"),
    (["task=phase_retrieval", f"{OPERATOR}.oversample=1e9"], rf"{OPERATOR}.oversample=1000000000.0 is not valid"),
    ([f"+{OPERATOR}.noise=laplace"], rf"{OPERATOR}.noise='laplace' is not valid: choose one of gaussian, poisson"),
    ([f"{OPERATOR}.shared_state=abc"], rf"{OPERATOR}.shared_state='abc' is not valid: need true or false"),
    (["data=demo-ffhq", "data.root=null", "data.id_list=null"], r"data.root=None is not valid: need the path"),
    (["name=${nope}"], r"name=\$\{nope\}: the interpolation cannot be resolved \(Interpolation key 'nope'"),
    (["task=gaussian_blur", f"{OPERATOR}.kernel_size=5", f"{OPERATOR}.intensity=9223372036854775808"],
     rf"{OPERATOR}.intensity=9223372036854775808 is not valid: need a finite number in \(0, 4096\]"),
    ([f"+{OPERATOR}.noise=poisson", f"+{OPERATOR}.rate=1e300"], rf"{OPERATOR}.rate=1e\+300 is not valid"),
    ([f"{OPERATOR}.resolution=32"], rf"{OPERATOR}.resolution=32 is not valid: the images are data.resolution=16"),
    (["+typo_key=1"], r"unknown setting typo_key=1: valid top-level keys: .*"),
    (["+num_run=1"], r"unknown setting num_run=1: .*did you mean 'num_runs'\?"),
    (["model.color_basis=[[1,0,0],[1,0,0],[0,0,1]]"], r"model.color_basis=.* need an invertible 3x3 matrix"),
    (["model.color_basis=[[0,0,0],[0,0,0],[0,0,0]]"], r"model.color_basis=.* this one is singular"),
    (["task=inpainting_rand", f"{OPERATOR}.mask_prob_range=[0.5,1.0]"],
     rf"{OPERATOR}.mask_prob_range=\[0.5, 1.0\] is not valid: removes every pixel"),
    (["model.mean=[0,0,0,0]"], r"^model.mean=\[0, 0, 0, 0\] is not valid: need 3 finite numbers"),
    (["save_dir=/"], r"save_dir='/' is not valid: the filesystem root"),
    ([f"task.{GROUP}.mcmc_sampler_config.lr=1e300"], rf"diverges \(NaN/inf\) at its first step.*task.{GROUP}."
                                                      r"mcmc_sampler_config.lr=1e\+300"),
    (["model.variance=[1e300,1e300,1e300]"], r"diverges .* first step.*model.variance=\[1e\+300"),
    (["model.mean=[1e300,0,0]"], r"diverges .* first step.*model.mean=\[1e\+300"),
    (["model.alpha=[300,300,300]"], r"diverges .* first step.*model.alpha=\[300"),
])
def test_bad_values_stop_before_sampling_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_cli(tmp_path, overrides)
    assert not (tmp_path / "run").exists()


#: the tiny settings without the DAPS step counts, for the other samplers
OTHER_SAMPLER = [o for o in TINY if not o.startswith("sampler.")]


@pytest.mark.parametrize("overrides, message", [
    (["sampler=dps", "sampler.num_steps=4", "sampler.timestep_respacing=[[0.1]]"],
     r"sampler.timestep_respacing=\[\[0.1\]\] is not valid: null, an integer step count"),
    (["sampler=dps", "sampler.num_steps=4", "sampler.timestep_respacing=[0.5,2]"], r"sampler.timestep_respacing="),
    (["sampler=mmps", "sampler.num_steps=4", "sampler.sigma_max=1e308"],
     r"sampler.sigma_max=1e\+308 is not valid: need a finite number in \(0, 1e\+06\]"),
    (["sampler=dps", "sampler.num_steps=4", f"task.{GROUP}.dps.scale=1e300"],
     rf"sampler 'dps' diverges \(NaN/inf\) at its first step.*(task.{GROUP}.dps.scale|sampler.scale)=1e\+300"),
])
def test_other_samplers_bad_values_stop_before_sampling_naming_the_key(tmp_path, overrides, message):
    cfg = compose_config([*OTHER_SAMPLER, f"save_dir={tmp_path}", "name=run", *overrides])
    with pytest.raises(ConfigError, match=message):
        job.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["../../escape", "/abs/escape", "a/../../b", "x" * 256])
def test_refused_names_give_hydra_a_folder_outside_save_dir(tmp_path, name):
    """Hydra creates ``hydra.run.dir`` before the run starts: a refused name must not become that folder."""
    cfg = compose_config([f"save_dir={tmp_path / 'results'}", f"name={name}"])
    assert resolvers.hydra_run_dir(_root_=cfg) == str(resolvers.REFUSED_RUN_DIR)
    good = compose_config([f"save_dir={tmp_path / 'results'}", "name=ok/nested"])
    assert resolvers.hydra_run_dir(_root_=good) == f"{tmp_path / 'results'}/ok/nested"
    assert list(tmp_path.iterdir()) == []  # checking created nothing


def test_unicode_values_reach_hydra_quoted(tmp_path):
    argv = ["name=日本語", "save_dir=/tmp/résultats", "name=plain", "name=é,ü", "x=[é]", "name='é'", "-m", "file"]
    quoted = compose.quote_unicode_values(argv)
    assert quoted == ["name='日本語'", "save_dir='/tmp/résultats'", *argv[2:]]
    cfg = compose_config([quoted[0], f"save_dir={tmp_path}"])
    assert cfg.name == "日本語" and run_dir_problems(cfg.save_dir, cfg.name) == []


def test_run_dir_checks_leave_no_probe_behind(tmp_path):
    (tmp_path / "file").write_text("x")
    assert run_dir_problems(str(tmp_path / "new" / "deeper"), "run") == []
    assert run_dir_problems(str(tmp_path), "file/run") == [f"name='file/run' is not valid: '{tmp_path / 'file'}' is a "
                                                           f"file, not a folder"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


CLI = [sys.executable, str(REPO / "posterior_sample.py"), "data.end_id=1", "eval_fn_list=[psnr]", "show_progress=false",
       "data.resolution=16"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_cli_refused_name_creates_nothing(tmp_path):
    """Through Hydra, which makes the job folder before the run starts: name=../../x creates nothing outside (or
    inside) save_dir."""
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    refused = subprocess.run([*CLI, "save_dir=results", "name=../../escape"], cwd=cwd, env=ENV, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and "name='../../escape' is not valid" in refused.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and list(cwd.iterdir()) == []


@pytest.mark.slow
def test_cli_disk_full_at_start_exits_4(tmp_path):
    """A disk that is full before the run starts gives exit code 4 and the message, no traceback (a 64 KiB tmpfs
    filled up; skipped where mounting is not allowed)."""
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root in a container that allows it)")
    try:
        with open(full / "filler", "wb", buffering=0) as handle:
            with pytest.raises(OSError) as filled:
                while True:
                    handle.write(b"\0" * 4096)
        assert filled.value.errno == errno.ENOSPC
        done = subprocess.run([*CLI, f"save_dir={full}", "name=run"], cwd=tmp_path, env=ENV, capture_output=True,
                              text=True, timeout=300)
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert done.returncode == 4 and "the disk is full" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_keys_are_marked_for_our_key_check_with_or_without_plus():
    argv = ["p.py", "sampler.annealing_scheduler_config.num_step=10", "seed=1", "num_run=3", "-m", "+x=1",
            "hydra.job.chdir=false", "hydra/launcher=basic"]
    assert compose.prepare_argv(argv) == ["p.py", "+sampler.annealing_scheduler_config.num_step=10", "seed=1",
                                          "+num_run=3", *argv[4:]]
    swept_groups = ["p.py", "sampler=dps,mmps", "sampler.foo=1"]  # the key set differs per job: left to Hydra
    assert compose.prepare_argv(swept_groups) == swept_groups


@pytest.mark.parametrize("plus", ["", "+"])
def test_a_misspelled_key_gets_our_message_and_exit_2_with_or_without_plus(tmp_path, plus):
    typo = f"{plus}sampler.annealing_scheduler_config.num_step=10"
    done = subprocess.run([*CLI, f"save_dir={tmp_path}", typo], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "sampler.annealing_scheduler_config.num_step=10" in done.stderr and "did you mean 'num_steps'?" in done.stderr
    assert list(tmp_path.iterdir()) == []
