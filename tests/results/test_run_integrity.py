"""Results integrity of the run directory: nothing stale, nothing mixed, nothing unreadable.

CLI runs go through the real entry point (compose API, 16 px, 2 images, 2 runs, few steps). Sampling is
deterministic per (seed, image id, run), so "made again" is checked as "equal bytes to a fresh run" and
"reused" as "file untouched".
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from common.errors import ConfigError
from common.evaluation.finish import finish_run
from common.results import provenance, reuse
from common.results.fingerprint import DRAWN, SampleKeys, config_parts, differences, file_digests
from common.results.run_dir import RunDirectory, RunDirectoryError
from tests.helpers.cli import TINY, compose_config, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["save_traj=false"]
GROUP = str(compose_config(TINY).task_group)  # the demo model's task group


def strict_json(path: Path):
    """json.loads that refuses NaN/Infinity (what other JSON readers do)."""
    def refuse(constant: str):
        raise ValueError(f"{path} holds {constant}")
    return json.loads(path.read_text(), parse_constant=refuse)


def sample_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "samples").iterdir())}


def folder_bytes(run_dir: Path) -> dict[Path, bytes]:
    """Every result file's bytes (the log and the lock file aside)."""
    return {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
            if p.is_file() and p.name not in ("run.log", "run.lock")}


def mtimes(run_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (run_dir / "samples").iterdir()}


# ------------------------------------------------------------------------------------------- overwrite
@pytest.mark.parametrize("resume", ["true", "false"])
def test_overwrite_starts_over_and_moves_the_old_results_aside(tmp_path, capsys, resume):
    run_cli(tmp_path, [*QUICK, "seed=1"])
    old = sample_bytes(tmp_path / "run")
    capsys.readouterr()
    code, run_dir = run_cli(tmp_path, [*QUICK, "seed=2", "overwrite=true", f"resume={resume}"])
    out = capsys.readouterr().out
    assert code == 0 and "resuming" not in out and "were moved to" in out
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1 and sample_bytes(moved[0]) == old  # the old results, intact, beside
    run_cli(tmp_path, [*QUICK, "seed=2"], name="fresh")
    assert sample_bytes(run_dir) == sample_bytes(tmp_path / "fresh") != old  # nothing of seed=1 reused
    assert strict_json(run_dir / "protocol.json")["seed"] == 2
    assert (run_dir / "run.log").read_text().count("==== ") == 1 == (moved[0] / "run.log").read_text().count("==== ")


def test_seed_change_without_overwrite_is_refused_and_changes_nothing(tmp_path):
    _, run_dir = run_cli(tmp_path, QUICK)
    before = folder_bytes(run_dir)
    with pytest.raises(ConfigError, match=r"differs in: seed\b.*overwrite=true"):
        run_cli(tmp_path, [*QUICK, "seed=3"])
    assert folder_bytes(run_dir) == before


def test_task_change_is_refused_naming_the_key_and_never_relabelled(tmp_path):
    _, run_dir = run_cli(tmp_path, QUICK)
    with pytest.raises(ConfigError, match=rf"differs in: task\.{GROUP}\.operator\.sigma"):
        run_cli(tmp_path, [*QUICK, f"task.{GROUP}.operator.sigma=0.2"])
    # a folder relabelled behind our back (config.yaml says sigma=0.2): the records' fingerprints still refuse
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["task"][GROUP]["operator"]["sigma"] == 0.05
    config["task"][GROUP]["operator"]["sigma"] = 0.2
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ConfigError, match=r"image 0 \([^)]+\) runs \[0, 1\].*task settings"):
        run_cli(tmp_path, [*QUICK, f"task.{GROUP}.operator.sigma=0.2"])


def test_a_replaced_input_image_is_refused_naming_it(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / name)
    data = ["data=demo-ffhq", f"data.root={folder}", "data.id_list=null"]
    code, run_dir = run_cli(tmp_path, [*QUICK, *data])
    assert code == 0
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / "b.png")
    with pytest.raises(ConfigError, match=r"image 1 \(b\.png\) runs \[0, 1\]: the input image "
                                                           r"changed"):
        run_cli(tmp_path, [*QUICK, *data])
    assert len(list((run_dir / "records").glob("*.json"))) == 4  # kept until overwrite=true
    code, _ = run_cli(tmp_path, [*QUICK, *data, "overwrite=true"])
    assert code == 0


def test_an_image_replaced_during_the_run_stops_it_naming_the_file(tmp_path, monkeypatch):
    """The swap happens after the fingerprints are taken and before the image is read for sampling: the run stops
    naming the file, and no sample of the new content is recorded under the old fingerprint."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / name)
    expect = RunDirectory.expect

    def swap_after_fingerprinting(self, *args, **kwargs):
        expect(self, *args, **kwargs)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / "b.png")

    monkeypatch.setattr(RunDirectory, "expect", swap_after_fingerprinting)
    data = ["data=demo-ffhq", f"data.root={folder}", "data.id_list=null", "batch_size=1"]
    with pytest.raises(ConfigError, match=r"input b\.png \(image 1\) changed while the run was going"):
        run_cli(tmp_path, [*QUICK, *data])
    records = tmp_path / "run" / "records"
    assert not list(records.glob("00001_*.json"))
    # image 0 was finished before the swap was found: a failing run keeps every finished result
    assert (records / "00000_run0000.json").is_file() and (tmp_path / "run" / "samples" / "00000_run0000.png").is_file()


def test_more_images_and_runs_extend_a_finished_run(tmp_path, capsys):
    _, run_dir = run_cli(tmp_path, [*QUICK, "num_runs=2", "data.end_id=1"])
    first = mtimes(run_dir)
    capsys.readouterr()
    code, _ = run_cli(tmp_path, [*QUICK, "num_runs=3", "data.end_id=2"])
    out = capsys.readouterr().out
    assert code == 0 and "extending the run" in out and "num_runs 2 -> 3" in out and "data.end_id 1 -> 2" in out
    assert "resuming: 2 of 6" in out and mtimes(run_dir)["00000_run0001.png"] == first["00000_run0001.png"]
    run_cli(tmp_path, [*QUICK, "num_runs=3", "data.end_id=2"], name="fresh")
    assert sample_bytes(run_dir) == sample_bytes(tmp_path / "fresh")
    assert strict_json(run_dir / "metrics.json")["num_samples"] == 6


def test_fewer_runs_summarise_only_the_selected_samples(tmp_path):
    _, run_dir = run_cli(tmp_path, QUICK)
    code, _ = run_cli(tmp_path, [*QUICK, "num_runs=1"])
    assert code == 0 and strict_json(run_dir / "metrics.json")["num_samples"] == 2


# ------------------------------------------------------------------------------------------- lock
def test_a_second_writer_is_refused_naming_the_pid(tmp_path):
    """Two processes: a holder following the lock protocol (flock on run.lock, pid inside) refuses our run;
    our held lock refuses another process and names our pid."""
    lock = tmp_path / "run" / "run.lock"
    lock.parent.mkdir()
    holder = ("import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
              "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nos.write(fd, str(os.getpid()).encode())\n"
              "print('locked', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"in use by another run \(pid {proc.pid}\b"):
            run_cli(tmp_path, QUICK)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert not (tmp_path / "run" / "records").exists()
    probe = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\ntry:\n"
             "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
             "    print('refused', os.pread(fd, 32, 0).decode().strip())\n")
    with RunDirectory(tmp_path / "run").locked():  # the holder is gone: the lock is free again
        done = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True, timeout=60)
        assert done.stdout.split() == ["refused", str(os.getpid())]
        with pytest.raises(RunDirectoryError, match=rf"pid {os.getpid()}\b"):  # a second open file: refused too
            with RunDirectory(tmp_path / "run").locked():
                pass


# ------------------------------------------------------------------------------------------- damaged folders
def test_truncated_record_is_redone_and_stray_files_are_ignored(tmp_path, capsys):
    _, run_dir = run_cli(tmp_path, QUICK)
    original = sample_bytes(run_dir)
    record = run_dir / "records" / "00001_run0001.json"
    record.write_text(record.read_text()[:25])
    (run_dir / "records" / "notes.txt").write_text("mine")
    (run_dir / "records" / "copy.json").write_text("{}")
    (run_dir / "records" / "00000_run0005.json").mkdir()
    os.mkfifo(run_dir / "records" / "00001_run0007.json")  # reading it would block forever
    capsys.readouterr()
    code, _ = run_cli(tmp_path, QUICK)
    out = capsys.readouterr().out
    assert code == 0 and "resuming: 3 of 4" in out
    assert f"{record} is unreadable" in out and "notes.txt" in out and "copy.json" in out
    assert "ignoring" in out and "00000_run0005.json" in out and "00001_run0007.json" in out
    assert strict_json(record)["run"] == 1 and sample_bytes(run_dir) == original
    assert strict_json(run_dir / "metrics.json")["num_samples"] == 4


def test_a_deleted_sample_png_is_made_again(tmp_path, capsys):
    _, run_dir = run_cli(tmp_path, QUICK)
    original = sample_bytes(run_dir)
    (run_dir / "samples" / "00000_run0001.png").unlink()
    capsys.readouterr()
    code, _ = run_cli(tmp_path, QUICK)
    out = capsys.readouterr().out
    assert code == 0 and "00000_run0001.png is missing" in out and "resuming: 3 of 4" in out
    assert sample_bytes(run_dir) == original


# ------------------------------------------------------------------------------------------- files
def test_non_finite_values_are_written_as_null(tmp_path):
    directory = RunDirectory(tmp_path / "run")
    directory.write_sample(0, 0, torch.zeros(3, 4, 4), {"name": "a", "psnr": float("nan"),
                                                        "residual": float("inf"), "failed_at_step": None})
    directory.write_sample(0, 1, torch.zeros(3, 4, 4), {"name": "a", "psnr": 20.0, "residual": -float("inf"),
                                                        "failed_at_step": None})
    record = strict_json(directory.record_path(0, 0))
    assert record["psnr"] is None and record["residual"] is None
    summary = finish_run(directory, ["psnr"], {0: "a"})
    assert strict_json(directory.root / "metrics.json")["images"]["0"]["psnr"]["mean"] == 20.0
    assert summary["images"]["0"]["residual"]["mean"] is None


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_respect_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        _, run_dir = run_cli(tmp_path, [*QUICK, "num_runs=1", "data.end_id=1"])
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(run_dir)): p.stat().st_mode & 0o777 for p in run_dir.rglob("*") if p.is_file()}
    assert "records/00000_run0000.json" in modes and "metrics.json" in modes and "run.log" in modes
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_provenance_and_terminal_log(tmp_path):
    _, run_dir = run_cli(tmp_path, [*QUICK, "num_runs=1"])
    run_cli(tmp_path, [*QUICK, "num_runs=1"])
    saved = strict_json(run_dir / "provenance.json")
    first, second = saved["invocations"]
    assert set(first) == {"command", "overrides", "choices", "git_commit", "git_dirty", "started", "ended", "wall_s",
                          "exit_code", "model_calls_per_sample"}
    assert first["exit_code"] == 0 and first["wall_s"] > 0 and first["command"] == sys.argv
    git = provenance.git_state()
    assert first["git_commit"] == git.commit and first["git_dirty"] == git.dirty and len(git.commit) == 40
    assert second["started"] >= first["ended"]
    log = (run_dir / "run.log").read_text()
    assert log.count("==== ") == 2 and "| **all** |" in log and "resuming: 2 of 2" in log
    assert strict_json(run_dir / "protocol.json")["environment"] == provenance.environment()


def test_terminal_log_keeps_only_the_last_state_of_redrawn_lines(tmp_path, capsys):
    with provenance.terminal_log(tmp_path / "run.log"):
        print("first")
        sys.stderr.write("bar 10%\rbar 50%\rbar 100%\n")
        print("unfinished", end="")
    assert capsys.readouterr().out == "first\nunfinished"
    assert (tmp_path / "run.log").read_text().splitlines()[1:] == ["first", "bar 100%", "unfinished"]


# ------------------------------------------------------------------------------------------- refusals
def test_a_run_refused_by_validation_creates_nothing(tmp_path):
    with pytest.raises(ConfigError, match="batch_size=0"):
        run_cli(tmp_path, ["batch_size=0"])
    assert list(tmp_path.iterdir()) == []


def test_a_run_refused_after_locking_leaves_no_folder(tmp_path):
    state = tmp_path / "state.pt"
    torch.save({"kernel": torch.ones(3)}, state)  # down-sampling draws no state: it fits nothing
    with pytest.raises(ConfigError, match="state.pt"):
        run_cli(tmp_path, [*QUICK, f"task.{GROUP}.operator.state={state}"])
    assert not (tmp_path / "run").exists()


def test_overwrite_with_a_bad_input_keeps_the_old_results_in_place(tmp_path):
    """overwrite=true moves the old folder aside only once every input is known good: a bad state file is refused
    naming its key, and the previous results stay under the run's name."""
    code, run_dir = run_cli(tmp_path, QUICK)
    before = folder_bytes(run_dir)
    state = tmp_path / "state.pt"
    torch.save({"kernel": torch.ones(3)}, state)
    with pytest.raises(ConfigError, match=rf"task\.{GROUP}\.operator\.state='{state}' is not valid: .*does not fit"):
        run_cli(tmp_path, [*QUICK, "overwrite=true", f"task.{GROUP}.operator.state={state}"])
    assert code == 0 and folder_bytes(run_dir) == before
    assert not list(tmp_path.glob("run.old-*"))


def test_a_state_file_that_is_no_tensor_file_is_refused_naming_the_key(tmp_path):
    state = tmp_path / "passwd"
    state.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(ConfigError, match=rf"^task\.{GROUP}\.operator\.state='{state}' is not valid: .*not a "):
        run_cli(tmp_path, [*QUICK, f"task.{GROUP}.operator.state={state}"])


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo"])
def test_a_lock_that_is_no_regular_file_is_refused_and_never_followed(tmp_path, kind):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    lock = run_dir / "run.lock"
    {"symlink": lambda: lock.symlink_to(target), "directory": lock.mkdir, "fifo": lambda: os.mkfifo(lock)}[kind]()
    with pytest.raises(ConfigError, match=r"'run\.lock' is a (symbolic link|folder|FIFO)"):
        run_cli(tmp_path, QUICK)
    assert target.read_text() == "keep me" and not (run_dir / "records").exists()
    with pytest.raises(RunDirectoryError, match=r"lock file .* is a (symbolic link|folder|FIFO)"):
        RunDirectory(run_dir)._acquire()  # the lock itself refuses too (a link planted after the layout check)


def test_an_entry_of_the_wrong_kind_in_the_run_folder_is_refused_by_name(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "samples").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"'samples' is a regular file, not a folder"):
        run_cli(tmp_path, QUICK)


def test_empty_folders_hydra_made_are_removed_below_save_dir(tmp_path):
    (tmp_path / "sweep" / "job").mkdir(parents=True)
    (tmp_path / "keep" / "job").mkdir(parents=True)
    (tmp_path / "keep" / "other.txt").write_text("x")
    reuse.remove_empty_folders(tmp_path / "sweep" / "job", tmp_path)
    reuse.remove_empty_folders(tmp_path / "keep" / "job", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"] and (tmp_path / "keep" / "other.txt").is_file()


def test_sample_keys_name_what_determines_a_sample():
    keys = SampleKeys.build({"seed": 1}, [4, 7], lambda i: torch.full((3, 2, 2), float(i)),
                            lambda i: {"mask": torch.ones(2)} if i else None, 2)
    assert keys.pairs() == {(4, 0), (4, 1), (7, 0), (7, 1)}
    assert keys.of(4, 1)["operator_state"] == DRAWN and keys.of(7, 0)["operator_state"] != DRAWN
    assert keys.of(4, 0)["image"] != keys.of(7, 0)["image"] and keys.of(4, 0)["run"] == 0


def test_checkpoint_digests_are_cached_by_size_and_mtime_and_enter_the_fingerprint(tmp_path):
    checkpoint = tmp_path / "net.pt"
    checkpoint.write_bytes(b"weights-1")
    model = {"name": "ddpm", "checkpoint": str(checkpoint), "nested": [{"other": str(tmp_path)}]}
    first = file_digests(model, {})
    assert list(first) == [str(checkpoint)]  # files only: the folder is no checkpoint
    assert first[str(checkpoint)]["sha256"] == hashlib.sha256(b"weights-1").hexdigest()
    planted = {str(checkpoint): {**first[str(checkpoint)], "sha256": "cached"}}
    assert file_digests(model, planted)[str(checkpoint)]["sha256"] == "cached"  # same size and mtime: not re-read
    checkpoint.write_bytes(b"weights-22")
    second = file_digests(model, planted)
    assert second[str(checkpoint)]["sha256"] == hashlib.sha256(b"weights-22").hexdigest()
    config = {"task_group": "g", "task": {"g": {"operator": {}}}, "sampler": {}, "data": {"end_id": 2},
              "eval_fn_list": ["psnr"], "seed": 0, "model": model}
    a, b = config_parts(config, first), config_parts(config, second)
    assert differences(a, b) == ["checkpoints"]
    assert config_parts({**config, "data": {"end_id": 5}}, first) == a  # the id range selects, it does not determine


def test_an_unreadable_config_yaml_is_refused_naming_it(tmp_path):
    (tmp_path / "config.yaml").write_bytes(b"seed: [1\n\xff")
    with pytest.raises(ConfigError, match=r"config\.yaml is unreadable.*overwrite=true"):
        reuse.check_run_directory(tmp_path, {"seed": 1})
