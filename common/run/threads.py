"""CPU threads: torch's intra-op thread pool sized to the cores this process may use, never more.

torch starts one thread per CPU it counts (``os.cpu_count()``) unless ``OMP_NUM_THREADS`` says otherwise. In a
container or a cluster job that is limited by CPU affinity or by a cgroup CPU quota, that count can be far above
the cores actually granted, and the threads then mostly wait for each other. So, unless ``OMP_NUM_THREADS`` is
set (the user's choice wins):

    threads = min(torch's default, available cores),
    available cores = min(|sched_getaffinity(0)|, ⌈quota / period⌉ of the cgroup CPU limit, when there is one).

Other processes cause the same waiting: measured on a shared 2-core machine (load ≈ 4), the demo with one image
took 38 s and 146 s with torch's 2 threads, 12 s and 14 s with ``OMP_NUM_THREADS=1``. The thread count is not
lowered automatically for that (it would make CPU results depend on the machine's load: reductions split over
threads add in another order); :func:`busy_note` says so in one line instead.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

#: cgroup v2 ``cpu.max`` ("<quota> <period>" or "max <period>"); cgroup v1 quota and period files
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def cgroup_cpu_limit(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> int | None:
    """⌈quota / period⌉ of the cgroup CPU limit, or None when there is none (or it cannot be read)."""
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
        elif v1[0].is_file() and v1[1].is_file():
            quota, period = v1[0].read_text().strip(), v1[1].read_text().strip()
        else:
            return None
        if quota in ("max", "-1") or int(period) <= 0 or int(quota) <= 0:
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by the cgroup CPU quota."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return min(affinity, limit) if limit is not None else affinity


def busy_note(load: float | None = None) -> str | None:
    """One line when other processes keep the available cores busy (1-minute load ≥ cores) while torch uses more
    than one thread and ``OMP_NUM_THREADS`` is unset; else None. ``load`` defaults to ``os.getloadavg()[0]``."""
    if os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads() < 2:
        return None
    cores = available_cores()
    load = os.getloadavg()[0] if load is None else load
    if load < cores:
        return None
    return (f"note: the CPU is busy (load {load:.1f} on {cores} cores) and torch uses {torch.get_num_threads()} "
            f"threads, which then wait for each other; OMP_NUM_THREADS=1 is often several times faster here")


def limit_threads() -> int:
    """Set torch's thread count to min(its default, :func:`available_cores`) unless ``OMP_NUM_THREADS`` is set;
    returns the thread count in force."""
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, min(torch.get_num_threads(), available_cores())))
    return torch.get_num_threads()
