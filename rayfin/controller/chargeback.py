"""Ledger -> chargeback: the ledger's audit events as `rayfin.market.chargeback.UsageRecord`s.

A job holds GPUs from its admission (the placement group is reserved) until it leaves
ADMITTED/RUNNING: one allocation interval per admission, so a retry or a requeue after a
preemption is a new interval. Serving deployments hold GPUs from a `serving_reserved` event to
the next one for the same model (a replacement) or to its release. An interval still open at
`until` (or at `now`) is cut there.

    interval GPUs  = the event's `gpus`, split by pool over its placement's islands
    preempted      = the interval ended in PREEMPTED, or was requeued with reason code `preempted`
    borrowed       = the job record's `borrowed` (GPUs above nominal at its last admission), on its
                     last interval; the ledger does not record which desk lent them, so the lender
                     is `UNATTRIBUTED`

Reads only (`Ledger.events`, `Ledger.jobs`); works on SQLite and PostgreSQL ledgers alike.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from rayfin.controller.ledger import Ledger
from rayfin.controller.records import Event, JobKind
from rayfin.market.chargeback import UsageRecord, WorkKind

UNATTRIBUTED = "(unattributed)"
DEFAULT_POOL = "default"
_HOLDING = {"ADMITTED", "RUNNING"}
_ALL = 10 ** 12


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _pool_split(placement: Any, gpus: float, node_pool: Mapping[str, str]) -> dict[str, float]:
    """GPUs per pool of a placement [[island, gpus], ...]; islands are "<node>-i<k>"."""
    out: dict[str, float] = defaultdict(float)
    for island, g in placement or ():
        out[node_pool.get(str(island).rsplit("-i", 1)[0], DEFAULT_POOL)] += float(g)
    if not out or abs(sum(out.values()) - gpus) > 1e-9:
        return {max(out, key=lambda p: out[p]) if out else DEFAULT_POOL: gpus}
    return dict(out)


def usage_records(events: Iterable[Event], *, until: float, node_pool: Mapping[str, str] | None = None,
                  borrowed: Mapping[str, float] | None = None, models: Mapping[str, str] | None = None
                  ) -> list[UsageRecord]:
    """Allocation intervals from audit events (in `seq` order), cut at `until` (epoch seconds).
    `borrowed`: job id -> GPUs above nominal (the job records'); `models`: job id -> model name."""
    node_pool, borrowed, models = node_pool or {}, borrowed or {}, models or {}
    open_: dict[str, tuple[Event, float, Any]] = {}   # job id -> (opening event, gpus, placement)
    out: list[UsageRecord] = []

    def close(job_id: str, end_ts: float, preempted: bool, kind: WorkKind) -> None:
        ev, gpus, placement = open_.pop(job_id)
        end = max(ev.ts, min(end_ts, until))
        split = _pool_split(placement, gpus, node_pool)
        lent = borrowed.get(job_id, 0.0)
        for pool, g in sorted(split.items()):
            b = min(lent, g)
            lent -= b
            out.append(UsageRecord(job_id, ev.desk, kind, pool, g, _utc(ev.ts), _utc(end), preempted=preempted,
                                   borrowed={UNATTRIBUTED: b} if b > 0 else {},
                                   model=models.get(job_id) or ev.data.get("model")))

    for ev in events:
        if ev.ts > until:
            break
        if ev.job_id.startswith("serve-") and "model" in ev.data:
            if ev.job_id in open_:
                close(ev.job_id, ev.ts, False, WorkKind.SERVING)
            if ev.kind == "serving_reserved" and float(ev.data.get("gpus") or 0) > 0:
                open_[ev.job_id] = (ev, float(ev.data["gpus"]), [[ev.data.get("island"), ev.data["gpus"]]])
            continue
        holding = ev.state in _HOLDING
        if holding and ev.job_id not in open_:
            open_[ev.job_id] = (ev, float(ev.data.get("gpus") or 0), ev.data.get("placement"))
        elif holding and ev.job_id in open_ and not open_[ev.job_id][2] and ev.data.get("placement"):
            first, gpus, _ = open_[ev.job_id]
            open_[ev.job_id] = (first, gpus, ev.data.get("placement"))
        elif not holding and ev.job_id in open_:
            preempted = ev.state == "PREEMPTED" or ev.reason_code == "preempted"
            close(ev.job_id, ev.ts, preempted, WorkKind.BATCH)
    for job_id in list(open_):
        close(job_id, until, False, WorkKind.SERVING if job_id.startswith("serve-") else WorkKind.BATCH)
    # `borrowed` is the job's last admission's: keep it on that interval only
    last: dict[str, datetime] = {}
    for r in out:
        last[r.job_id] = max(last.get(r.job_id, r.start), r.start)
    return [r if not r.borrowed or r.start == last[r.job_id] else replace(r, borrowed={})
            for r in out if r.gpus > 0]


def ledger_usage(ledger: Ledger, *, until: float, node_pool: Mapping[str, str] | None = None) -> list[UsageRecord]:
    """`usage_records` over every event of `ledger` up to `until` (the whole trail: an allocation
    that began before the report's `since` still counts for its part inside it)."""
    jobs = [j for j in ledger.jobs(limit=None, blobs=False) if j.kind is not JobKind.SERVING]
    borrowed = {j.job_id: float(j.borrowed) for j in jobs if j.borrowed}
    return usage_records(ledger.events(until=until, limit=_ALL), until=until, node_pool=node_pool,
                         borrowed=borrowed)

