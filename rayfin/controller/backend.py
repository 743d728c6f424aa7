"""The one seam between the controller and Ray.

Everything is keyed by a reservation key, "<job_id>~<generation>": a requeued job gets a new
generation, so its names never collide with an earlier attempt's that Ray is still removing.
The controller core speaks only this protocol; `RayBackend` (ray_backend.py) implements it
with placement groups and detached runner actors, `FakeBackend` (here) in memory for unit tests
of the controller's state machine. Calls never block on Ray: `observe()` reports what finished
since last time.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol


@dataclass(frozen=True)
class RunnerStatus:
    state: str                   # STARTING | RUNNING | SUCCEEDED | FAILED | LOST
    error: str = ""
    result: bytes | None = None
    progress: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    results: tuple[bytes | None, ...] = ()          # every rank's value, in rank order (when SUCCEEDED)
    logs: tuple[tuple[int, str], ...] = ()          # (rank, text) output since the last observation
    # Whether the job was told to stop before it ended (rayfin.context: stop_seen); None: unknown,
    # taken as told. A SUCCEEDED run never told finished its work, even inside a grace period.
    stopped: bool | None = None
    # Seconds since the job's last checkpoint (JobContext.report_checkpoint, rank 0); None: none reported
    checkpoint_age_s: float | None = None


def aged(status: RunnerStatus, asked_at: float | None, now: float) -> RunnerStatus:
    """`status` as of `now`: a poll's reply is reported again every cycle until the next reply
    comes, and its checkpoint age was the age when the runner answered. Aged from when the poll
    was asked (`asked_at`, the same monotonic clock as `now`): the runner answered after that, so
    the age is never under-stated (a stalled poll must not make a job look freshly checkpointed)."""
    if status.checkpoint_age_s is None or asked_at is None:
        return status
    return replace(status, checkpoint_age_s=status.checkpoint_age_s + max(0.0, now - asked_at))


@dataclass(frozen=True)
class Observation:
    ready: frozenset[str] = frozenset()                  # jobs whose placement group is now reserved
    statuses: dict[str, RunnerStatus] = field(default_factory=dict)
    unavailable: dict[str, float] = field(default_factory=dict)   # island -> GPUs not usable (node lost)


@dataclass(frozen=True)
class Owned:
    """What the backend finds in the cluster on recovery, by name."""

    groups: frozenset[str] = frozenset()
    runners: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LaunchSpec:
    job_id: str
    desk: str
    kind: str
    payload: bytes | str | None
    placement: tuple[tuple[str, float], ...]
    max_result_bytes: int = 64 * 1024 * 1024
    key: str = ""            # the reservation's name: "<job_id>~<generation>"
    priority: str = "normal"
    unit: int = 1            # GPUs per worker: the placement runs as sum(gpus) / unit workers
    dist_backend: str | None = "auto"
    checkpoint_dir: str = ""
    attempt: int = 0
    max_log_bytes: int = 1 << 20
    comm: str = "none"       # "allreduce": a one-worker job gets a process group too

    @property
    def name(self) -> str:
        return self.key or self.job_id


class Backend(Protocol):
    def reserve(self, key: str, desk: str, placement: tuple[tuple[str, float], ...], unit: int = 1) -> None: ...
    def start(self, spec: LaunchSpec) -> None: ...
    def observe(self, keys: list[str]) -> Observation: ...
    def request_stop(self, key: str) -> None: ...
    def release(self, key: str, desk: str) -> None: ...
    def owned(self, desks: list[str]) -> Owned: ...
    def adopt(self, key: str, desk: str, placement: tuple[tuple[str, float], ...], running: bool) -> None: ...


class FakeBackend:
    """In-memory backend keyed like the real one. Tests drive it by job id:
    `finish(job_id, ...)`, `lose(job_id)`, `group_of(job_id)`, `start_count(job_id)`."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock     # ages reported checkpoints as RayBackend does (backend.aged); None: never
        self._ckpt_at: dict[str, float] = {}
        self.groups: dict[str, tuple[tuple[str, float], ...]] = {}
        self.units: dict[str, int] = {}
        self.runners: dict[str, LaunchSpec] = {}
        self.starts: dict[str, int] = {}
        self.stops: list[str] = []
        self.released: list[str] = []
        self._ready: set[str] = set()
        self._statuses: dict[str, RunnerStatus] = {}
        self.unavailable: dict[str, float] = {}
        self._logs: dict[str, list[tuple[int, str]]] = {}

    def _key(self, job_id: str) -> str:
        keys = [k for k in list(self.groups) + list(self._statuses) if k.split("~")[0] == job_id]
        return max(keys, key=lambda k: int(k.split("~")[1]) if "~" in k else -1) if keys else job_id

    # -- test helpers --
    def group_of(self, job_id: str) -> tuple[tuple[str, float], ...]:
        return self.groups[self._key(job_id)]

    def start_count(self, job_id: str) -> int:
        return sum(n for k, n in self.starts.items() if k.split("~")[0] == job_id)

    def was_released(self, job_id: str) -> bool:
        return any(k.split("~")[0] == job_id for k in self.released)

    def never_ready(self, job_id: str) -> None:
        self._ready.discard(self._key(job_id))

    def finish(self, job_id: str, ok: bool = True, result: bytes | None = None, error: str = "",
               results: tuple[bytes | None, ...] = (), stopped: bool | None = None) -> None:
        self._statuses[self._key(job_id)] = RunnerStatus("SUCCEEDED" if ok else "FAILED", error=error, result=result,
                                                         results=results, stopped=stopped)

    def stall(self, job_id: str) -> None:
        """Its runner was started but stays STARTING (workers slow to come up, a runtime env)."""
        self._statuses[self._key(job_id)] = RunnerStatus("STARTING")

    def checkpointed(self, job_id: str, age_s: float) -> None:
        """The running job reports its last checkpoint `age_s` seconds ago (JobContext.report_checkpoint)."""
        key = self._key(job_id)
        self._statuses[key] = replace(self._statuses.get(key, RunnerStatus("RUNNING")), checkpoint_age_s=age_s)
        if self.clock is not None:
            self._ckpt_at[key] = self.clock()

    def output(self, job_id: str, rank: int, text: str) -> None:
        """The job's rank `rank` printed `text`: reported once, at the next observe."""
        self._logs.setdefault(self._key(job_id), []).append((rank, text))

    def lose(self, job_id: str, why: str = "node lost") -> None:
        self._statuses[self._key(job_id)] = RunnerStatus("LOST", error=why)

    # -- the protocol --
    def reserve(self, key: str, desk: str, placement: tuple[tuple[str, float], ...], unit: int = 1) -> None:
        self.groups[key] = placement
        self.units[key] = unit
        self._ready.add(key)

    def start(self, spec: LaunchSpec) -> None:
        self.starts[spec.name] = self.starts.get(spec.name, 0) + 1
        self.runners[spec.name] = spec
        self._statuses[spec.name] = RunnerStatus("RUNNING")

    def observe(self, keys: list[str]) -> Observation:
        ready = frozenset(k for k in self._ready if k in keys)
        self._ready -= ready
        statuses = {k: s for k, s in self._statuses.items() if k in keys}
        if self.clock is not None:
            now = self.clock()
            statuses = {k: aged(s, self._ckpt_at.get(k), now) for k, s in statuses.items()}
        for k in list(self._logs):
            if k in statuses:
                statuses[k] = replace(statuses[k], logs=tuple(self._logs.pop(k)))
        return Observation(ready, statuses, dict(self.unavailable))

    def request_stop(self, key: str) -> None:
        self.stops.append(key)

    def release(self, key: str, desk: str) -> None:
        self.released.append(key)
        self.groups.pop(key, None)
        self.runners.pop(key, None)
        self._statuses.pop(key, None)
        self._ready.discard(key)

    def owned(self, desks: list[str]) -> Owned:
        return Owned(frozenset(self.groups), frozenset(self.runners))

    def adopt(self, key: str, desk: str, placement: tuple[tuple[str, float], ...], running: bool) -> None:
        if running and key not in self._statuses:
            self._statuses[key] = RunnerStatus("RUNNING")
