"""common.report on synthetic run directories (metrics.json built by common.run_dir.summarize)."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import yaml

from common.report import PAPER_NUMBERS, collect, describe, main, run_row, task_label
from common.run_dir import summarize

METRICS = ["psnr", "ssim", "lpips"]


def make_run(path: Path, *, task: dict, dataset_root: str, model: dict, sampler: str, task_group: str,
             values: dict[int, list[tuple[float, float, float]]]) -> Path:
    """A run directory with config.yaml and metrics.json; values[image_id] = [(psnr, ssim, lpips) per run]."""
    records = [{"image_id": i, "run": r, "name": f"{i:05d}.png", "psnr": p, "ssim": s, "lpips": l,
                "residual": 1.0 / (1 + r), "failed_at_step": None}
               for i, runs in values.items() for r, (p, s, l) in enumerate(runs)]
    path.mkdir(parents=True)
    config = {"data": {"name": "image", "root": dataset_root}, "model": model, "task_group": task_group,
              "task": {task_group: {"operator": task}}, "sampler": {"name": sampler}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "metrics.json").write_text(json.dumps(summarize(records, METRICS, {})))
    return path


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    ddpm = {"name": "ddpm", "checkpoint": "checkpoints/ffhq256.pt"}
    make_run(root / "pixel/ffhq/task=phase_retrieval", task={"name": "phase_retrieval"},
             dataset_root="dataset/test-ffhq", model=ddpm, sampler="edm_daps", task_group="pixel",
             values={0: [(20.0, 0.5, 0.4), (30.0, 0.9, 0.1)], 1: [(25.0, 0.7, 0.2), (21.0, 0.6, 0.3)]})
    make_run(root / "pixel/ffhq/task=inpainting_rand", task={"name": "inpainting", "mask_type": "random"},
             dataset_root="dataset/test-ffhq", model=ddpm, sampler="edm_daps", task_group="pixel",
             values={0: [(31.0, 0.8, 0.1)], 1: [(29.0, 0.8, 0.1)]})
    make_run(root / "sd/imagenet/task=hdr", task={"name": "high_dynamic_range"},
             dataset_root="dataset/test-imagenet", model={"name": "stable_diffusion",
                                                          "config_name": "stable-diffusion-v1.5"},
             sampler="sd_edm_daps", task_group="sd", values={3: [(24.0, 0.7, 0.2)]})
    hidden = make_run(root / "pixel/ffhq/.submitit/job", task={"name": "hdr"}, dataset_root="x",
                      model=ddpm, sampler="edm_daps", task_group="pixel", values={0: [(1.0, 0.0, 1.0)]})
    assert hidden.exists()
    return root


def test_task_labels_follow_the_task_configs():
    assert task_label({"name": "inpainting", "mask_type": "box"}) == "inpainting"
    assert task_label({"name": "inpainting", "mask_type": "random"}) == "inpainting_rand"
    assert task_label({"name": "high_dynamic_range"}) == "hdr"
    assert task_label({"name": "phase_retrieval"}) == "phase_retrieval"


def test_describe_reads_the_resolved_config():
    config = {"data": {"root": "dataset/test-imagenet"},
              "model": {"name": "ldm", "checkpoint": "checkpoints/ldm_imagenet256.pt"}, "task_group": "ldm",
              "task": {"ldm": {"operator": {"name": "motion_blur"}}}, "sampler": {"name": "latent_edm_daps"}}
    assert describe(config) == {"dataset": "test-imagenet", "task": "motion_blur", "sampler": "latent_edm_daps",
                                "model": "ldm_imagenet256", "task_group": "ldm"}


def test_rows_per_run_with_oracle_mean_and_runs_mean(results):
    run = results / "pixel/ffhq/task=phase_retrieval"
    oracle, mean = run_row(run, "best_oracle"), run_row(run, "mean")
    # best of each image's runs: psnr 30 and 25; ssim 0.9, 0.7; lpips (lower is better) 0.1, 0.2
    assert oracle["psnr_mean"] == pytest.approx(27.5) and oracle["psnr_std"] == pytest.approx(2.5)
    assert oracle["ssim_mean"] == pytest.approx(0.8) and oracle["lpips_mean"] == pytest.approx(0.15)
    # mean over runs per image: 25 and 23 -> 24 ± 1, the same as metrics.json's summary
    assert mean["psnr_mean"] == pytest.approx(24.0) and mean["psnr_std"] == pytest.approx(1.0)
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert mean["psnr_mean"] == pytest.approx(summary["psnr"]["mean"])
    assert oracle["psnr_mean"] == pytest.approx(summary["psnr"]["best_oracle_mean"])
    # residual-best run is run 1 (residual 1/(1+r)): psnr 30 and 21
    assert run_row(run, "best_residual")["psnr_mean"] == pytest.approx(25.5)
    assert oracle["dataset"] == "test-ffhq" and oracle["model"] == "ffhq256" and oracle["images"] == 2


def test_collect_finds_runs_sorts_them_and_skips_hidden_folders(results):
    rows, metrics = collect([results])
    assert metrics == ["psnr", "ssim", "lpips"]
    assert [(r["dataset"], r["task"], r["sampler"]) for r in rows] == [
        ("test-ffhq", "inpainting_rand", "edm_daps"), ("test-ffhq", "phase_retrieval", "edm_daps"),
        ("test-imagenet", "hdr", "sd_edm_daps")]


def test_papers_are_put_beside_the_matching_rows(results):
    rows, _ = collect([results], papers=PAPER_NUMBERS)
    sources = [r["source"] for r in rows]
    assert len(rows) == 5  # 3 runs + DAPS Table 1 rows for both FFHQ tasks; none for SD
    pr = rows[sources.index(str(results / "pixel/ffhq/task=phase_retrieval")) + 1]
    assert (pr["source"], pr["sampler"], pr["task"]) == ("DAPS CVPR 2025 Table 1", "DAPS", "phase_retrieval")
    assert (pr["psnr_mean"], pr["psnr_std"], pr["lpips_mean"]) == (30.63, 3.13, 0.139)
    inpaint = rows[sources.index(str(results / "pixel/ffhq/task=inpainting_rand")) + 1]
    assert inpaint["psnr_mean"] == 31.12 and inpaint["psnr_std"] is None


def test_cli_writes_markdown_and_csv(results, tmp_path, capsys):
    out_csv, out_md = tmp_path / "table.csv", tmp_path / "table.md"
    assert main([str(results), "--papers", "--csv", str(out_csv), "--md", str(out_md)]) == 0
    printed = capsys.readouterr().out
    assert printed == out_md.read_text()
    assert ("| test-ffhq | phase_retrieval | edm_daps | ffhq256 | 2 | 27.50 ± 2.50 | 0.800 ± 0.100 | 0.150 ± 0.050 |"
            in printed)
    assert "| ffhq | inpainting_rand | DAPS | pixel | 100 | 31.12 | 0.844 | 0.098 | DAPS CVPR 2025 Table 1 |" in printed
    table = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(table) == 5 and set(table[0]) >= {"dataset", "task", "sampler", "model", "psnr_mean", "lpips_std"}
    assert [row["source"] for row in table][1::2] == ["DAPS CVPR 2025 Table 1"] * 2
    assert math.isclose(float(table[2]["psnr_mean"]), 27.5)


def test_set_metrics_get_a_column_beside_the_papers_fid(results):
    run = results / "pixel/ffhq/task=phase_retrieval"
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["set_metrics"] = {"num_samples": 4, "num_references": 2, "biased_small_set": True, "fid": 61.5, "kid": None}
    (run / "metrics.json").write_text(json.dumps(metrics))
    rows, names = collect([results], papers=PAPER_NUMBERS)
    assert names == ["psnr", "ssim", "lpips", "fid"]  # kid is null: no column
    ours = next(r for r in rows if r["source"] == str(run))
    paper = rows[rows.index(ours) + 1]
    assert (ours["fid_mean"], ours["fid_std"], paper["fid_mean"]) == (61.5, None, 42.71)
    assert rows[0].get("fid_mean") is None  # a run without set metrics


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"summary": {}, "images": {}}))
    assert main([str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
