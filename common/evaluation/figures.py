"""Labelled figures of a run directory, drawn with PIL in the DejaVu Sans font that matplotlib ships.

* :func:`run_grid`         ``grid_results.png``: one column per image (named), rows ground truth, measurement,
                           run r (each tile captioned with its metrics), posterior mean (its PSNR) and std
                           (heat map with a colour bar in image units);
* :func:`trajectory_strip` a sample's progress: rows x̂₀ (denoiser estimate), x₀ʸ (measurement-consistent
                           estimate), x_t (current noisy state), one column per recorded step captioned with
                           its step and σ (DAPS) or t (DPS);
* :func:`trajectory_video` the same as an animated GIF, one frame per recorded step;
* :func:`calibration_figure` observed posterior coverage against the exact-sampler and Gaussian references.

Tiles smaller than :data:`MIN_TILE` pixels are enlarged by an integer factor with nearest-neighbour
interpolation (each pixel a visible block, no invented detail), so 64-px demo images stay legible.
"""
from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from common.evaluation import uncertainty
from common.evaluation.summary import SCREENFUL
from common.results.run_dir import png_bytes, to_pil

MIN_TILE = 128
#: how each recorded quantity of a trajectory is labelled
FRAME_LABELS = {"x0hat": "x̂₀ denoised", "x0y": "x₀ʸ data-consistent", "x_t": "xₜ noisy"}
#: the symbol of a recorded noise level (DAPS anneals σ; DPS steps through timesteps t)
TIME_SYMBOLS = {"sigma": "σ", "t": "t"}
METRIC_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "lpips_alex": "LPIPS-A", "lpips_vgg": "LPIPS-V"}
BACKGROUND, INK, MUTED = (255, 255, 255), (20, 20, 20), (90, 90, 90)
PAD = 6


@functools.lru_cache(maxsize=None)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (``bold``: DejaVu Sans Bold) at ``size`` px, the TrueType files matplotlib ships (Greek,
    sub/superscripts included)."""
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def enlarge(image: Image.Image, minimum: int = MIN_TILE) -> Image.Image:
    """Nearest-neighbour enlargement by the smallest integer factor that makes the short side ≥ ``minimum``."""
    factor = max(1, math.ceil(minimum / min(image.size)))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def _text_size(text: str, size: int) -> tuple[int, int]:
    if not text:
        return 0, 0
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox(
        (0, 0), text, font=font(size), spacing=2)
    return right, bottom


def _fit(text: str, size: int, width: int) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if _text_size(text, size)[0] <= width:
        return text
    while text and _text_size(text + "…", size)[0] > width:
        text = text[:-1]
    return text + "…"


@dataclass
class Tile:
    """One cell of a labelled grid: a picture (None: left blank) and a caption drawn under it."""

    image: Image.Image | None
    caption: str = ""


@dataclass
class ColourBar:
    """A horizontal scale under the grid: black (0) → red → yellow → white (``vmax``), the colours of
    :func:`common.evaluation.uncertainty.heat_map`."""

    vmax: float
    label: str


def labelled_grid(columns: Sequence[str], rows: Sequence[tuple[str, Sequence[Tile]]], *,
                  colour_bar: ColourBar | None = None, title: str = "", label_size: int = 14,
                  caption_size: int = 11) -> Image.Image:
    """Rows of equally sized tiles (enlarged to ≥ :data:`MIN_TILE`) with the column names on top, the row
    names on the left, each tile's caption below it, and an optional colour bar at the bottom."""
    pictures = [t.image for _, tiles in rows for t in tiles if t.image is not None]
    if not pictures:
        raise ValueError("labelled_grid needs at least one picture")
    tile_w, tile_h = enlarge(pictures[0]).size
    captions = [[_text_size(t.caption, caption_size) for t in tiles] for _, tiles in rows]
    cell_w = max([tile_w] + [w for row in captions for w, _ in row]) + PAD
    row_h = [tile_h + (max(h for _, h in row) + PAD if any(h for _, h in row) else 0) + PAD for row in captions]
    label_w = max(_text_size(name, label_size)[0] for name, _ in rows) + 2 * PAD
    title_h = _text_size(title, label_size + 2)[1] + PAD if title else 0
    header_h = max(_text_size(c, label_size)[1] for c in columns) + PAD
    bar_h = 3 * PAD + 14 + 2 * (caption_size + 4) if colour_bar else 0
    width = max(label_w + len(columns) * cell_w + PAD,
                label_w + _text_size(colour_bar.label, caption_size)[0] + PAD if colour_bar else 0,
                _text_size(title, label_size + 2)[0] + 2 * PAD)
    height = PAD + title_h + header_h + sum(row_h) + bar_h
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PAD, PAD), title, font=font(label_size + 2), fill=INK)
    y = PAD + title_h
    for c, name in enumerate(columns):
        draw.text((label_w + c * cell_w + tile_w // 2, y), _fit(name, label_size, cell_w), font=font(label_size),
                  fill=INK, anchor="ma")
    y += header_h
    for (name, tiles), height_r in zip(rows, row_h):
        draw.text((label_w - PAD, y + tile_h // 2), name, font=font(label_size), fill=INK, anchor="rm")
        for c, tile in enumerate(tiles):
            x = label_w + c * cell_w
            if tile.image is not None:
                canvas.paste(enlarge(tile.image).resize((tile_w, tile_h), Image.NEAREST), (x, y))
            if tile.caption:
                draw.multiline_text((x, y + tile_h + 2), tile.caption, font=font(caption_size), fill=MUTED, spacing=2)
        y += height_r
    if colour_bar:
        _draw_colour_bar(draw, canvas, colour_bar, (label_w, y + PAD), min(width - label_w - 2 * PAD, 360),
                         caption_size)
    return canvas


def _draw_colour_bar(draw: ImageDraw.ImageDraw, canvas: Image.Image, bar: ColourBar, origin: tuple[int, int],
                     length: int, size: int) -> None:
    """The heat-map scale: a gradient of ``length`` px, ticks at 0, vmax/2, vmax, and its label."""
    x0, y0 = origin
    ramp = torch.linspace(0, bar.vmax, length, dtype=torch.float64).reshape(1, 1, length)
    strip = to_pil(uncertainty.heat_map(ramp, bar.vmax)).resize((length, 14), Image.NEAREST)
    canvas.paste(strip, (x0, y0))
    draw.rectangle([x0, y0, x0 + length - 1, y0 + 13], outline=INK)
    for fraction in (0.0, 0.5, 1.0):
        x = x0 + round(fraction * (length - 1))
        draw.line([x, y0 + 14, x, y0 + 18], fill=INK)
        draw.text((x, y0 + 19), f"{fraction * bar.vmax:.3g}", font=font(size), fill=INK, anchor="ma")
    draw.text((x0, y0 + 21 + size + 2), bar.label, font=font(size), fill=INK)


def colour_bar_image(bar: ColourBar, length: int = 360, size: int = 12) -> Image.Image:
    """The heat-map scale of :func:`labelled_grid` on its own (a page's shared std scale)."""
    canvas = Image.new("RGB", (max(length, _text_size(bar.label, size)[0]) + 2 * PAD, 3 * PAD + 14 + 2 * (size + 4)),
                       BACKGROUND)
    _draw_colour_bar(ImageDraw.Draw(canvas), canvas, bar, (PAD, PAD), length, size)
    return canvas


def table_image(header: Sequence[str], body: Sequence[Sequence[str]], bold: set[tuple[int, int]] = frozenset(),
                size: int = 13) -> Image.Image:
    """A drawn table: a header row, then ``body`` rows; the (row, column) cells in ``bold`` in bold type (the best
    of a column), the first column left-aligned, the others right-aligned."""
    rows = [list(header), *map(list, body)]
    # bold type is up to ~12 % wider than the regular type _text_size measures
    widths = [int(1.12 * max(_text_size(row[c], size)[0] for row in rows)) + 3 * PAD for c in range(len(header))]
    line_h = _text_size("Ag", size)[1] + 2 * PAD
    canvas = Image.new("RGB", (sum(widths) + 1, line_h * len(rows) + 1), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, sum(widths), line_h - 1], fill=(238, 238, 238))
    for r, row in enumerate(rows):
        x = 0
        for c, (text, width) in enumerate(zip(row, widths)):
            heavy = r == 0 or (r - 1, c) in bold
            at, anchor = ((x + PAD, r * line_h + line_h // 2), "lm") if c == 0 else \
                ((x + width - PAD, r * line_h + line_h // 2), "rm")
            draw.text(at, text, font=font(size, heavy), fill=INK, anchor=anchor)
            x += width
        draw.line([0, (r + 1) * line_h, sum(widths), (r + 1) * line_h], fill=(200, 200, 200))
    return canvas


def stack(pictures: Sequence[Image.Image]) -> Image.Image:
    """Pictures one under the other, left-aligned on white."""
    canvas = Image.new("RGB", (max(p.width for p in pictures), sum(p.height + PAD for p in pictures)), BACKGROUND)
    y = 0
    for picture in pictures:
        canvas.paste(picture, (0, y))
        y += picture.height + PAD
    return canvas


def metric_caption(values: Mapping[str, Any], names: Sequence[str]) -> str:
    """'PSNR 21.34' / 'SSIM 0.612' / 'LPIPS 0.301': one metric a line (narrower than a tile, so the layout does
    not depend on the values), missing ones left out."""
    return "\n".join(f"{METRIC_LABELS.get(n, n)} {values[n]:.{2 if n == 'psnr' else 3}f}"
                     for n in names if isinstance(values.get(n), (int, float)) and math.isfinite(values[n]))


def _open(path: Path) -> Image.Image | None:
    if not path.is_file():
        return None
    with Image.open(path) as image:
        return image.convert("RGB")


def run_grid(root: Path, summary: Mapping[str, Any], metric_names: Sequence[str]) -> Image.Image | None:
    """``grid_results.png`` of the run directory ``root`` from its files and ``summary`` (metrics.json):
    columns = the first :data:`~common.evaluation.summary.SCREENFUL` images (the rest are in eval.md and the page's
    cards); rows = ground truth (when known), measurement, one row per run (its metrics under each tile), the
    posterior mean (its PSNR) and the std heat map (when computed). None before any sample."""
    images = summary.get("images") or {}
    ids = sorted(int(i) for i in images)[:SCREENFUL]
    if not ids:
        return None
    runs = sorted({entry["run"] for i in ids for entry in images[str(i)]["runs"]})
    inputs, maps = root / "inputs", root / "uncertainty"
    rows: list[tuple[str, list[Tile]]] = [
        ("ground truth", [Tile(_open(inputs / f"{i:05d}_gt.png")) for i in ids]),
        ("measurement y", [Tile(_open(inputs / f"{i:05d}_measurement.png")) for i in ids])]
    for r in runs:
        row = []
        for i in ids:
            values = next((e for e in images[str(i)]["runs"] if e["run"] == r), {})
            caption = "diverged" if values.get("failed_at_step") is not None else metric_caption(values, metric_names)
            row.append(Tile(_open(root / "samples" / f"{i:05d}_run{r:04d}.png"), caption))
        rows.append((f"sample, run {r}", row))
    posterior = {i: images[str(i)].get("posterior") or {} for i in ids}
    rows.append(("posterior mean", [Tile(_open(maps / f"{i:05d}_mean.png"),
                                         metric_caption({"psnr": posterior[i].get("psnr_of_mean")}, ["psnr"]))
                                    for i in ids]))
    rows.append(("posterior std", [Tile(_open(maps / f"{i:05d}_std.png"),
                                        f"RMS {posterior[i]['std_rms']:.3f}" if posterior[i] else "") for i in ids]))
    rows = [(name, tiles) for name, tiles in rows if any(t.image is not None for t in tiles)]
    if not rows:
        return None
    vmax = (summary.get("uncertainty") or {}).get("heat_map_max")
    bar = None
    if vmax and any(name == "posterior std" for name, _ in rows):
        bar = ColourBar(vmax, "posterior std per pixel (RMS over RGB), in image units (images span [-1, 1])")
    columns = [f"{i}: {Path(str(images[str(i)].get('name') or i)).stem}" for i in ids]
    return labelled_grid(columns, rows, colour_bar=bar)


def _frame_caption(step: int, time: tuple[str, float] | None) -> str:
    if time is None:
        return f"step {step}"
    name, value = time
    return f"step {step}\n{TIME_SYMBOLS.get(name, name)} = {value:.3g}"


def trajectory_strip(frames: Mapping[str, Sequence[torch.Tensor]], steps: Sequence[int],
                     times: Sequence[tuple[str, float] | None]) -> Image.Image | None:
    """Rows x̂₀, x₀ʸ, xₜ (those recorded), one column per recorded step captioned with the step and its σ or t
    (``times[c]`` = (name, value), name 'sigma' or 't'). None when nothing was recorded."""
    keys = [k for k in FRAME_LABELS if frames.get(k)]
    if not keys:
        return None
    columns = [_frame_caption(s, t) for s, t in zip(steps, times)]
    rows = [(FRAME_LABELS[k], [Tile(to_pil(image)) for image in frames[k]]) for k in keys]
    return labelled_grid(columns, rows, label_size=13)


def trajectory_video(frames: Mapping[str, Sequence[torch.Tensor]], steps: Sequence[int],
                     times: Sequence[tuple[str, float] | None], num_steps: int | None = None,
                     duration_ms: int = 250) -> bytes | None:
    """Animated GIF, one frame per recorded step: the recorded quantities side by side (tiles ≥ 128 px, each
    labelled) under a header with the step and σ or t. None when nothing was recorded."""
    keys = [k for k in FRAME_LABELS if frames.get(k)]
    if not keys:
        return None
    pictures = []
    for c, (step, time) in enumerate(zip(steps, times)):
        header = f"step {step}" + (f" / {num_steps}" if num_steps else "")
        if time is not None:
            header += f"    {TIME_SYMBOLS.get(time[0], time[0])} = {time[1]:.3g}"
        row = [("", [Tile(to_pil(frames[k][c]), FRAME_LABELS[k]) for k in keys])]
        pictures.append(labelled_grid([""] * len(keys), row, title=header, caption_size=13))
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0)
    return buffer.getvalue()


def calibration_figure(observed: Sequence[float], runs: int,
                       levels: Sequence[float] = uncertainty.FIGURE_LEVELS) -> Image.Image:
    """Coverage P(|x − mean| ≤ k·std) against k: observed (red), an exact sampler with n = ``runs`` samples
    (blue, :func:`uncertainty.calibrated_coverage`), the Gaussian limit n → ∞ (grey). Axis labels sit outside
    the plot area and the legend in its empty lower-right corner."""
    width, height, size = 480, 380, 13
    left, right, top, bottom = 78, width - 16, 34, height - 58
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    k_max = max(levels)

    def point(k: float, p: float) -> tuple[float, float]:
        return left + (right - left) * k / k_max, bottom - (bottom - top) * p

    draw.text(((left + right) // 2, 8), f"Calibration of the posterior std ({runs} runs per image)",
              font=font(size), fill=INK, anchor="ma")
    for p in (0.0, 0.25, 0.5, 0.68, 0.95):
        _, y = point(0, p)
        draw.line([left, y, right, y], fill=(225, 225, 225))
        draw.line([left - 4, y, left, y], fill=INK)
        draw.text((left - 7, y), f"{p:.2f}", font=font(11), fill=INK, anchor="rm")
    for k in range(int(k_max) + 1):
        x, _ = point(k, 0)
        draw.line([x, bottom, x, bottom + 4], fill=INK)
        draw.text((x, bottom + 7), str(k), font=font(11), fill=INK, anchor="ma")
    draw.rectangle([left, top, right, bottom], outline=INK)
    curves = (("Gaussian limit (n → ∞)", uncertainty.gaussian_coverage(levels), (150, 150, 150)),
              (f"exact sampler, n = {runs}", uncertainty.calibrated_coverage(runs, levels), (40, 80, 220)),
              ("observed", list(observed), (220, 30, 30)))
    for _, values, colour in curves:
        draw.line([point(k, p) for k, p in zip(levels, values)], fill=colour, width=2)
    draw.text(((left + right) // 2, height - 8), "k (multiples of the posterior std)", font=font(size), fill=INK,
              anchor="md")
    y_label = Image.new("RGB", _text_size("fraction of pixels with |x − mean| ≤ k·std", size), BACKGROUND)
    ImageDraw.Draw(y_label).text((0, 0), "fraction of pixels with |x − mean| ≤ k·std", font=font(size), fill=INK)
    y_label = y_label.rotate(90, expand=True)
    image.paste(y_label, (6, (top + bottom - y_label.height) // 2))
    for row, (name, _, colour) in enumerate(curves):
        y = bottom - 16 - 18 * (len(curves) - 1 - row)
        x = right - 190
        draw.line([x, y, x + 22, y], fill=colour, width=3)
        draw.text((x + 28, y), name, font=font(12), fill=INK, anchor="lm")
    return image


def trajectory_files(frames: Mapping[str, Sequence[torch.Tensor]], steps: Sequence[int],
                     times: Sequence[tuple[str, float] | None], num_steps: int | None,
                     video: bool) -> tuple[bytes, bytes | None] | None:
    """(PNG of :func:`trajectory_strip`, GIF of :func:`trajectory_video` when ``video``) of one sample's frames;
    None when nothing was recorded."""
    strip = trajectory_strip(frames, steps, times)
    if strip is None:
        return None
    return png_bytes(strip), trajectory_video(frames, steps, times, num_steps) if video else None
