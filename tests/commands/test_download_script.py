"""download.sh: every path a config expects is produced by some step; parts, dry run, checksums, refetch.

The real network steps cannot run here: a stub ``curl`` first on PATH serves images the test makes (or garbage),
with the script's checksum table rewritten for them, so the verify / idempotence / mismatch logic runs offline.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.helpers.fixtures import REPO, make_images

SCRIPT = REPO / "download.sh"
LINE = re.compile(r"^\[(\w+)\] (fetch|present) (\S+)")


def run_script(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(cwd / "download.sh"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def steps(output: str) -> dict[str, str]:
    """destination -> part, from the script's output."""
    return {m.group(3): m.group(1) for m in map(LINE.match, output.splitlines()) if m}


def values(node: Any, key: str) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, str):
                yield v
            yield from values(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from values(item, key)


def expected_paths() -> set[str]:
    configs = REPO / "configs"
    load = lambda p: yaml.safe_load(p.read_text()) or {}  # noqa: E731
    out = {c for group in ("model", "task") for p in (configs / group).glob("*.yaml")
           for c in values(load(p), "checkpoint")}
    out |= {r for p in (configs / "data").glob("*.yaml") for r in values(load(p), "root")}
    out |= {f"hf:{m}" for p in (configs / "model").glob("*.yaml") for m in values(load(p), "model_id")}
    return out


@pytest.fixture()
def torch_home(tmp_path: Path) -> Path:
    return tmp_path / "torch"


def test_dry_run_covers_every_path_the_configs_expect(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    result = run_script("--dry-run", env={"TORCH_HOME": str(torch_home)})
    assert result.returncode == 0, result.stderr
    produced = steps(result.stdout)
    expected = expected_paths()
    assert {"checkpoints/ffhq256.pt", "checkpoints/GOPRO_wVAE.pth", "dataset/test-ffhq"} <= expected
    missing = {p for p in expected
               if p not in produced and not any(d.startswith(p.rstrip("/") + "/") for d in produced)}
    assert not missing, f"no download step produces {sorted(missing)}"
    from common.evaluation.metrics import (
        ORIGINAL_LPIPS,
        inception_weight_path,
        lpips_weight_paths,
        original_lpips_paths,
    )
    for path in [*lpips_weight_paths().values(), *(original_lpips_paths(n)["backbone"] for n in ORIGINAL_LPIPS)]:
        assert produced.get(str(path)) == "lpips", f"{path} is not fetched by `download.sh lpips`"
    assert produced.get(str(inception_weight_path())) == "fid"
    assert "nothing was written" in result.stdout
    assert not torch_home.exists()


def test_parts_are_selectable(torch_home):
    result = run_script("lpips", "--dry-run", env={"TORCH_HOME": str(torch_home)})
    assert result.returncode == 0 and set(steps(result.stdout).values()) == {"lpips"}
    both = steps(run_script("--dry-run", "models", "sd").stdout)
    assert set(both.values()) == {"models", "sd"} and "checkpoints/ldm_imagenet256.pt" in both


def test_unknown_part_is_refused_with_the_valid_ones():
    result = run_script("weights", "--dry-run")
    assert result.returncode == 2 and "unknown part 'weights'; valid: models, data, lpips, fid, sd, all" in result.stderr


def table() -> dict[str, tuple[str, str]]:
    """destination -> (sha256, source) of the script's file table."""
    rows = re.findall(r'^\s*"(\w+)\|(\w+)\|([^|]+)\|(\w+)\|([^|"]+)', SCRIPT.read_text(), re.M)
    return {dest: (sha, source) for _, _, dest, sha, source in rows}


def demo_rows() -> dict[str, str]:
    """dataset/demo-*/NAME -> sha256 of the script's demo-image rows."""
    return {d: s for d, (s, _) in table().items() if d.startswith("dataset/demo-")}


def test_recorded_checksums_are_known_or_unknown():
    demo = demo_rows()
    assert len(demo) == 20 and all(re.fullmatch(r"[0-9a-f]{64}", s) for s in demo.values())
    sums = {s for s, _ in table().values()}
    assert sums <= {"unknown", "397923af", "7be5be79"} | set(demo.values()), "a checksum is neither known nor 'unknown'"


def test_recorded_demo_checksums_match_the_demo_images():
    """The one check about those exact files: it needs them in dataset/ (they are not ours to commit)."""
    if not all((REPO / dest).is_file() for dest in demo_rows()):
        pytest.skip("the demo images are not all in dataset/: `bash download.sh data` fetches them")
    for dest, sha in demo_rows().items():
        assert hashlib.sha256((REPO / dest).read_bytes()).hexdigest() == sha, dest


@pytest.fixture()
def sandbox(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of download.sh whose demo-image rows carry the checksums of images this test makes, those images in
    place, the test sets stubbed (100 names each), and a ``curl`` that serves the made images from ``served/``
    ($CURL_MODE=garbage: wrong bytes)."""
    root = tmp_path / "repo"
    served = tmp_path / "served"
    script = SCRIPT.read_text()
    for seed, (dest, sha) in enumerate(demo_rows().items()):
        path = Path(dest).relative_to("dataset")
        made = make_images(served / path.parent, [path.name], seed=seed)[path.name]
        script = script.replace(f"|{dest}|{sha}|", f"|{dest}|{made}|")
        make_images(root / dest.rsplit("/", 1)[0], [path.name], seed=seed)
    (root / "download.sh").write_text(script)
    for name in ("test-ffhq", "test-imagenet"):
        (root / "dataset" / name).mkdir()
        for i in range(100):
            (root / "dataset" / name / f"{i:05d}.png").touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(f"""#!/usr/bin/env bash
out=""; url=""
while [ $# -gt 0 ]; do case "$1" in -o) out="$2"; shift 2 ;; *) url="$1"; shift ;; esac; done
echo "$url" >> "{tmp_path}/curl.log"
if [ "${{CURL_MODE:-}}" = garbage ]; then echo garbage > "$out"; exit 0; fi
cp "{served}/$(basename "$(dirname "$url")")/$(basename "$url")" "$out"
""")
    (bin_dir / "curl").chmod(0o755)
    return root, {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_present_files_with_the_right_checksum_are_skipped(sandbox, tmp_path):
    root, env = sandbox
    result = run_script("data", cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(checksum ok)") == 20 and "fetch" not in result.stdout
    assert not (tmp_path / "curl.log").exists()


def test_a_corrupt_file_is_fetched_again_and_verified(sandbox, tmp_path):
    root, env = sandbox
    target = root / "dataset/demo-ffhq/00003.png"
    target.write_bytes(b"truncated")
    result = run_script("data", cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    assert "dataset/demo-ffhq/00003.png has a wrong checksum; fetching it again" in result.stderr
    assert target.read_bytes() == (tmp_path / "served/demo-ffhq/00003.png").read_bytes()
    assert (tmp_path / "curl.log").read_text().strip().endswith("/dataset/demo-ffhq/00003.png")


def test_a_download_with_the_wrong_checksum_is_removed_and_reported(sandbox):
    root, env = sandbox
    (root / "dataset/demo-imagenet/ILSVRC2012_val_00049004.JPEG").unlink()
    result = run_script("data", cwd=root, env={**env, "CURL_MODE": "garbage"})
    assert result.returncode == 1
    expected = table()["dataset/demo-imagenet/ILSVRC2012_val_00049004.JPEG"][0]
    assert expected == "92066e69c6eac1cfc91ed523afb1761437179b79ae9c6c1768c99205920e30e8"  # the real file's
    rewritten = re.search(r"demo-imagenet/ILSVRC2012_val_00049004.JPEG\|(\w{8})", (root / "download.sh").read_text())
    assert f"ILSVRC2012_val_00049004.JPEG: SHA-256 mismatch (expected {rewritten.group(1)}" in result.stderr
    assert "1 step(s) failed" in result.stderr
    assert not list((root / "dataset/demo-imagenet").glob("*00049004*"))  # neither the file nor a .part


@pytest.mark.parametrize("works", [False, True])
def test_dry_run_says_when_gdown_is_missing(tmp_path, works):
    """Google Drive steps need gdown (requirements.txt): a dry run says once how to install it when it is absent."""
    (tmp_path / "gdown").write_text(f"#!/bin/sh\necho 6.5.1\nexit {0 if works else 1}\n")
    (tmp_path / "gdown").chmod(0o755)
    result = run_script("--dry-run", "models", "data", env={"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if "gdown, which is not installed" in line]
    assert notes == ([] if works else ["[models] note: Google Drive files need gdown, which is not installed: pip "
                                       "install gdown (or pip install -r requirements.txt)"])
    assert "gdown==" in (REPO / "requirements.txt").read_text()
