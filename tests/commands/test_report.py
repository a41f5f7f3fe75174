"""commands.report on synthetic run directories (metrics.json built by common.evaluation.summary.summarize)."""
from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from commands.report import PAPER_NUMBERS, collect, main, paper_mismatch, run_row, varying
from common.evaluation.report_page import describe, task_label
from common.evaluation.summary import summarize

METRICS = ["psnr", "ssim", "lpips"]
REPO = Path(__file__).resolve().parents[2]
PHASE_RETRIEVAL = {"name": "phase_retrieval", "resolution": 256, "oversample": 2.0, "sigma": 0.05, "state": None,
                   "shared_state": False}
INPAINTING_RAND = {"name": "inpainting", "resolution": 256, "mask_type": "random", "mask_prob_range": [0.7, 0.71],
                   "sigma": 0.05, "state": None, "shared_state": False}
DDPM = {"name": "ddpm", "checkpoint": "checkpoints/ffhq256.pt"}


def paper_protocol(id_list: str = "test-ffhq", verified: bool = True, seed: int = 42, runs: int = 1) -> dict:
    """protocol.json's data block as an ImageFolder with a checksum list writes it."""
    return {"data": {"dataset": "image", "root": f"dataset/{id_list}", "id_list": id_list, "verified": verified},
            "seed": seed, "num_runs": runs}


def make_run(path: Path, *, task: dict, dataset_root: str, model: dict, sampler: str, task_group: str,
             values: dict[int, list[tuple[float, float, float]]], protocol: dict | None = None,
             sampler_settings: dict | None = None) -> Path:
    """A run directory with config.yaml and metrics.json; values[image_id] = [(psnr, ssim, lpips) per run]."""
    records = [{"image_id": i, "run": r, "name": f"{i:05d}.png", "psnr": p, "ssim": s, "lpips": lp,
                "residual": 1.0 / (1 + r), "failed_at_step": None}
               for i, runs in values.items() for r, (p, s, lp) in enumerate(runs)]
    path.mkdir(parents=True)
    config = {"data": {"name": "image", "root": dataset_root}, "model": model, "task_group": task_group,
              "task": {task_group: {"operator": task}}, "sampler": {"name": sampler, **(sampler_settings or {})}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    summary = summarize(records, METRICS, {})
    if protocol is not None:
        summary["protocol"] = protocol
    (path / "metrics.json").write_text(json.dumps(summary))
    return path


def hundred(psnr: float) -> dict[int, list[tuple[float, float, float]]]:
    """100 images (the papers' test-set size), one run each."""
    return {i: [(psnr + (i % 2), 0.8, 0.1)] for i in range(100)}


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    make_run(root / "pixel/ffhq/task=phase_retrieval", task=PHASE_RETRIEVAL,
             dataset_root="dataset/test-ffhq", model=DDPM, sampler="edm_daps", task_group="pixel",
             values={0: [(20.0, 0.5, 0.4), (30.0, 0.9, 0.1)], 1: [(25.0, 0.7, 0.2), (21.0, 0.6, 0.3)]})
    make_run(root / "pixel/ffhq/task=inpainting_rand", task=INPAINTING_RAND,
             dataset_root="dataset/test-ffhq", model=DDPM, sampler="edm_daps", task_group="pixel",
             values={0: [(31.0, 0.8, 0.1)], 1: [(29.0, 0.8, 0.1)]})
    make_run(root / "sd/imagenet/task=hdr", task={"name": "high_dynamic_range"},
             dataset_root="dataset/test-imagenet", model={"name": "stable_diffusion",
                                                          "config_name": "stable-diffusion-v1.5"},
             sampler="sd_edm_daps", task_group="sd", values={3: [(24.0, 0.7, 0.2)]})
    hidden = make_run(root / "pixel/ffhq/.submitit/job", task={"name": "hdr"}, dataset_root="x",
                      model=DDPM, sampler="edm_daps", task_group="pixel", values={0: [(1.0, 0.0, 1.0)]})
    assert hidden.exists()
    return root


@pytest.fixture()
def paper_protocol_runs(tmp_path: Path) -> Path:
    """Two runs on the papers' protocol (verified test-ffhq list, 100 images, published task settings)."""
    root = tmp_path / "protocol"
    make_run(root / "a", task=PHASE_RETRIEVAL, dataset_root="dataset/test-ffhq", model=DDPM, sampler="edm_daps",
             task_group="pixel", values=hundred(30.0), protocol=paper_protocol())
    make_run(root / "b", task=INPAINTING_RAND, dataset_root="dataset/test-ffhq", model=DDPM, sampler="edm_daps",
             task_group="pixel", values=hundred(31.0), protocol=paper_protocol())
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


def test_papers_are_put_beside_rows_whose_protocol_matches(paper_protocol_runs):
    rows, _ = collect([paper_protocol_runs], papers=PAPER_NUMBERS)
    sources = [r["source"] for r in rows]
    assert len(rows) == 4  # 2 runs + the DAPS Table 1 row of each task
    pr = rows[sources.index(str(paper_protocol_runs / "a")) + 1]
    assert (pr["source"], pr["sampler"], pr["task"]) == ("DAPS CVPR 2025 Table 1", "DAPS", "phase_retrieval")
    assert (pr["psnr_mean"], pr["psnr_std"], pr["lpips_mean"]) == (30.63, 3.13, 0.139)
    inpaint = rows[sources.index(str(paper_protocol_runs / "b")) + 1]
    assert inpaint["psnr_mean"] == 31.12 and inpaint["psnr_std"] is None


def test_a_folder_named_ffhq_is_not_the_papers_protocol(results):
    """The fixture's runs sit under pixel/ffhq/ on dataset/test-ffhq but record no verified list: no paper row."""
    rows, _ = collect([results], papers=PAPER_NUMBERS)
    assert len(rows) == 3 and not any(r.get("paper") for r in rows)
    notes = [r.get("paper_note") or "" for r in rows]
    assert sum("test list verified by checksum" in n for n in notes) == 2


@pytest.mark.parametrize("change, reason", [
    ({"model": {"name": "gaussian_demo"}}, "not a pixel diffusion network"),
    ({"model": {"name": "gmm"}}, "not a pixel diffusion network"),
    ({"protocol": paper_protocol("demo-ffhq")}, "test list"),
    ({"protocol": paper_protocol(verified=False)}, "verified=False"),
    ({"values": {i: [(30.0, 0.8, 0.1)] for i in range(10)}}, "10 images, the paper used 100"),
    ({"task": {**PHASE_RETRIEVAL, "sigma": 0.1}}, "noise sigma=0.1"),
    ({"task": {**PHASE_RETRIEVAL, "oversample": 1.0}}, "task setting oversample=1.0"),
])
def test_each_protocol_difference_keeps_the_paper_row_away(tmp_path, change, reason):
    settings = {"task": PHASE_RETRIEVAL, "dataset_root": "dataset/test-ffhq", "model": DDPM, "sampler": "edm_daps",
                "task_group": "pixel", "values": hundred(30.0), "protocol": paper_protocol(), **change}
    run = make_run(tmp_path / "ffhq" / "run", **settings)
    rows, _ = collect([run], papers=PAPER_NUMBERS)
    assert len(rows) == 1 and reason in rows[0]["paper_note"]
    paper = {"method": "DAPS", "task": "phase_retrieval", "dataset": "ffhq", "space": "pixel", "images": "100",
             "sigma_y": "0.05"}
    assert reason in paper_mismatch(run_row(run), paper)


def test_toy_priors_never_stand_beside_a_paper_row(tmp_path):
    run = make_run(tmp_path / "demo", task=PHASE_RETRIEVAL, dataset_root="dataset/test-ffhq",
                   model={"name": "gaussian_demo"}, sampler="edm_daps", task_group="pixel", values=hundred(30.0),
                   protocol=paper_protocol())
    out = io.StringIO()
    rows, _ = collect([run], papers=PAPER_NUMBERS)
    assert [r["source"] for r in rows] == [str(run)]
    assert main([str(run), "--papers", "--md", str(tmp_path / "t.md")]) == 0
    out.write((tmp_path / "t.md").read_text())
    assert "DAPS CVPR 2025" not in out.getvalue() and "no paper row" in out.getvalue()


def test_columns_for_settings_that_differ_between_runs(tmp_path):
    common = {"task": PHASE_RETRIEVAL, "dataset_root": "dataset/test-ffhq", "model": DDPM, "sampler": "edm_daps",
              "task_group": "pixel", "values": {0: [(30.0, 0.8, 0.1)]}}
    a = make_run(tmp_path / "a", protocol=paper_protocol(seed=1), sampler_settings={"num_steps": 50}, **common)
    b = make_run(tmp_path / "b", protocol=paper_protocol(seed=2), sampler_settings={"num_steps": 200}, **common)
    (b / "provenance.json").write_text(json.dumps({"invocations": [
        {"wall_s": 12.5, "model_calls_per_sample": 400}, {"wall_s": 2.5, "model_calls_per_sample": 400}]}))
    rows, _ = collect([tmp_path])
    assert varying(rows) == ["steps", "seed", "model_calls", "wall_s"]  # runs per image is the same
    assert (rows[1]["steps"], rows[1]["wall_s"], rows[1]["model_calls"]) == ("num_steps=200", 15.0, 400)
    assert main([str(tmp_path), "--md", str(tmp_path / "t.md")]) == 0
    table = (tmp_path / "t.md").read_text()
    assert "| sampler steps | seed | model calls / sample | wall time (s) |" in table
    assert "| num_steps=200 | 2 | 400 | 15.0 |" in table and str(a) in table


def test_html_page_links_every_run_relatively(results, tmp_path):
    page = tmp_path / "page" / "comparison.html"
    page.parent.mkdir()
    run = results / "pixel/ffhq/task=phase_retrieval"
    (run / "grid_results.png").write_bytes(b"png")
    assert main([str(results), "--html", str(page)]) == 0
    text = page.read_text()
    assert '<img src="../results/pixel/ffhq/task=phase_retrieval/grid_results.png"' in text
    assert 'href="../results/pixel/ffhq/task=phase_retrieval/report.html"' in text
    assert "http" not in text.replace("http-equiv", "")


def test_module_runs_from_the_command_line(results):
    done = subprocess.run([sys.executable, "-m", "commands.report", str(results)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "| test-ffhq | phase_retrieval | edm_daps |" in done.stdout


def test_cli_writes_markdown_and_csv(paper_protocol_runs, tmp_path, capsys):
    out_csv, out_md = tmp_path / "table.csv", tmp_path / "table.md"
    assert main([str(paper_protocol_runs), "--papers", "--csv", str(out_csv), "--md", str(out_md)]) == 0
    printed = capsys.readouterr().out
    assert printed == out_md.read_text()
    ours = "| test-ffhq | phase_retrieval | edm_daps | ffhq256 | 100 | 30.50 ± 0.50 | 0.800 ± 0.000 | 0.100 ± 0.000 |"
    assert f"{ours} {paper_protocol_runs / 'a'} |" in printed
    assert "| ffhq | inpainting_rand | DAPS | pixel | 100 | 31.12 | 0.844 | 0.098 | DAPS CVPR 2025 Table 1 |" in printed
    table = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(table) == 4 and set(table[0]) >= {"dataset", "task", "sampler", "model", "psnr_mean", "lpips_std",
                                                  "seed", "runs", "steps", "model_calls", "wall_s"}
    assert [row["source"] for row in table][1::2] == ["DAPS CVPR 2025 Table 1"] * 2
    assert math.isclose(float(table[0]["psnr_mean"]), 31.5)


def test_set_metrics_get_a_column_beside_the_papers_fid(paper_protocol_runs):
    run = paper_protocol_runs / "a"
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["set_metrics"] = {"num_samples": 100, "num_references": 100, "biased_small_set": True, "fid": 61.5,
                              "kid": None}
    (run / "metrics.json").write_text(json.dumps(metrics))
    rows, names = collect([paper_protocol_runs], papers=PAPER_NUMBERS)
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


@pytest.mark.parametrize("box, matches", [([128, 129], True), ([64, 65], False)])
def test_box_inpainting_is_checked_at_the_runs_resolution(tmp_path, box, matches):
    """The published box follows the resolution (half the side): at 256 px it is the papers' [128, 129]."""
    task = {"name": "inpainting", "resolution": 256, "mask_type": "box", "mask_len_range": box, "sigma": 0.05,
            "state": None, "shared_state": False}
    run = make_run(tmp_path / "ffhq" / "run", task=task, dataset_root="dataset/test-ffhq", model=DDPM,
                   sampler="edm_daps", task_group="pixel", values=hundred(30.0), protocol=paper_protocol())
    paper = {"method": "DAPS", "task": "inpainting", "dataset": "ffhq", "space": "pixel", "images": "100",
             "sigma_y": "0.05"}
    reason = paper_mismatch(run_row(run), paper)
    assert (reason is None) if matches else "task setting mask_len_range=[64, 65]" in reason


@pytest.mark.parametrize("sampler, method, psnr", [("ddrm", "DDRM", 26.58), ("ddnm", "DDNM", 28.03),
                                                   ("diffpir", "DiffPIR", 26.64)])
def test_baselines_are_put_beside_their_paper_rows(tmp_path, sampler, method, psnr):
    down = {"name": "down_sampling", "resolution": 256, "scale_factor": 4, "sigma": 0.05, "state": None,
            "shared_state": False}
    run = make_run(tmp_path / sampler, task=down, dataset_root="dataset/test-ffhq", model=DDPM, sampler=sampler,
                   task_group="pixel", values=hundred(27.0), protocol=paper_protocol())
    rows, _ = collect([run], papers=PAPER_NUMBERS)
    assert len(rows) == 2, rows
    paper = rows[1]
    assert (paper["source"], paper["sampler"], paper["task"]) == ("DAPS CVPR 2025 Table 1", method, "down_sampling")
    assert paper["psnr_mean"] == psnr
