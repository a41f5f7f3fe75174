"""torch threads never exceed the cores this process may use (affinity, cgroup quota); OMP_NUM_THREADS wins."""
from __future__ import annotations

import pytest
import torch

from common.run import threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("content, expected", [("150000 100000", 2), ("100000 100000", 1), ("max 100000", None),
                                               ("50000 100000", 1), ("garbage", None)])
def test_cgroup_v2_quota(tmp_path, content, expected):
    (tmp_path / "cpu.max").write_text(content + "\n")
    assert threads.cgroup_cpu_limit(tmp_path / "cpu.max", (tmp_path / "q", tmp_path / "p")) == expected


def test_cgroup_v1_quota_and_no_cgroup(tmp_path):
    (tmp_path / "q").write_text("300000\n")
    (tmp_path / "p").write_text("100000\n")
    assert threads.cgroup_cpu_limit(tmp_path / "none", (tmp_path / "q", tmp_path / "p")) == 3
    (tmp_path / "q").write_text("-1\n")
    assert threads.cgroup_cpu_limit(tmp_path / "none", (tmp_path / "q", tmp_path / "p")) is None
    assert threads.cgroup_cpu_limit(tmp_path / "none", (tmp_path / "x", tmp_path / "y")) is None


def test_threads_are_capped_by_the_available_cores(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(8)  # what torch picks on a machine that shows 8 CPUs
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert threads.limit_threads() == 2 and torch.get_num_threads() == 2
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    assert threads.limit_threads() == 2  # never more than torch's own choice


def test_omp_num_threads_wins(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(3)
    monkeypatch.setattr(threads, "available_cores", lambda: 1)
    assert threads.limit_threads() == 3


def test_busy_note_only_when_the_cores_are_busy(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    torch.set_num_threads(2)
    assert threads.busy_note(load=0.3) is None
    note = threads.busy_note(load=4.2)
    assert note.startswith("note: the CPU is busy (load 4.2 on 2 cores)") and "OMP_NUM_THREADS=1" in note
    torch.set_num_threads(1)
    assert threads.busy_note(load=4.2) is None  # one thread: nothing to wait for
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert threads.busy_note(load=4.2) is None  # the user chose
