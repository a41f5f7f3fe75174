"""common.run.tracking: what an offline W&B run writes to its local folder (read back by wandb_log.decode:
what W&B would upload), and how failures degrade."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

wandb = pytest.importorskip("wandb")
from common.run.progress import Progress  # noqa: E402
from common.run.tracking import Tracker, run_tags  # noqa: E402
from tests.helpers.wandb_log import decode  # noqa: E402


def _fake_run_dir(root: Path) -> tuple[Path, dict]:
    """A finished run directory as RunDirectory leaves it (grid, one progress strip, metrics.json)."""
    from common.evaluation.figures import trajectory_files
    from common.evaluation.finish import finish_run
    from common.results.run_dir import RunDirectory

    directory = RunDirectory(root / "run")
    image = torch.linspace(-1, 1, 3 * 8 * 8).reshape(3, 8, 8)
    directory.write_inputs(0, image, image, {}, (8, 8))
    directory.write_sample(0, 0, image.flip(-1), {"name": "a", "psnr": 20.0, "residual": 0.5, "residual_ratio": 0.9,
                                                  "model_calls": 100, "model_backward": 300, "failed_at_step": None})
    directory.write_trajectory(0, 0, *trajectory_files({"x0hat": [image, image], "x_t": [image, image]}, [0, 1],
                                                        [("sigma", 1.0), ("sigma", 0.5)], 2, video=False))
    summary = finish_run(directory, ["psnr"], {0: "a"})
    return directory.root, summary


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """One offline W&B run: two batches of 3 sampler steps, one sample record, finish."""
    root = tmp_path_factory.mktemp("wandb")
    run_dir, summary = _fake_run_dir(root)
    mp = pytest.MonkeyPatch()
    for key in ("WANDB_PROJECT", "WANDB_ENTITY"):
        mp.delenv(key, raising=False)
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(root))
    mp.setenv("WANDB_SILENT", "true")
    config = {"task_group": "pixel", "seed": 7, "task": {"pixel": {"operator": {"name": "down_sampling"}}}}
    tags = run_tags({"task": "down_sampling", "model": "demo", "sampler": "edm_daps", "data": "demo"}, "pixel")
    try:
        tracker = Tracker.start(config, run_dir, enabled=True, project="daps-test", entity=None, mode="online",
                                tags=tags)
        assert tracker.active
        for _batch in range(2):  # the experiment loop's progress callback, with the tracker as its on_step hook
            progress = Progress(3, on_step=tracker.on_step)
            for step in range(3):
                progress({"step": step, "num_steps": 3, "sigma": torch.tensor(10.0 - step),
                          "residual": torch.tensor([1.0, float("nan"), 3.0 + step]),
                          "finite": torch.tensor([True, False, True]), "decode": lambda x: x})
        tracker.log_records([{"image_id": 0, "run": 0, "name": "a", "psnr": 20.0, "residual": 0.5,
                              "failed_at_step": None}])
        tracker.finish(summary, run_dir, wall_s=12.0)
        assert not tracker.active
    finally:
        mp.undo()
    (folder,) = (root / "wandb").glob("offline-run-*")
    return folder, decode(folder), run_dir, summary


def test_config_tags_and_project_are_written(offline_run):
    _, logged, run_dir, _ = offline_run
    assert logged["project"] == "daps-test"
    assert logged["config"]["seed"] == 7 and logged["config"]["task"]["pixel"]["operator"]["name"] == "down_sampling"
    assert logged["config"]["run_dir"] == str(run_dir.resolve())
    assert set(logged["tags"]) == {"task:down_sampling", "model:demo", "sampler:edm_daps", "data:demo",
                                   "task_group:pixel"}


def test_step_curves_continue_across_batches(offline_run):
    _, logged, _, _ = offline_run
    steps = [h for h in logged["history"] if "sampling/step" in h]
    assert [h["sampling/step"] for h in steps] == [0, 1, 2, 3, 4, 5]
    assert [h["sampling/sigma"] for h in steps] == [10.0, 9.0, 8.0] * 2
    # batch mean of the residual, NaN (a diverged sample) left out: (1 + 3 + step) / 2
    assert [h["sampling/residual"] for h in steps] == pytest.approx([2.0, 2.5, 3.0] * 2)


def test_per_sample_and_aggregate_metrics(offline_run):
    _, logged, run_dir, summary = offline_run
    (sample,) = [h for h in logged["history"] if "sample/index" in h]
    assert sample["sample/psnr"] == 20.0 and sample["sample/image_id"] == 0 and "sample/failed_at_step" not in sample
    final = logged["summary"]
    for key in ("mean", "best_oracle_mean", "best_residual_mean"):
        assert final[f"psnr_{key}"] == pytest.approx(summary["summary"]["psnr"][key])
    assert final["psnr_std"] is None  # one image: no spread over images (as the comparison table)
    assert final["num_images"] == 1 and final["num_failed"] == 0
    # the comparison table's columns, so W&B's runs table compares samplers
    assert (final["residual_ratio"], final["model_calls"], final["model_backward"]) == (0.9, 100, 300)
    assert (final["wall_s_per_sample"], final["diverged"], final["samples"]) == (12.0, 0, 1)
    assert {"psnr_of_mean", "ssim_of_mean", "coverage_1std", "coverage_1std_expected"} <= set(final)
    assert final["run_dir"] == str(run_dir.resolve())


def test_grid_strips_and_table_are_uploaded_as_media(offline_run):
    folder, logged, _, _ = offline_run
    media = folder / "files" / "media"
    assert len(list((media / "images").glob("grid_results_*.png"))) == 1
    assert len(list((media / "images").glob("trajectory_*.png"))) == 1
    (table_file,) = (media / "table").glob("samples_*.table.json")
    table = json.loads(table_file.read_text())
    row = dict(zip(table["columns"], table["data"][0]))
    assert len(table["data"]) == 1 and (row["image_id"], row["name"], row["run"], row["psnr"]) == (0, "a", 0, 20.0)
    assert logged["summary"]["grid_results/_type"] == "image-file"


def test_disabled_tracking_is_a_no_op_that_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for tracker in (Tracker.start({}, tmp_path / "run", enabled=False, project="p"),
                    Tracker.start({}, tmp_path / "run", enabled=True, project="p", mode="disabled")):
        assert not tracker.active
        tracker.log_step(0, {"residual": 1.0})
        tracker.on_step({"step": 0.0, "residual": 1.0, "sigma": 1.0})
        tracker.log_records([{"image_id": 0, "psnr": 1.0}])
        tracker.finish({"summary": {}}, tmp_path / "run")
    assert not (tmp_path / "wandb").exists()


def test_environment_mode_wins_over_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(wandb, "init", lambda **_: pytest.fail("wandb.init must not run when WANDB_MODE=disabled"))
    assert not Tracker.start({}, tmp_path, enabled=True, project="p", mode="online").active


def test_failing_init_warns_once_and_degrades_to_local_only(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)

    def broken_init(**_):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(UserWarning, match="wandb.init failed.*no network") as caught:
        tracker = Tracker.start({}, tmp_path, enabled=True, project="p", mode="online")
    assert len(caught) == 1 and not tracker.active
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # later calls are silent no-ops
        tracker.log_step(0, {"sigma": 1.0})
        tracker.finish({"summary": {}}, tmp_path)


def test_failing_log_call_warns_and_switches_tracking_off(tmp_path):
    class BrokenRun:
        calls = 0

        def log(self, _payload):
            BrokenRun.calls += 1
            raise ConnectionError("upload failed")

    tracker = Tracker(BrokenRun())
    with pytest.warns(UserWarning, match="W&B tracking stopped.*upload failed"):
        tracker.log_step(0, {"sigma": 1.0})
    assert not tracker.active
    tracker.log_step(1, {"sigma": 1.0})
    tracker.finish({"summary": {}}, tmp_path)
    assert BrokenRun.calls == 1


def test_bad_mode_is_refused_with_the_valid_ones(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(ValueError, match="online, offline, disabled"):
        Tracker.start({}, tmp_path, enabled=True, project="p", mode="sometimes")
