"""Planted input files: every bad image, measurement or operator-state file is refused before sampling, with
one line naming the file and what is wrong; nothing blocks on a FIFO or a device, nothing pickled is loaded."""
from __future__ import annotations

import os
import re
import signal
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import common.data.files
from common.data.datasets import MAX_PIXELS, build_dataset, image_file_problem
from common.data.operator_state import check_state, load_state_file
from common.errors import InputError
from common.operators import build_operator

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")]  # the planted sparse y


@pytest.fixture(autouse=True)
def no_hang():
    """A file read that blocks (a FIFO opened for reading) fails the test after 10 s instead of hanging."""
    def stop(signum, frame):
        raise TimeoutError("a planted file blocked the reader")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with one tiny (invalid) data chunk: Image.open reads
    only the header, so this is how a decompression bomb looks before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + \
        chunk(b"IEND", b"")


def good_png(path: Path) -> None:
    Image.fromarray(np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)).save(path)


def truncated_png(path: Path) -> None:
    good_png(path)
    path.write_bytes(path.read_bytes()[:-30])


def truncated_jpeg(path: Path) -> None:
    """A JPEG cut in half: its header is intact and PIL's verify() passes; only decoding finds it."""
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def looping_link(path: Path) -> None:
    other = path.with_name(path.name + ".other")
    other.symlink_to(path.name)
    path.symlink_to(other.name)


# planted kind -> (how to plant it at path, what the refusal says)
IMAGE_PLANTS: dict[str, tuple[Callable[[Path], object], str]] = {
    "corrupt": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n not really a png"), "not an image"),
    "truncated": (truncated_png, "corrupt"),
    "truncated_jpeg": (truncated_jpeg, r"corrupt \(OSError: image file is truncated"),
    "zero_byte": (lambda p: p.write_bytes(b""), r"empty \(0 bytes\)"),
    "non_image": (lambda p: p.write_text("just some text\n" * 20), "not an image"),
    "bomb": (lambda p: p.write_bytes(png_header(100_000, 100_000)), "too large"),
    "oversized": (lambda p: p.write_bytes(png_header(9000, 9000)), r"too large: 9000x9000 pixels"),
    "dangling_link": (lambda p: p.symlink_to("nowhere.png"), r"a dangling symbolic link \(to 'nowhere.png'\)"),
    "looping_link": (looping_link, "a symbolic link that loops"),
    "directory": (lambda p: p.mkdir(), "a directory"),
    "fifo": (lambda p: os.mkfifo(p), r"a FIFO \(named pipe\)"),
    "dev_zero": (lambda p: p.symlink_to("/dev/zero"), "a device file"),
    "nan_tiff": (lambda p: float_tiff(p, np.full((8, 8), np.nan, np.float32)), "a float image holding NaN"),
    "float_tiff_0_255": (lambda p: float_tiff(p, np.full((8, 8), 200.0, np.float32)),
                         r"a float image with values in \[200, 200\]: float images are read as intensities in"),
    "int32_tiff": (lambda p: Image.fromarray(np.full((8, 8), 70000, np.int32)).save(p, format="TIFF"),
                   "a 32-bit integer image: its value range is unknown"),
}


def float_tiff(path: Path, values: np.ndarray) -> None:
    """A 32-bit float TIFF (PIL mode F) of ``values``, at ``path`` whatever its suffix."""
    Image.fromarray(values, mode="F").save(path, format="TIFF")


def test_a_float_tiff_in_0_1_reads_as_the_image_it_holds(tmp_path):
    """A float32 TIFF in [0, 1] is read by its real range, not clipped to black by an 8-bit conversion."""
    gray = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    float_tiff(tmp_path / "a.tif", gray)
    Image.fromarray((gray * 255).round().astype(np.uint8)).save(tmp_path / "b.png")
    dataset = build_dataset("image", root=str(tmp_path), resolution=8, end_id=2)
    (_, as_float), (_, as_bytes) = dataset[0], dataset[1]
    assert as_float.mean() > -0.1 and (as_float - as_bytes).abs().max() < 2 / 255 + 1e-6


def huge_npy_header(path: Path) -> None:
    """A .npy whose header claims (100000, 100000, 100) float32 values (3.6 TiB) followed by a few bytes."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (100_000, 100_000, 100)})
        handle.write(b"\0" * 64)


@pytest.mark.parametrize("kind", sorted(IMAGE_PLANTS))
def test_each_planted_image_kind_is_refused_naming_the_file(tmp_path, kind):
    plant, message = IMAGE_PLANTS[kind]
    good_png(tmp_path / "a_good.png")
    plant(tmp_path / "b_planted.png")
    assert image_file_problem(tmp_path / "a_good.png") is None
    with pytest.raises(ValueError, match=rf"1 of 2 image files cannot be used.*\n  b_planted.png: {message}"):
        build_dataset("image", root=str(tmp_path), resolution=8, end_id=2)


def test_all_bad_images_are_listed_at_once_and_unselected_ones_are_not_read(tmp_path):
    for index, kind in enumerate(sorted(IMAGE_PLANTS)):
        IMAGE_PLANTS[kind][0](tmp_path / f"{index:02d}_{kind}.png")
    good_png(tmp_path / "zz_good.png")
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".png"))
    with pytest.raises(ValueError) as refused:
        build_dataset("image", root=str(tmp_path), resolution=8)
    lines = str(refused.value).splitlines()
    named = [line.strip().split(":")[0] for line in lines[1:-1]]
    assert named == [f for f in files if f != "zz_good.png"] and lines[-1].startswith("Remove or replace them")
    data = build_dataset("image", root=str(tmp_path), resolution=8, start_id=len(files) - 1)  # only zz_good.png
    assert data.names() == ["zz_good.png"] and data[0][1].shape == (3, 8, 8)


def test_checksum_listed_folder_never_opens_planted_files(tmp_path):
    """With data.id_list the checksums are compared first; a FIFO or a directory under a listed name is named, not
    read (hashing a FIFO would block)."""
    good_png(tmp_path / "a.png")
    listing = tmp_path / "list.sha256"
    listing.write_text(f"{'0' * 64}  fifo.png\n{'0' * 64}  dir.png\n")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ValueError, match=r"fifo.png: a FIFO \(named pipe\), not a regular file; dir.png: a directory"):
        build_dataset("image", root=str(tmp_path), resolution=8, id_list=str(listing))


def test_oversized_limit_is_the_documented_one_and_pil_settings_are_untouched(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    side = int(MAX_PIXELS ** 0.5)
    (tmp_path / "edge.png").write_bytes(png_header(side, side))
    (tmp_path / "over.png").write_bytes(png_header(side, side + 1))
    assert "too large" not in (image_file_problem(tmp_path / "edge.png") or "")  # at the limit: refused as corrupt
    assert image_file_problem(tmp_path / "over.png").startswith(f"too large: {side}x{side + 1} pixels")
    assert Image.MAX_IMAGE_PIXELS == before


def test_unreadable_file_is_refused(tmp_path, monkeypatch):
    """chmod 000 does not stop root, so the permission check is simulated for one file (and checked for real
    when not root)."""
    good_png(tmp_path / "locked.png")
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr(common.data.files.os, "access",
                            lambda path, mode: False if Path(path).name == "locked.png" else real_access(path, mode))
    else:
        (tmp_path / "locked.png").chmod(0)
    assert image_file_problem(tmp_path / "locked.png") == "unreadable (permission denied)"


# ---------------------------------------------------------------------------------------- .pt / .npy files
class Payload:
    """A class instance: what a pickled payload carries (and weights_only loading refuses)."""


def truncated_pt(path: Path) -> None:
    torch.save({"y": torch.zeros(3, 8, 8)}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


PT_PLANTS: dict[str, tuple[Callable[[Path], object], str]] = {
    "pickled": (lambda p: torch.save({"y": torch.zeros(3, 8, 8), "extra": Payload()}, p),
                "not a plain tensor file: it holds pickled Python objects"),
    "empty": (lambda p: p.write_bytes(b""), r"empty \(0 bytes\)"),
    "truncated": (truncated_pt, r"not a complete torch.save file \(truncated or damaged"),
    "garbage": (lambda p: p.write_bytes(b"garbage bytes " * 8), "not a"),
    "wrong_keys": (lambda p: torch.save({"x": torch.zeros(3, 8, 8)}, p), "unknown keys 'x'"),
    "wrong_type": (lambda p: torch.save([torch.zeros(3, 8, 8)], p), "holds a list"),
    "state_not_tensor": (lambda p: torch.save({"y": torch.zeros(3, 8, 8), "state": {"mask": [1, 0]}}, p),
                         "'mask' is a list, not a tensor"),
    "meta": (lambda p: torch.save(torch.zeros(3, 8, 8, device="meta"), p), "y is a meta tensor"),
    "sparse": (lambda p: torch.save(torch.zeros(3, 8, 8).to_sparse(), p), "y is a sparse_coo tensor"),
    "nan": (lambda p: torch.save(torch.full((3, 8, 8), float("nan")), p), "y holds NaN or infinite values"),
    "bool": (lambda p: torch.save(torch.ones(3, 8, 8, dtype=torch.bool), p), "y is a boolean tensor"),
    "absurd": (lambda p: torch.save(torch.full((3, 8, 8), 1e30), p), r"y has values up to 1e\+30"),
    "directory": (lambda p: p.mkdir(), "a directory"),
    "fifo": (lambda p: os.mkfifo(p), "FIFO"),
}
NPY_PLANTS: dict[str, tuple[Callable[[Path], object], str]] = {
    "object_array": (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
                     "an object array"),
    "truncated": (lambda p: (np.save(p, np.zeros((3, 8, 8))), p.write_bytes(p.read_bytes()[:100])),
                  "not a complete .npy file"),
    "strings": (lambda p: np.save(p, np.array(["a", "b"])), "not real numbers"),
    "inf": (lambda p: np.save(p, np.full((3, 8, 8), np.inf)), "NaN or infinite"),
    "bool": (lambda p: np.save(p, np.ones((3, 8, 8), bool)), "not real numbers"),
    "absurd": (lambda p: np.save(p, np.full((3, 8, 8), 1e30)), r"y has values up to 1e\+30"),
    "huge_header": (huge_npy_header, r"its header claims an array of shape \(100000, 100000, 100\)"),
}


@pytest.mark.parametrize("suffix,kind", [(".pt", k) for k in sorted(PT_PLANTS)] +
                         [(".npy", k) for k in sorted(NPY_PLANTS)])
def test_each_planted_measurement_kind_is_refused_in_one_line(tmp_path, suffix, kind):
    plant, message = (PT_PLANTS if suffix == ".pt" else NPY_PLANTS)[kind]
    torch.save(torch.zeros(3, 8, 8), tmp_path / "00000.pt")
    plant(tmp_path / f"00001{suffix}")
    with pytest.raises(InputError) as refused:
        build_dataset("measurements", root=str(tmp_path), resolution=8)
    text = str(refused.value)
    lines = text.splitlines()
    assert "1 of 2 measurement files cannot be used" in lines[0] and len(lines) == 2, text
    assert lines[1].strip().startswith(str(tmp_path / f"00001{suffix}") + ": ")
    assert re.search(message, lines[1]), lines[1]
    assert "weights_only" not in text and "Traceback" not in text


def test_pickled_state_file_never_runs_code(tmp_path):
    """A pickle whose loading would call a function (the classic exploit shape) is refused unread."""
    class Exploit:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))
    torch.save({"kernel": Exploit()}, tmp_path / "state.pt")
    with pytest.raises(InputError, match="not a plain tensor file") as refused:
        load_state_file(tmp_path / "state.pt")
    assert not (tmp_path / "pwned").exists() and "weights_only" not in str(refused.value)


def inpainting():
    return build_operator("inpainting", sigma=0.05, resolution=8, mask_type="random", mask_prob_range=[0.3, 0.7])


def motion_blur():
    return build_operator("motion_blur", sigma=0.05, resolution=8, kernel_size=5, intensity=0.5)


def blur_kernel(value: float = 1 / 25) -> torch.Tensor:
    return torch.full((5, 5), value)


STATE_PLANTS = {
    "nan_kernel": (motion_blur, {"kernel": blur_kernel().index_put_((torch.tensor(0), torch.tensor(0)),
                                                                    torch.tensor(float("nan")))},
                   "'kernel' holds NaN or infinite values"),
    "inf_kernel": (motion_blur, {"kernel": blur_kernel().index_put_((torch.tensor(2), torch.tensor(2)),
                                                                    torch.tensor(float("inf")))},
                   "'kernel' holds NaN or infinite values"),
    "kernel_sum_2": (motion_blur, {"kernel": blur_kernel(2 / 25)}, "'kernel' sums to 2; a blur kernel sums to 1"),
    "negative_kernel": (motion_blur, {"kernel": torch.eye(5) * 2 - blur_kernel(0.2) + blur_kernel(1 / 25)},
                        "'kernel' has negative entries"),
    "mask_not_binary": (inpainting, {"mask": torch.full((1, 8, 8), 0.5)}, r"'mask' must hold only 0 and 1"),
    "mask_two": (inpainting, {"mask": torch.full((1, 8, 8), 2.0)}, r"'mask' must hold only 0 and 1"),
    "meta_mask": (inpainting, {"mask": torch.ones(1, 8, 8, device="meta")}, "'mask' is a meta tensor"),
}


@pytest.mark.parametrize("kind", sorted(STATE_PLANTS))
def test_loaded_state_with_wrong_values_is_refused(tmp_path, kind):
    make, state, message = STATE_PLANTS[kind]
    torch.save(state, tmp_path / "state.pt")
    operator = make()
    with pytest.raises(InputError, match=message):
        check_state(operator, load_state_file(tmp_path / "state.pt"), "state.pt")


def test_valid_states_pass_the_value_checks():
    """The operators' own draws, a float 0/1 mask and a kernel of float32 rounding error are accepted."""
    from common.random import make_generator
    for operator in (inpainting(), motion_blur()):
        check_state(operator, operator.draw_state(make_generator(1, "state")), "drawn")
    check_state(inpainting(), {"mask": (torch.rand(1, 8, 8) > 0.5).float()}, "float mask")
    check_state(motion_blur(), {"kernel": blur_kernel() * (1 + 1e-6)}, "rounded kernel")


def test_state_inside_a_measurement_file_is_checked_against_the_operator(tmp_path):
    """A run's measurements/ file whose state has the wrong keys or a non-binary mask stops before sampling."""
    from tests.helpers.evaluation import exact_daps, run, small_prior
    folder = tmp_path / "y"
    folder.mkdir()
    torch.save({"y": torch.zeros(3, 8, 8), "state": {"kernel": torch.ones(5, 5) / 25}}, folder / "00000.pt")
    data = build_dataset("measurements", root=str(folder), resolution=8)
    with pytest.raises(InputError, match=r"measurement 00000.pt: operator state \{'kernel': \(5, 5\)\} does not fit "
                                         r"Inpainting, which needs \{'mask': \(1, 8, 8\)\}"):
        run(data, inpainting(), small_prior(), exact_daps(0.05, num_steps=2, mcmc_steps=1), tmp_path / "run")
    torch.save({"y": torch.zeros(3, 8, 8), "state": {"mask": torch.full((1, 8, 8), 0.5)}}, folder / "00000.pt")
    data = build_dataset("measurements", root=str(folder), resolution=8)
    with pytest.raises(InputError, match=r"measurement 00000.pt: .*'mask' must hold only 0 and 1"):
        run(data, inpainting(), small_prior(), exact_daps(0.05, num_steps=2, mcmc_steps=1), tmp_path / "run")
    assert not (tmp_path / "run" / "samples").exists()
