"""A job's view of itself: `rayfin.job_context()` inside a job (rank, world size, checkpoint
directory, stop and progress). Apart from the runner (rayfin/runner.py), which sets it, so that
`import rayfin` (the SDK, HTTP only) imports no Ray: the two lazy imports below (Ray, torch) are
reached only from inside a running job."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

_CONTEXT: JobContext | None = None


class StopFlag(threading.Event):
    """The job's stop flag: a `threading.Event` that remembers whether it ever answered "set" to
    the job (`seen`), however the job asks (`should_stop()`, or the event's own `is_set()` or
    `wait()`). Set by the runner (`request_stop`); reading it from the runner uses `asked()`."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def asked(self) -> bool:
        """Whether a stop was asked for, without counting as the job having been told."""
        return super().is_set()

    def is_set(self) -> bool:
        told = super().is_set()
        if told:            # only ever set (a read-then-write could put False back from another thread)
            self.seen = True
        return told

    def wait(self, timeout: float | None = None) -> bool:
        told = super().wait(timeout)
        if told:
            self.seen = True
        return told


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
    stop_event: StopFlag = field(default_factory=StopFlag, repr=False)
    progress: float = 0.0
    checkpoint_mono: float | None = None   # time.monotonic() of the last report_checkpoint(); None: none yet
    told: bool = False     # told otherwise than through the flag: `should_stop_all`'s agreement, a SIGTERM

    @property
    def stop_seen(self) -> bool:
        """True once the job was told to stop: its stop flag said so (`should_stop()`, or the
        event's `is_set()`/`wait()`), `should_stop_all()` agreed it, or its command got the
        SIGTERM. A job that returns without having been told finished its work, even when a stop
        was asked for meanwhile (a preemption's or a resize's grace period): the controller then
        keeps it as finished rather than running it again."""
        return self.told or self.stop_event.seen

    def should_stop(self) -> bool:
        """True once rayfin asked this job to stop (preemption grace or cancel)."""
        return self.stop_event.is_set()

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
        if stop:
            self.told = True
        return stop

    def report_progress(self, fraction: float) -> None:
        """Report progress in [0, 1]; `rayfin watch` and `job.status()` show rank 0's."""
        self.progress = max(0.0, min(1.0, float(fraction)))

    def report_checkpoint(self) -> None:
        """Say that a checkpoint was just saved (call it after the save, on rank 0: a gang's
        report is rank 0's). The controller then knows how much work a preemption of this job
        would lose, and, among victims of equal priority, stops first the jobs that would lose
        least (the seconds since their last checkpoint over the seconds they have left). A job
        that never reports, and writes nothing into `checkpoint_dir`, is taken to lose everything
        since its start: rank 0's runner also sees a new file there within a few seconds
        (rayfin.runner.CheckpointWatch), which is how a command (no job context) is seen."""
        self.checkpoint_mono = time.monotonic()

    def checkpoint_age_s(self) -> float | None:
        """Seconds since the last `report_checkpoint()` of this attempt; None: none reported."""
        return None if self.checkpoint_mono is None else max(0.0, time.monotonic() - self.checkpoint_mono)

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
