"""The per-replica admission gate: local leases, coalesced broker calls, background sync.

No Ray here: the broker call is injected (`call_broker(requests) -> grants`), so unit tests run
the gate against a `LocalBroker` in the same event loop. The hot path (a desk with tokens and
permits in hand) makes no remote call at all; a replica talks to the broker at most once at a
time per desk, and not at all for a desk the broker just said is empty until its next token.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Awaitable, Callable, Mapping, Sequence

from serve_apps.quota import (DeskBudget, Grant, LeaseRequest, LocalLease, QuotaSpec, Refusal, Shortage,
                              decide_grant)

log = logging.getLogger(__name__)

BrokerCall = Callable[[Sequence[LeaseRequest]], Awaitable[Sequence[Grant]]]


def replicas_of(replicas: int | Mapping[str, int], desk: str) -> int:
    """R for one desk: a single count for every desk, or a count per desk (the replicas that
    can admit that desk's requests: those of the models it may call)."""
    if isinstance(replicas, Mapping):
        return max(1, int(replicas.get(desk, 1)))
    return max(1, int(replicas))


class LocalBroker:
    """The broker's state and logic without Ray: the Serve deployment wraps one of these."""

    def __init__(self, specs: Mapping[str, QuotaSpec], *, replicas: int | Mapping[str, int] = 1,
                 local_fraction: float = 0.0, token_ttl_s: float = 1.0, holder_ttl_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.token_ttl_s, self.holder_ttl_s = token_ttl_s, holder_ttl_s
        now = clock()
        self.budgets = {d: DeskBudget.new(d, s, now, replicas=replicas_of(replicas, d), local_fraction=local_fraction)
                        for d, s in specs.items()}

    def lease(self, requests: Sequence[LeaseRequest]) -> list[Grant]:
        now = self._clock()
        out = []
        for req in requests:
            budget = self.budgets[req.desk]
            grant, self.budgets[req.desk] = decide_grant(budget, req, now, token_ttl_s=self.token_ttl_s,
                                                         holder_ttl_s=self.holder_ttl_s)
            out.append(grant)
        return out

    async def alease(self, requests: Sequence[LeaseRequest]) -> list[Grant]:
        return self.lease(requests)

    def snapshot(self) -> dict:
        now = self._clock()
        return {d: {"tokens": round(b.bucket.refill(now).level, 3), "permits_held": b.permits_held(),
                    "gpu_used": round(b.gpu_used, 6)} for d, b in self.budgets.items()}


class QuotaGate:
    """Admission control for one gateway replica.

    `await acquire(desk)` returns None (admitted: call `release` when done) or a `Refusal`.
    """

    broker_timeout_s = 0.5  # a slower broker reply counts as a failed one (local share used)
    max_wait_s = 3.0  # longest a request waits for tokens the broker keeps giving to others

    def __init__(self, specs: Mapping[str, QuotaSpec], *, replicas: int | Mapping[str, int], replica_id: str,
                 call_broker: BrokerCall, clock: Callable[[], float] = time.monotonic, sync_interval_s: float = 0.25,
                 local_fraction: float = 0.0, permits_local: bool = False) -> None:
        self.replica_id = replica_id
        self.replicas = replicas
        self._call = call_broker
        self._clock = clock
        self.sync_interval_s = sync_interval_s
        now = clock()
        # Each lease has its own bucket (local_fraction of the quota / R): while the broker is
        # slow or down, that share is what the replica admits, and the total still holds.
        self.leases = {d: LocalLease(d, s, replicas_of(replicas, d), now, local_fraction, permits_local)
                       for d, s in specs.items()}
        self._syncing: dict[str, asyncio.Task] = {}
        self._waiters: dict[str, int] = defaultdict(int)
        self.broker_calls = 0
        self.refusals: dict[str, int] = defaultdict(int)
        self.broker_errors = 0

    # -- hot path ---------------------------------------------------------------------------------
    async def acquire(self, desk: str) -> Refusal | None:
        lease = self.leases[desk]
        now = self._clock()
        refusal = lease.gpu_refusal(now)
        if refusal is not None:
            lease.note_refused(now)
            self.refusals["gpu"] += 1
            return refusal
        deadline = now + self.max_wait_s
        while True:
            short = lease.shortage(now)
            if short is Shortage.NONE:
                lease.admit(now)
                if lease.wants_prefetch(now) and desk not in self._syncing:
                    self._start_sync(desk, Shortage.NONE, prefetch=True)
                return None
            if short is Shortage.PERMITS and lease.permits_local:  # ours are all in use: no one to ask
                self.refusals["permits:local"] += 1
                break
            if lease.blocked(short, now):
                self.refusals[f"{short.value}:blocked"] += 1
                break
            if now >= deadline:  # the broker keeps granting, but others take it first
                self.refusals[f"{short.value}:timeout"] += 1
                break
            self._waiters[desk] += 1
            try:
                await self._sync(desk, short)
            finally:
                self._waiters[desk] -= 1
            now = self._clock()
        lease.note_refused(now)
        return lease.refusal(short, now)

    def release(self, desk: str, gpu_seconds: float = 0.0) -> None:
        self.leases[desk].release(gpu_seconds)

    # -- broker calls ------------------------------------------------------------------------------
    async def _sync(self, desk: str, short: Shortage, idle: bool = False) -> None:
        task = self._syncing.get(desk)
        if task is None:
            task = self._start_sync(desk, short, idle)
        await asyncio.shield(task)

    def _start_sync(self, desk: str, short: Shortage, idle: bool = False, prefetch: bool = False) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._do_sync(desk, short, idle, prefetch))
        self._syncing[desk] = task
        task.add_done_callback(lambda _t, d=desk: self._syncing.pop(d, None))
        return task

    async def _do_sync(self, desk: str, short: Shortage, idle: bool, prefetch: bool) -> None:
        lease = self.leases[desk]
        req = lease.request(self.replica_id, self._clock(), short=short, waiters=self._waiters[desk], idle=idle,
                            prefetch=prefetch)
        self.broker_calls += 1
        call = asyncio.ensure_future(self._call([req]))
        # asyncio.wait, not wait_for: a timed-out call is left to finish (its grant still counts
        # when it lands) instead of blocking here until its cancellation completes.
        done, _ = await asyncio.wait({call}, timeout=self.broker_timeout_s)
        if call in done and call.exception() is None:
            lease.apply(req, call.result()[0], self._clock())
            return
        self.broker_errors += 1
        if call in done:
            log.warning("quota broker failed (%s); desk %s uses this replica's own share", call.exception(), desk)
        else:
            call.add_done_callback(lambda f, r=req: self._late(r, f))
        lease.apply(req, self._fallback_grant(req), self._clock())

    def _late(self, req: LeaseRequest, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.leases[req.desk].apply(req, fut.result()[0], self._clock())

    def _fallback_grant(self, req: LeaseRequest) -> Grant:
        """No tokens from the broker (the local bucket is the fallback); permits up to 1/R."""
        now = self._clock()
        lease = self.leases[req.desk]
        permits = min(req.permits_target, max(1, lease.spec.max_in_flight // replicas_of(self.replicas, req.desk)))
        return Grant(desk=req.desk, tokens=0, token_ttl_s=1.0, permits_held=permits,
                     gpu_used=lease.gpu_used_known, gpu_window_end=now + max(0.0, lease.gpu_window_end - now),
                     retry_after_s=self.broker_timeout_s, now=now)

    async def sync_idle(self, force: bool = False) -> int:
        """One background pass: give back idle permits and report GPU use. Returns syncs made.

        `force` syncs every desk (start-up warm-up: it also learns GPU use so far).
        """
        now = self._clock()
        todo = [d for d, lease in self.leases.items()
                if d not in self._syncing and (force or lease.needs_sync(now, self.sync_interval_s * 4))]
        for desk in todo:
            idle = self.leases[desk].observed_rate(now) * self.sync_interval_s * 4 < 0.5
            await self._sync(desk, Shortage.NONE, idle=idle)
        return len(todo)

    async def run_background(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval_s)
            try:
                await self.sync_idle()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("quota background sync failed")
