"""What the jobs share for data-parallel runs: the process group rayfin set up (callables), or
the one an entrypoint starts from the torchrun variables rayfin sets (`env://`)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rayfin.context import job_context


@dataclass(frozen=True)
class Gang:
    rank: int
    world_size: int
    device: torch.device
    backend: str | None        # None: a single process, no process group

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def join(backend: str = "auto") -> Gang:
    """The job's gang: rayfin's process group if one is up, else one from the torchrun
    variables when WORLD_SIZE > 1 (an entrypoint), else a single process."""
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        chosen = ("nccl" if cuda else "gloo") if backend == "auto" else backend
        if chosen == "nccl":
            torch.cuda.set_device(0)
        dist.init_process_group(chosen, init_method="env://")
    if dist.is_initialized():
        return Gang(dist.get_rank(), dist.get_world_size(), dev, dist.get_backend())
    return Gang(0, 1, dev, None)


def leave(gang: Gang, started_here: bool) -> None:
    if started_here and dist.is_initialized():
        dist.destroy_process_group()


def context():
    """rayfin's job context, or None when run by hand."""
    return job_context()
