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
import torch
import yaml
from PIL import Image

from commands.report import PAPER_NUMBERS, collect, main, paper_mismatch, run_row, varying
from common.evaluation.finish import finish_run
from common.evaluation.report_page import describe, task_label
from common.evaluation.summary import summarize
from common.results.run_dir import RunDirectory
from tests.helpers.browser import needs_chromium, render
from tests.helpers.wandb_log import decode

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
    rows, metrics, skipped = collect([results])
    assert metrics == ["psnr", "ssim", "lpips"]
    assert [(r["dataset"], r["task"], r["sampler"]) for r in rows] == [
        ("test-ffhq", "inpainting_rand", "edm_daps"), ("test-ffhq", "phase_retrieval", "edm_daps"),
        ("test-imagenet", "hdr", "sd_edm_daps")]


def test_papers_are_put_beside_rows_whose_protocol_matches(paper_protocol_runs):
    rows, _, _ = collect([paper_protocol_runs], papers=PAPER_NUMBERS)
    sources = [r["source"] for r in rows]
    assert len(rows) == 4  # 2 runs + the DAPS Table 1 row of each task
    pr = rows[sources.index(str(paper_protocol_runs / "a")) + 1]
    assert (pr["source"], pr["sampler"], pr["task"]) == ("DAPS CVPR 2025 Table 1", "DAPS", "phase_retrieval")
    assert (pr["psnr_mean"], pr["psnr_std"], pr["lpips_mean"]) == (30.63, 3.13, 0.139)
    inpaint = rows[sources.index(str(paper_protocol_runs / "b")) + 1]
    assert inpaint["psnr_mean"] == 31.12 and inpaint["psnr_std"] is None


def test_a_folder_named_ffhq_is_not_the_papers_protocol(results):
    """The fixture's runs sit under pixel/ffhq/ on dataset/test-ffhq but record no verified list: no paper row."""
    rows, _, _ = collect([results], papers=PAPER_NUMBERS)
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
    rows, _, _ = collect([run], papers=PAPER_NUMBERS)
    assert len(rows) == 1 and reason in rows[0]["paper_note"]
    paper = {"method": "DAPS", "task": "phase_retrieval", "dataset": "ffhq", "space": "pixel", "images": "100",
             "sigma_y": "0.05"}
    assert reason in paper_mismatch(run_row(run), paper)


def test_toy_priors_never_stand_beside_a_paper_row(tmp_path):
    run = make_run(tmp_path / "demo", task=PHASE_RETRIEVAL, dataset_root="dataset/test-ffhq",
                   model={"name": "gaussian_demo"}, sampler="edm_daps", task_group="pixel", values=hundred(30.0),
                   protocol=paper_protocol())
    out = io.StringIO()
    rows, _, _ = collect([run], papers=PAPER_NUMBERS)
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
    rows, _, _ = collect([tmp_path])
    assert varying(rows) == ["steps", "seed"]  # runs per image is the same
    assert (rows[1]["steps"], rows[1]["wall_s_per_sample"]) == ("num_steps=200", 15.0)
    assert main([str(tmp_path), "--md", str(tmp_path / "t.md")]) == 0
    table = (tmp_path / "t.md").read_text()
    assert "| sampler | sampler steps | seed | PSNR |" in table and "| wall s / sample |" in table
    assert "| edm_daps (DAPS) | num_steps=200 | 2 | 30.00 |" in table and "| **15.00** |" not in table
    assert "All rows: dataset test-ffhq; task phase_retrieval; model ffhq256; images 1; runs 1." in table
    assert str(a) in table


def test_html_page_links_every_run_relatively(results, tmp_path):
    page = tmp_path / "page" / "comparison.html"
    page.parent.mkdir()
    run = results / "pixel/ffhq/task=phase_retrieval"
    (run / "grid_results.png").write_bytes(b"png")
    assert main([str(results), "--html", str(page)]) == 0
    text = page.read_text()
    assert 'href="../results/pixel/ffhq/task=phase_retrieval/report.html"' in text
    assert "inside .submitit, a hidden folder" in text  # what was skipped, and why
    assert "http" not in text.replace("http-equiv", "")


def test_module_runs_from_the_command_line(results):
    done = subprocess.run([sys.executable, "-m", "commands.report", str(results)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "| edm_daps (DAPS) | test-ffhq | phase_retrieval |" in done.stdout
    assert "found 3 run folder(s), skipped 1" in done.stderr


def test_cli_writes_markdown_and_csv(paper_protocol_runs, tmp_path, capsys):
    out_csv, out_md = tmp_path / "table.csv", tmp_path / "table.md"
    assert main([str(paper_protocol_runs), "--papers", "--csv", str(out_csv), "--md", str(out_md)]) == 0
    printed = capsys.readouterr().out
    assert printed == out_md.read_text()
    ours = "| edm_daps (DAPS) | phase_retrieval | 30.50 ± 0.50 | 0.800 ± 0.000 | 0.100 ± 0.000 | 0 / 100 |"
    assert f"{ours} {paper_protocol_runs / 'a'} |" in printed
    # the papers' rows keep their statistic and say which
    assert ("| DAPS, published (one sample per image) | inpainting_rand | 31.12 | 0.844 | 0.098 |  | "
            "DAPS CVPR 2025 Table 1 |") in printed
    assert "| DAPS, published (oracle best of 4 runs) | phase_retrieval | 30.63 ± 3.13 |" in printed
    table = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(table) == 4 and set(table[0]) >= {"dataset", "task", "sampler", "model", "psnr_mean", "lpips_std",
                                                  "seed", "runs", "steps", "model_calls", "wall_s_per_sample",
                                                  "residual_ratio", "coverage_1std", "label"}
    assert [row["source"] for row in table][1::2] == ["DAPS CVPR 2025 Table 1"] * 2
    assert math.isclose(float(table[0]["psnr_mean"]), 31.5)


def test_set_metrics_get_a_column_beside_the_papers_fid(paper_protocol_runs):
    run = paper_protocol_runs / "a"
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["set_metrics"] = {"num_samples": 100, "num_references": 100, "biased_small_set": True, "fid": 61.5,
                              "kid": None}
    (run / "metrics.json").write_text(json.dumps(metrics))
    rows, names, _ = collect([paper_protocol_runs], papers=PAPER_NUMBERS)
    assert names == ["psnr", "ssim", "lpips", "fid"]  # kid is null: no column
    ours = next(r for r in rows if r["source"] == str(run))
    paper = rows[rows.index(ours) + 1]
    assert (ours["fid_mean"], ours["fid_std"], paper["fid_mean"]) == (61.5, None, 42.71)
    assert rows[0].get("fid_mean") is None  # a run without set metrics


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no run folder" in capsys.readouterr().err
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
    rows, _, _ = collect([run], papers=PAPER_NUMBERS)
    assert len(rows) == 2, rows
    paper = rows[1]
    assert (paper["source"], paper["sampler"], paper["task"]) == ("DAPS CVPR 2025 Table 1", method, "down_sampling")
    assert paper["psnr_mean"] == psnr


# ------------------------------------------------------------------ the comparison page of a sampler sweep
SWEEP = ("edm_daps", "dps", "ddrm", "ddnm", "pigdm", "mmps", "diffpir", "reddiff")
PIXELS = 32


def picture(seed: int) -> torch.Tensor:
    return torch.rand(3, PIXELS, PIXELS, generator=torch.Generator().manual_seed(seed)) * 2 - 1


#: the settings the README's comparison line composes (the DAPS ones make the longest "sampler steps" cell)
SWEEP_SETTINGS = {"edm_daps": {"annealing_scheduler_config": {"num_steps": 200}, "diffusion_scheduler_config": {
    "num_steps": 5}, "mcmc_sampler_config": {"num_steps": 100}}, "dps": {"num_steps": 1000}, "ddrm": {"num_steps": 20}}


def sampled_run(path: Path, sampler: str, spread: float, images: int = 2, runs: int = 2) -> Path:
    """A finished run folder as a real sweep job leaves it (samples, raw floats, posterior maps, pages, provenance
    with the sampler's config name), its samples scattered around the truth by ``spread``; no sampling."""
    directory = RunDirectory(path)
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({
        "data": {"name": "demo", "resolution": PIXELS}, "model": {"name": "gaussian_demo"}, "task_group": "gaussian",
        "task": {"gaussian": {"operator": {"name": "down_sampling", "sigma": 0.05}}},
        "sampler": {"name": sampler, **SWEEP_SETTINGS.get(sampler, {"num_steps": 100})},
        "num_runs": runs, "seed": 42}))
    for i in range(images):
        truth = picture(i)
        directory.write_inputs(i, truth, truth[:, ::4, ::4], {}, (PIXELS, PIXELS), raw=True)
        for r in range(runs):
            sample = (truth + spread * picture(100 * i + r + 7)).clamp(-1, 1)
            directory.write_sample(i, r, sample, {"name": f"im{i}.png", "psnr": 30 - 20 * spread + r, "ssim": 0.8,
                                                   "residual": spread, "residual_ratio": 10 * spread,
                                                   "model_calls": 100, "model_backward": 100, "failed_at_step": None},
                                   raw=True)
    finish_run(directory, ["psnr", "ssim"], {i: f"im{i}.png" for i in range(images)})
    (path / "provenance.json").write_text(json.dumps({"invocations": [
        {"choices": {"sampler": "demo" if sampler == "edm_daps" else sampler}, "wall_s": 4.0, "ended": "now",
         "exit_code": 0}]}))
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/cmp: the 8 samplers of the README's comparison line, each in its job folder, nested one level."""
    root = tmp_path_factory.mktemp("cmp")
    for k, sampler in enumerate(SWEEP):
        sampled_run(root / "sweep" / f"sampler={sampler}", sampler, spread=0.05 + 0.05 * k)
    (root / "sweep" / "unfinished").mkdir()
    (root / "sweep" / "unfinished" / "config.yaml").write_text("{}")
    return root


def test_sweep_rows_are_labelled_by_config_and_method_with_the_best_marked(sweep, tmp_path, capsys):
    assert main([str(sweep), "--md", str(tmp_path / "t.md"), "--csv", str(tmp_path / "t.csv")]) == 0
    printed = capsys.readouterr()
    assert "skipped" in printed.err and "unfinished: config.yaml but no metrics.json" in printed.err
    table = (tmp_path / "t.md").read_text()
    assert table.startswith("Metric columns: the mean over each image's runs")
    for label in ("demo (DAPS)", "dps (DPS)", "pigdm (ΠGDM)", "mmps (MMPS)", "reddiff (RED-diff)"):
        assert f"| {label} |" in table
    head = next(line for line in table.splitlines() if line.startswith("| sampler"))
    assert "PSNR of mean" in head and "1σ coverage (exact sampler 0.436)" in head and "residual / σ√m" in head
    demo = next(line for line in table.splitlines() if line.startswith("| demo (DAPS)"))
    assert "**29.50 ± 0.00**" in demo  # the smallest spread: best PSNR (two images, the same values)
    dps = next(line for line in table.splitlines() if line.startswith("| dps (DPS)"))
    assert "| **1.00** |" in dps and "| 0.50 |" in demo  # residual ratio 10 × spread: 1 is the best
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert len(rows) == 8 and float(rows[0]["wall_s_per_sample"]) == pytest.approx(1.0)
    assert {"psnr_of_mean", "coverage_1std", "coverage_1std_expected", "residual_ratio", "diverged"} <= set(rows[0])


def test_one_image_and_one_run_show_no_spread(tmp_path, capsys):
    sampled_run(tmp_path / "a", "dps", 0.1, images=1, runs=1)
    assert main([str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "±" not in out.split("\n\n", 2)[2] and "one image: no spread shown" in out


def test_comparison_png_has_a_table_and_one_row_of_every_sampler(sweep, tmp_path):
    png = tmp_path / "cmp.png"
    assert main([str(sweep), "--png", str(png), "--crop", "4,4,8"]) == 0
    with Image.open(png) as image:
        width, height = image.size
    # 2 context columns + 8 samplers of 128-px tiles, 2 images x (sample, mean, std, crop) rows under the table
    assert width >= 10 * 128 and height >= 8 * 128


def test_wandb_offline_logs_the_comparison_png(sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main([str(sweep), "--png", str(tmp_path / "c.png"), "--wandb", "--wandb-mode", "offline"]) == 0
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    assert decode(folder)["summary"]["comparison/_type"] == "image-file"
    assert len(list((folder / "files" / "media" / "images").glob("comparison_*.png"))) == 1


@pytest.mark.browser
@needs_chromium
def test_comparison_page_fits_1400_px_with_every_sampler_in_one_row(sweep, tmp_path):
    page = tmp_path / "page.html"
    assert main([str(sweep), "--html", str(page)]) == 0
    text = page.read_text()
    assert "Metric columns: the mean over each image" in text and "1 skipped" in text
    assert "demo (DAPS)" in text and text.count("colour_bar.png") == 1  # one std scale for all samplers
    found = render(page, tmp_path / "page.png", height=1600)
    assert found["broken"] == [] and found["images"] == 1 + 2 * (2 + 3 * 8 + 1 + 8)
    assert found["scroll_width"] <= 1400  # no horizontal scroll
    assert found["sample_rows"] == [[10, 1], [10, 1]]  # ground truth, y and the 8 samples at one height
