"""The one seam between the controller and Ray.

The controller core speaks only this protocol; `RayBackend` (ray_backend.py) implements it
with placement groups and detached runner actors, `FakeBackend` (here) in memory for unit tests
of the controller's state machine. Calls never block on Ray: `observe()` reports what finished
since last time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class RunnerStatus:
    state: str                   # STARTING | RUNNING | SUCCEEDED | FAILED | LOST
    error: str = ""
    result: bytes | None = None
    progress: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


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


class Backend(Protocol):
    def reserve(self, job_id: str, desk: str, placement: tuple[tuple[str, float], ...]) -> None: ...
    def start(self, spec: LaunchSpec) -> None: ...
    def observe(self, job_ids: list[str]) -> Observation: ...
    def request_stop(self, job_id: str) -> None: ...
    def release(self, job_id: str, desk: str) -> None: ...
    def owned(self, desks: list[str]) -> Owned: ...
    def adopt(self, job_id: str, desk: str, placement: tuple[tuple[str, float], ...], running: bool) -> None: ...


class FakeBackend:
    """In-memory backend. Tests drive it: `finish(job_id, ...)`, `lose_island(...)`."""

    def __init__(self) -> None:
        self.groups: dict[str, tuple[tuple[str, float], ...]] = {}
        self.runners: dict[str, LaunchSpec] = {}
        self.starts: dict[str, int] = {}
        self.stops: list[str] = []
        self.released: list[str] = []
        self._ready: set[str] = set()
        self._statuses: dict[str, RunnerStatus] = {}
        self.unavailable: dict[str, float] = {}

    def reserve(self, job_id, desk, placement):
        self.groups[job_id] = placement
        self._ready.add(job_id)

    def start(self, spec):
        self.starts[spec.job_id] = self.starts.get(spec.job_id, 0) + 1
        self.runners[spec.job_id] = spec
        self._statuses[spec.job_id] = RunnerStatus("RUNNING")

    def finish(self, job_id: str, ok: bool = True, result: bytes | None = None, error: str = "") -> None:
        self._statuses[job_id] = RunnerStatus("SUCCEEDED" if ok else "FAILED", error=error, result=result)

    def lose(self, job_id: str, why: str = "node lost") -> None:
        self._statuses[job_id] = RunnerStatus("LOST", error=why)

    def observe(self, job_ids):
        ready = frozenset(j for j in self._ready if j in job_ids)
        self._ready -= ready
        return Observation(ready, {j: s for j, s in self._statuses.items() if j in job_ids}, dict(self.unavailable))

    def request_stop(self, job_id):
        self.stops.append(job_id)

    def release(self, job_id, desk):
        self.released.append(job_id)
        self.groups.pop(job_id, None)
        self.runners.pop(job_id, None)
        self._statuses.pop(job_id, None)
        self._ready.discard(job_id)

    def owned(self, desks):
        return Owned(frozenset(self.groups), frozenset(self.runners))

    def adopt(self, job_id, desk, placement, running):
        if running and job_id not in self._statuses:
            self._statuses[job_id] = RunnerStatus("RUNNING")
