"""A job's view of itself: `rayfin.job_context()` inside a job (rank, world size, checkpoint
directory, stop and progress). Apart from the runner (rayfin/runner.py), which sets it, so that
`import rayfin` (the SDK, HTTP only) imports no Ray: the two lazy imports below (Ray, torch) are
reached only from inside a running job."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

_CONTEXT: JobContext | None = None


@dataclass
class JobContext:
    job_id: str
    desk: str
    gpus: float
    placement: tuple[tuple[str, float], ...]
    placement_group_name: str
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    checkpoint_dir: str = ""
    attempt: int = 0
    stop_event: threading.Event = field(default_factory=threading.Event, repr=False)
    progress: float = 0.0
    # True once the job was told to stop: `should_stop()` or `should_stop_all()` said so (or its
    # command got the SIGTERM). A job that returns without having been told finished its work,
    # even when a stop was asked for meanwhile (a preemption's or a resize's grace period): the
    # controller then keeps it as finished rather than running it again.
    stop_seen: bool = False

    def should_stop(self) -> bool:
        """True once rayfin asked this job to stop (preemption grace or cancel)."""
        if self.stop_event.is_set():
            self.stop_seen = True
            return True
        return False

    def should_stop_all(self) -> bool:
        """`should_stop()` agreed by every rank (an all-reduce of the flag): call it at the same
        step on every rank, so all ranks leave the training loop at the same step and none is left
        waiting in a collective. Without a process group it is `should_stop()`."""
        try:      # torch: heavy and optional; only a job that uses it pays for the import
            import torch
            import torch.distributed as dist
        except ImportError:
            return self.should_stop()
        if not (dist.is_available() and dist.is_initialized()):
            return self.should_stop()
        flag = torch.tensor([1.0 if self.should_stop() else 0.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item() > 0)
        self.stop_seen = self.stop_seen or stop
        return stop

    def report_progress(self, fraction: float) -> None:
        """Report progress in [0, 1]; `rayfin watch` and `job.status()` show rank 0's."""
        self.progress = max(0.0, min(1.0, float(fraction)))

    @property
    def placement_group(self) -> Any:
        import ray.util      # only inside a job; `import rayfin` (the SDK) must not import Ray

        return ray.util.get_placement_group(self.placement_group_name)


def job_context() -> JobContext | None:
    """The context of the rayfin job this code runs in, or None outside a job."""
    return _CONTEXT




def set_job_context(ctx: JobContext | None) -> None:
    """The runner's call, as a rank starts the job's code in this process."""
    global _CONTEXT
    _CONTEXT = ctx


__all__ = ["JobContext", "job_context", "set_job_context"]
