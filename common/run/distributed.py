"""One run over several processes (torchrun): ranks split the images, rank 0 writes the summary.

A process group is created only when ``WORLD_SIZE > 1``, so a single process takes exactly the plain path.
Every rank samples ``image_indices[rank::world_size]`` (each image exactly once, no padding) on
``cuda:LOCAL_RANK`` (gloo on the CPU), writes its samples and records into the shared run directory, and
after a barrier rank 0 builds ``metrics.json``, ``eval.md`` and the grid from the files (the resume path).
Results do not depend on the number of ranks: every draw comes from (seed, image id, run).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

BARRIER_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"  # single | torchrun | slurm (tasks of one SLURM job, e.g. the slurm_dp preset)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device_index(self) -> int:
        """The CUDA device of this process: LOCAL_RANK under torchrun; 0 for SLURM tasks, which each see only
        their own GPU (submitit narrows CUDA_VISIBLE_DEVICES)."""
        return self.local_rank if self.launcher == "torchrun" else 0

    def shard(self, count: int) -> list[int]:
        """This rank's share of ``range(count)``: every ``world_size``-th index from ``rank``."""
        return list(range(self.rank, count, self.world_size))


def ranks_from_env() -> Ranks:
    """Rank, world size and local rank set by torchrun, else by a multi-task SLURM job started through
    submitit (which also exports the rendezvous address), else a single process."""
    if "WORLD_SIZE" in os.environ:
        return Ranks(int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"]),
                     int(os.environ.get("LOCAL_RANK", 0)), "torchrun")
    if int(os.environ.get("SLURM_NTASKS", 1)) > 1 and "SUBMITIT_EXECUTOR" in os.environ:
        from submitit.helpers import TorchDistributedEnvironment
        env = TorchDistributedEnvironment().export()  # sets MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
        return Ranks(env.rank, env.world_size, env.local_rank, "slurm")
    return Ranks()


def init(ranks: Ranks) -> None:
    """Join the process group (only when several processes run)."""
    if ranks.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)


def barrier(ranks: Ranks) -> None:
    if ranks.world_size > 1 and dist.is_initialized():
        dist.barrier()


def shutdown(ranks: Ranks) -> None:
    if ranks.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
