"""The controller's policing step: every `policing.interval_s`, list what holds GPUs or desk
resources, find what rayfin did not create, stop it (`enforce`) or only report it (`report`),
audit it, count it, and tell the core how many GPUs per island it holds so placement never
relies on a false view. Runs on its own thread beside the scheduling cycle; the Ray side is
injected (`RayPolice`; a fake in unit tests), and so is the clock.

Audit events (ledger): `outside_found` when first seen (what, where, resources, the desk and
job whose code started it where Ray tells, `detect_s` since it started), `outside_stopped` when
it is gone (`stop_s` since found).
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Callable, Protocol

from placement.topology import Topology
from rayfin.config import PolicingConfig
from rayfin.controller.ledger import Ledger
from rayfin.controller.policing import (Finding, Holder, Owners, RankGpus, Sightings, WorkerKey, WorkerSeen, find,
                                       find_on_gpus, gpus_of, outside_gpus)

log = logging.getLogger("rayfin.patrol")


STALE_S = 60.0     # a GPU node's findings are kept this long after its last process list


class Police(Protocol):
    def observe(self) -> tuple[list[Holder], Owners]: ...
    def creator_of(self, actor_id: str) -> str | None: ...
    def stop(self, f: Finding) -> str: ...
    def count(self, kind: str, action: str, desk: str) -> None: ...
    def gauge(self, held: dict[str, float], islands: list[str]) -> None: ...


class PolicedCore(Protocol):
    """What policing needs of the controller (ControllerCore provides it)."""

    lock: Any
    held_outside: dict[str, float]
    topology: Topology
    ledger: Ledger

    def police_job(self, job_id: str, reason: str) -> bool: ...
    def gpu_assignments(self) -> dict[tuple[str, int], RankGpus]: ...


class Patrol:
    def __init__(self, settings: PolicingConfig, core: PolicedCore, police: Police, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.core = core
        self.police = police
        self.clock = clock
        self.sightings = Sightings()
        self.creators: dict[str, str | None] = {}
        self.dismissed: dict[str, int | None] = {}     # task id -> pid found dead (a stale state-API row)
        self.suspects: dict[str, Finding] = {}         # GPU processes seen once: a finding when seen again
        self.workers: dict[WorkerKey, WorkerSeen] = {}  # what find_on_gpus remembers between sweeps
        self.read_at: dict[str, float] = {}            # GPU node -> when its process list last came
        self.detected = 0
        self.stopped = 0
        self.last_sweep_ms = 0.0
        self.next_at = 0.0

    @property
    def enforcing(self) -> bool:
        return self.settings.mode == "enforce"

    def due(self, now: float) -> bool:
        return self.settings.mode != "off" and now >= self.next_at

    def sweep(self) -> list[Finding]:
        t0 = time.perf_counter()
        now = self.clock()
        self.next_at = now + self.settings.interval_s
        holders, owners = self.police.observe()
        ranks = self.core.gpu_assignments()
        owners = replace(owners, rank_actors={
            h.id: (r.desk, r.job_id) for h in holders if h.kind == "actor" and h.pid is not None
            for r in [ranks.get((h.node_id, int(h.pid)))] if r is not None})
        holders = [self._with_creator(h, owners) for h in holders]
        found = [f for f in find(holders, owners, now) if self.dismissed.get(f.id, -1) != f.pid]
        found += self._on_gpus(holders, owners, now, ranks)
        new, gone = self.sightings.merge(found, now)
        for f in gone:
            self._gone(f, now)
        # Counted as taken first, so placement never waits on the stopping below.
        held = outside_gpus(self.sightings.live.values())
        with self.core.lock:
            self.core.held_outside = held
        for f in new:
            self._found(f, now)
        for f in self.sightings.attributed:
            if self.enforcing and self.settings.fail_owner_job and f.stoppable:
                self.core.police_job(f.rayfin_job_id, self._why(f))
        if self.enforcing:
            for f in list(self.sightings.live.values()):
                self._stop(f, now)
        self.police.gauge(held, [i.id for i in self.core.topology.islands])
        self.last_sweep_ms = (time.perf_counter() - t0) * 1000
        return list(self.sightings.live.values())

    def _on_gpus(self, holders: list[Holder], owners: Owners, now: float,
                 ranks: dict[tuple[str, int], RankGpus]) -> list[Finding]:
        """Processes on GPUs their Ray worker does not hold, once seen in two sweeps in a row on
        the same worker (a task that started between NVML's list and the state API's looks like one
        for a sweep). A node whose list did not come this sweep keeps what was found there, for up
        to STALE_S after its last list; then its findings lapse (a node that never answers must
        not hold GPUs as taken for ever)."""
        for node in owners.gpu_read:
            self.read_at[node] = now
        for node in owners.gpu_unread:
            self.read_at.setdefault(node, now)
        kept = [f for f in self.sightings.live.values()
                if f.kind == "gpu_process" and f.node_id in owners.gpu_unread
                and now - self.read_at.get(f.node_id, now) < STALE_S]
        on_gpu = {(owners.machine(p.node_id), p.worker_pid) for p in owners.gpu_procs}
        holders = [self._creator_for_gpu(h, owners, on_gpu) for h in holders]
        seen, memory = find_on_gpus(owners.gpu_procs, holders, owners, now, ranks, self.workers)
        self.workers = {**{k: v for k, v in self.workers.items() if k[0] in owners.gpu_unread}, **memory}
        first = {f.id: self.suspects.get(f.id, f) for f in seen}
        self.suspects = {**{i: f for i, f in self.suspects.items() if f.node_id in owners.gpu_unread}, **first}
        return kept + [f.copy(started_at=f.started_at or first[f.id].first_seen) for f in seen
                       if first[f.id].first_seen < now]

    def _creator_for_gpu(self, h: Holder, owners: Owners, on_gpu: set[tuple[str, int | None]]) -> Holder:
        """An actor's creator, for an actor on a GPU (`on_gpu`: (host, worker pid)) that holds
        none: without it, an actor that a desk's job made is stopped but its job is never named."""
        if h.kind != "actor" or h.parent_actor_id or h.pid is None or owners.is_rayfin(h) or gpus_of(h.resources) > 0:
            return h
        if (owners.machine(h.node_id), int(h.pid)) not in on_gpu:
            return h
        return replace(h, parent_actor_id=self._creator(h.id))

    def _with_creator(self, h: Holder, owners: Owners) -> Holder:
        """An actor's creator is not in its row: ask once, only for actors that policing flags."""
        if h.kind != "actor" or h.parent_actor_id or owners.is_rayfin(h) or not find([h], owners, 0.0):
            return h
        return replace(h, parent_actor_id=self._creator(h.id))

    def _creator(self, actor_id: str) -> str | None:
        """The actor whose code created `actor_id`, asked of Ray once and remembered."""
        if actor_id not in self.creators:
            try:
                self.creators[actor_id] = self.police.creator_of(actor_id)
            except Exception as exc:  # noqa: BLE001 - attribution is best effort
                log.debug("creator of %s: %s", actor_id, exc)
                self.creators[actor_id] = None
        return self.creators[actor_id]

    def _found(self, f: Finding, now: float) -> None:
        self.detected += 1
        detect_s = None if f.started_at is None else max(0.0, now - f.started_at)
        action = "stopping" if self.enforcing and f.stoppable else "reported"
        self.sightings.live[f.id] = f.copy(action=action)
        where = f"{f.island or f.node_id[:12] or '?'}"
        reason = "; ".join(f.reasons) + f"; on {where}; {action}"
        self.core.ledger.record(now, f.rayfin_job_id, f.desk, "outside_found", "", reason,
                                {**f.public(), "detect_s": detect_s, "mode": self.settings.mode})
        self.police.count(f.kind, action, f.desk)
        log.warning("outside rayfin: %s", reason)
        if self.enforcing and f.kind == "gpu_process":
            # Killed before its job is failed: the agent kills the worker with the commands it
            # started; a worker that Ray ends first (its owner gone) would leave them on the GPU.
            self._stop(self.sightings.live[f.id], now)
        if self.enforcing and self.settings.fail_owner_job and f.rayfin_job_id and f.stoppable:
            self.core.police_job(f.rayfin_job_id, self._why(f))

    @staticmethod
    def _why(f: Finding) -> str:
        if f.kind == "gpu_process":
            return (f"policing: the job's code used a GPU it does not hold ({f.reasons[0]}); ask for the "
                    "GPUs in the job's request, or run the work in the job's own placement group")
        return (f"policing: the job started a {f.kind} holding {f.gpus:g} GPUs outside rayfin; use the "
                "job's own placement group (rayfin.job_context().placement_group)")

    def _stop(self, f: Finding, now: float) -> None:
        if not f.stoppable:
            self.sightings.live[f.id] = f.copy(action="reported (not a Ray worker: not stopped)")
            return
        result = self.police.stop(f)
        if result == "worker gone" and f.kind == "task":
            # The state API can list a task as RUNNING for a while after its process died: it
            # holds nothing, so it is not counted as taken any longer.
            self.dismissed[f.id] = f.pid
            self._gone(self.sightings.live.pop(f.id).copy(stopped_at=now, action=result), now)
            return
        self.sightings.live[f.id] = f.copy(action=result)

    def _gone(self, f: Finding, now: float) -> None:
        self.stopped += 1 if self.enforcing else 0
        data = {**f.public(), "stop_s": now - f.first_seen,
                "detect_s": None if f.started_at is None else f.first_seen - f.started_at}
        self.core.ledger.record(now, f.rayfin_job_id, f.desk, "outside_stopped", "",
                                f"{f.kind} {f.id[:16]} holding {f.gpus:g} GPUs is gone after "
                                f"{now - f.first_seen:.1f}s ({f.action or 'ended'})", data)
        self.police.count(f.kind, "stopped" if self.enforcing else "ended", f.desk)

    def view(self, desk: str | None) -> dict[str, Any]:
        """What a caller may see: the operator everything, a desk what its own code started."""
        live = [f for f in self.sightings.live.values() if desk is None or f.desk == desk]
        return {"mode": self.settings.mode, "interval_s": self.settings.interval_s,
                "findings": [f.public() for f in live],
                "outside_gpus": outside_gpus(self.sightings.live.values()),
                "detected": self.detected, "stopped": self.stopped, "last_sweep_ms": self.last_sweep_ms}


__all__ = ["Patrol", "Police"]
