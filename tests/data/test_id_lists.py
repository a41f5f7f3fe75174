"""Image lists with SHA-256 checksums: the shipped lists, what they catch, and what a run records."""
import json
import re
import warnings

import pytest
import torch

from commands import protocol as protocol_cli
from common.data import id_lists
from common.data.datasets import IMAGE_SUFFIXES, build_dataset
from common.results import provenance
from tests.helpers.fixtures import REPO, make_images

DEMO_LISTS = ("demo-ffhq", "demo-imagenet")


@pytest.mark.parametrize("name", DEMO_LISTS)
def test_shipped_lists_match_download_sh(name):
    entries = id_lists.read_list(REPO / "configs" / "data" / f"{name}.sha256")
    assert len(entries) == 10
    pattern = rf'"data\|url\|dataset/{name}/([^|]+)\|([0-9a-f]{{64}})\|'
    published = dict(re.findall(pattern, (REPO / "download.sh").read_text()))
    assert published == dict(entries)
    assert f"id_list: {name}" in (REPO / "configs" / "data" / f"{name}.yaml").read_text()


@pytest.mark.parametrize("name", DEMO_LISTS)
def test_shipped_lists_match_the_real_demo_images(name):
    """The one check about those exact files: it needs them in dataset/ (they are not ours to commit)."""
    folder = REPO / "dataset" / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: `bash download.sh data` fetches the demo images this check is about")
    entries = id_lists.read_list(REPO / "configs" / "data" / f"{name}.sha256")
    assert [n for n, _ in entries] == sorted(p.name for p in folder.iterdir())
    assert all(id_lists.file_sha256(folder / n) == digest for n, digest in entries)


@pytest.fixture()
def copied(tmp_path):
    folder = tmp_path / "images"
    make_images(folder, [f"{i:05d}.png" for i in range(10)])
    listing = tmp_path / "list.sha256"
    listing.write_text(id_lists.write_list(folder, IMAGE_SUFFIXES))
    return folder, listing


def test_list_is_verified_and_recorded(copied):
    folder, listing = copied
    dataset = build_dataset("image", root=str(folder), resolution=8, start_id=2, end_id=4, id_list=str(listing))
    record = dataset.protocol()
    assert record["verified"] and record["id_list"] == str(listing)
    assert record["list_sha256"] == id_lists.file_sha256(listing)
    assert list(record["images"]) == ["2", "3"] and record["images"]["2"]["name"] == "00002.png"
    assert record["images"]["2"]["sha256"] == id_lists.file_sha256(folder / "00002.png")
    assert dataset[0][0] == 2 and dataset[0][1].shape == (3, 8, 8)
    json.dumps(record)  # what id_lists.json holds


def test_a_changed_image_is_caught_before_sampling(copied):
    folder, listing = copied
    build_dataset("image", root=str(folder), resolution=8, id_list=str(listing))  # intact: fine
    data = bytearray((folder / "00003.png").read_bytes())
    data[-20] ^= 0xFF
    (folder / "00003.png").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"00003.png: SHA-256 .* differs"):
        build_dataset("image", root=str(folder), resolution=8, id_list=str(listing))
    # images outside the selection are not needed, so a change there does not stop the run
    build_dataset("image", root=str(folder), resolution=8, start_id=0, end_id=3, id_list=str(listing))
    (folder / "00001.png").unlink()
    with pytest.raises(ValueError, match=r"00001.png: missing.*00003.png: SHA-256"):
        build_dataset("image", root=str(folder), resolution=8, id_list=str(listing))


def test_the_list_fixes_order_and_ids(copied, tmp_path):
    folder, listing = copied
    (folder / "extra.png").write_bytes((folder / "00000.png").read_bytes())  # not in the list: ignored
    reordered = tmp_path / "reordered.sha256"
    reordered.write_text("".join(reversed(listing.read_text().splitlines(keepends=True))))
    dataset = build_dataset("image", root=str(folder), resolution=8, id_list=str(reordered))
    assert len(dataset) == 10 and dataset.names()[0] == "00009.png"


def test_a_missing_named_list_is_skipped_with_a_warning(copied):
    folder, _ = copied
    with pytest.warns(UserWarning, match=r"no checksum list for data.id_list='test-ffhq'.*not verified"):
        dataset = build_dataset("image", root=str(folder), resolution=8, id_list="test-ffhq")
    assert not dataset.protocol()["verified"] and len(dataset) == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_dataset("image", root=str(folder), resolution=8)  # no list asked for: no notice


def test_malformed_list_and_cli(tmp_path, capsys):
    bad = tmp_path / "bad.sha256"
    bad.write_text("abc  00000.png\n")
    with pytest.raises(ValueError, match=r"bad.sha256:1: expected '<64 hex digits>  <file name>'"):
        id_lists.read_list(bad)
    folder = tmp_path / "imagenet"
    sums = make_images(folder, [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (49001, 49000)] + ["notes.txt.png"])
    assert protocol_cli.main([str(folder)]) == 0
    assert capsys.readouterr().out == "".join(f"{sums[n]}  {n}\n" for n in sorted(sums))  # sha256sum's format
    assert protocol_cli.main([str(tmp_path / "nowhere")]) == 2


def test_environment_names_the_versions():
    env = provenance.environment()
    assert env["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert env["packages"]["piq"] and env["python"].count(".") == 2
