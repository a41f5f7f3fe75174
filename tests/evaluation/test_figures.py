"""Labelled figures (common.evaluation.figures) and the run page (common.evaluation.report_page) on a small
synthetic run directory."""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from common.evaluation import figures
from common.evaluation.finish import finish_run
from common.results.run_dir import RunDirectory
from common.run.progress import Progress
from tests.helpers.browser import needs_chromium, render

SIZE, IDS, RUNS = 16, (3, 7), 2
METRICS = ["psnr", "ssim", "lpips"]


def pixels(path_or_image: Path | Image.Image) -> np.ndarray:
    image = Image.open(path_or_image) if isinstance(path_or_image, Path) else path_or_image
    return np.asarray(image.convert("RGB")).astype(np.int16)


def random_image(seed: int) -> torch.Tensor:
    return torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def find_tile(canvas: np.ndarray, tile: np.ndarray) -> tuple[int, int]:
    """(row, column) of the one place where ``tile`` appears exactly in ``canvas``."""
    h, w, _ = tile.shape
    ys, xs = np.nonzero(np.all(canvas == tile[0, 0], axis=-1))
    hits = [(y, x) for y, x in zip(ys, xs) if np.array_equal(canvas[y:y + h, x:x + w], tile)]
    assert len(hits) == 1, f"tile found {len(hits)} times"
    return hits[0]


def has_ink(region: np.ndarray) -> bool:
    """Text drawn: some dark pixels on the white background."""
    return bool((region.max(-1) < 140).any())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two images × two runs with metrics, raw samples (posterior maps) and trajectories, then finish()."""
    root = tmp_path_factory.mktemp("run")
    directory = RunDirectory(root)
    (root / "config.yaml").write_text(yaml.safe_dump({
        "data": {"name": "skimage", "resolution": SIZE}, "model": {"name": "gaussian_demo"}, "task_group": "pixel",
        "task": {"pixel": {"operator": {"name": "down_sampling", "sigma": 0.05}}}, "sampler": {"name": "edm_daps"},
        "num_runs": RUNS, "seed": 7, "batch_size": 10}))
    for n, image_id in enumerate(IDS):
        gt = random_image(n)
        directory.write_inputs(image_id, gt, gt[:, ::4, ::4], {}, (SIZE, SIZE), raw=True)
        for r in range(RUNS):
            sample = (gt + 0.2 * random_image(100 + 10 * n + r)).clamp(-1, 1)
            record = {"name": f"img{image_id}.png", "residual": 0.1, "failed_at_step": None,
                      "psnr": 20.0 + r, "ssim": 0.5, "lpips": 0.25}
            frames = {k: [random_image(1000 + s) for s in range(3)] for k in ("x0hat", "x0y", "x_t")}
            strip = figures.trajectory_files(frames, [0, 5, 9], [("sigma", 80.0), ("sigma", 1.5), ("sigma", 0.01)],
                                             10, video=True)
            directory.write_trajectory(image_id, r, *strip)
            directory.write_sample(image_id, r, sample, record, raw=True)
    finish_run(directory, METRICS, {i: f"img{i}.png" for i in IDS})
    return root


def test_grid_tiles_are_enlarged_and_every_row_and_column_is_labelled(run):
    grid = pixels(run / "grid_results.png")
    sample = figures.enlarge(Image.open(run / "samples" / "00003_run0001.png").convert("RGB"))
    assert sample.size == (128, 128)  # 16 px x 8, nearest neighbour
    y, x = find_tile(grid, pixels(sample))
    gt_y, gt_x = find_tile(grid, pixels(figures.enlarge(Image.open(run / "inputs" / "00003_gt.png").convert("RGB"))))
    assert gt_x == x and gt_y < y  # the same column, ground truth above the samples
    assert has_ink(grid[y:y + 128, :x])  # row label left of the tile ("sample, run 1")
    assert has_ink(grid[:gt_y, x:x + 128])  # column name above the first row
    assert has_ink(grid[y + 128:y + 150, x:x + 128])  # the sample's metrics under it
    assert not has_ink(grid[gt_y + 128:gt_y + 132, gt_x:gt_x + 128])  # the ground truth has no caption


def test_grid_std_row_has_a_colour_bar_in_image_units(run):
    grid = pixels(run / "grid_results.png")
    std = figures.enlarge(Image.open(run / "uncertainty" / "00007_std.png").convert("RGB"))
    y, _ = find_tile(grid, pixels(std))
    below = grid[y + 128:]
    red, green, blue = below[..., 0], below[..., 1], below[..., 2]
    # the bar runs black -> red -> yellow -> white: saturated reds and yellows appear only there
    assert ((red > 200) & (green < 60) & (blue < 60)).sum() > 50
    assert ((red > 200) & (green > 200) & (blue < 60)).sum() > 50


def test_caption_text_is_the_records_metrics():
    caption = figures.metric_caption({"psnr": 21.234, "ssim": 0.61234, "lpips": None, "lpips_alex": 0.3},
                                     ["psnr", "ssim", "lpips", "lpips_alex"])
    assert caption == "PSNR 21.23\nSSIM 0.612\nLPIPS-A 0.300"


def test_trajectory_strip_labels_rows_and_writes_sigma_or_t_per_column():
    frames = {k: [random_image(10 * j + s) for s in range(4)] for j, k in enumerate(("x0hat", "x_t"))}
    steps = [0, 3, 6, 9]
    a = figures.trajectory_strip(frames, steps, [("sigma", v) for v in (80.0, 8.0, 0.8, 0.08)])
    b = figures.trajectory_strip(frames, steps, [("sigma", v) for v in (70.0, 7.0, 0.7, 0.07)])
    c = figures.trajectory_strip(frames, steps, [("t", v) for v in (999, 666, 333, 0)])
    assert a.size == b.size == c.size and a.size[1] >= 2 * 128
    pa, pb = pixels(a), pixels(b)
    y, x = find_tile(pa, pixels(figures.enlarge(figures.to_pil(frames["x0hat"][0]))))
    assert has_ink(pa[y:y + 128, :x])  # the row label x̂₀
    differ = np.nonzero((pa != pb).any(-1).any(-1))[0]
    assert len(differ) and differ.max() < y  # only the σ captions above the tiles change
    assert not np.array_equal(pa[:y], pixels(c)[:y])
    assert figures.trajectory_strip({"x0hat": []}, [], []) is None


def test_progress_records_the_noise_level_of_each_frame():
    def state(step: int, **extra):
        return {"step": step, "num_steps": 5, "finite": torch.ones(1, dtype=torch.bool), "decode": lambda x: x,
                "x0hat": torch.zeros(1, 3, 4, 4), **extra}

    daps = Progress(1, record_frames=True, points=3)
    dps = Progress(1, record_frames=True, points=3)
    for step in range(5):
        daps(state(step, sigma=torch.tensor(10.0 / (step + 1))))
        dps(state(step, t=999 - step, sigma=0.5))
    assert daps.frame_steps == [0, 2, 4] and dps.frame_steps == [0, 2, 4]
    assert daps.frame_times == [("sigma", 10.0), ("sigma", pytest.approx(10 / 3)), ("sigma", 2.0)]
    assert dps.frame_times == [("t", 999.0), ("t", 997.0), ("t", 995.0)]  # DPS: the timestep
    assert daps.num_steps == 5 and len(daps.frames[0]["x0hat"]) == 3


def test_video_frames_are_viewable_and_carry_their_step(run):
    with Image.open(run / "trajectory" / "00003_run0000.gif") as video:
        assert video.n_frames == 3 and video.width >= 3 * 128 and video.height >= 128 + 20
        heads = []
        for index in range(video.n_frames):
            video.seek(index)
            heads.append(pixels(video.convert("RGB"))[:22])
    assert all(has_ink(h) for h in heads) and not np.array_equal(heads[0], heads[1])


def test_calibration_axis_labels_do_not_overlap():
    image = pixels(figures.calibration_figure([min(1.0, k / 2) for k in figures.uncertainty.FIGURE_LEVELS], runs=4))
    ink = image.max(-1) < 140
    frame_left = int(np.nonzero(ink.mean(0) > 0.5)[0][0])  # the plot frame's left edge
    frame_bottom = int(np.nonzero(ink.mean(1) > 0.5)[0][-1])
    columns = ink[40:frame_bottom - 10, :frame_left - 5].any(0)  # y label | tick numbers, left of the frame
    runs = np.diff(np.r_[0, columns.astype(int), 0])
    assert (runs == 1).sum() >= 2  # two separate groups of ink columns: a gap between label and numbers
    rows = ink[frame_bottom + 2:, frame_left + 10:].any(1)  # tick numbers, then the x-axis label below them
    assert (np.diff(np.r_[0, rows.astype(int), 0]) == 1).sum() >= 2


def test_report_page_references_only_existing_files(run):
    page = (run / "report.html").read_text()
    references = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len([r for r in references if r.endswith(".png")]) >= 1 + 2 * (2 + RUNS + 2 + 1)
    for reference in references:
        assert not re.match(r"^[a-z]+:", reference), f"{reference} is not a relative path"
        assert (run / reference).is_file(), f"report.html references missing {reference}"
    for text in ("Settings that differ from the defaults", "num_runs", "best (oracle)", "best (residual)",
                 "PSNR of the posterior mean", "minimum-mean-squared-error", "calibration", "img7"):
        assert text in page, text
    assert "20.50 ± 0.50" in page  # psnr mean ± std over the two runs


def test_labelled_grid_needs_a_picture():
    with pytest.raises(ValueError, match="at least one picture"):
        figures.labelled_grid(["a"], [("row", [figures.Tile(None)])])
    buffer = io.BytesIO()
    figures.labelled_grid(["a"], [("row", [figures.Tile(figures.to_pil(random_image(0)))])]).save(buffer, "PNG")
    assert buffer.tell() > 0


@pytest.mark.browser
@needs_chromium
def test_report_page_loads_every_image_in_a_browser(run, tmp_path):
    found = render(run / "report.html", tmp_path / "report.png")
    assert found["images"] >= 1 + 2 * (2 + RUNS + 2 + 1) and found["broken"] == []
    assert found["scroll_width"] <= 1400
    with Image.open(tmp_path / "report.png") as shot:
        assert shot.size == (1400, 2400) and len(set(shot.convert("L").getdata())) > 20  # not a blank page
    # the probe can fail: a page with a missing picture reports it
    missing = run / "missing.html"
    missing.write_text('<!DOCTYPE html><html><body><img src="grid_results.png"><img src="nowhere.png"></body></html>')
    found = render(missing, tmp_path / "missing.png")
    assert (found["images"], found["broken"]) == (2, ["nowhere.png"])
    missing.unlink()


@pytest.mark.browser
@needs_chromium
def test_cross_run_page_loads_every_picture_in_a_browser(run, tmp_path):
    from commands.report import main

    page = tmp_path / "pages" / "comparison.html"
    page.parent.mkdir()
    assert main([str(run), "--html", str(page)]) == 0
    found = render(page, tmp_path / "comparison.png")
    assert found["images"] >= 2 + 3 * RUNS and found["broken"] == [] and found["scroll_width"] <= 1400
