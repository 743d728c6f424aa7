"""Ledger -> chargeback: the ledger's audit events as `rayfin.market.chargeback.UsageRecord`s.

A job holds GPUs from its admission (the placement group is reserved) until it leaves
ADMITTED/RUNNING: one allocation interval per admission, so a retry or a requeue after a
preemption is a new interval. Serving deployments hold GPUs from a `serving_reserved` event to
the next one for the same model (a replacement) or to its release. An interval still open at
`until` (or at `now`) is cut there. Every report reads the trail from its start up to `until`
(an allocation that began long before `since` still counts for its part inside it).

    interval GPUs  = the event's `gpus`, split by pool over its placement's islands; an event of a
                     holding job with other `gpus` (an elastic gang's resize) starts a new interval
    preempted      = the interval ended in PREEMPTED, or was requeued with reason code `preempted`
    borrowed       = who lent the GPUs above nominal, per interval: the opening event's
                     `data["lenders"]` ([[desk, gpus], ...], written since the scheduler attributes
                     them, rayfin.policy.quota.attribute_lenders; `(unowned)` for GPUs no desk is
                     guaranteed). A ledger written before that has only the job record's
                     `borrowed` (its last admission's): it rides on the job's last interval, lent
                     by `UNATTRIBUTED`

Reads only (`Ledger.events`, `Ledger.jobs`); works on SQLite and PostgreSQL ledgers alike.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from rayfin.config import RayfinConfig
from rayfin.controller.ledger import Ledger
from rayfin.controller.records import Event, JobKind
from rayfin.errors import ConfigError, InvalidRequest
from rayfin.market.chargeback import ChargebackReport, GroupBy, UsageRecord, WorkKind, chargeback

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
    attributed: set[str] = set()    # jobs whose events say who lent (newer ledgers)

    def close(job_id: str, end_ts: float, preempted: bool, kind: WorkKind) -> None:
        ev, gpus, placement = open_.pop(job_id)
        end = max(ev.ts, min(end_ts, until))
        split = _pool_split(placement, gpus, node_pool)
        owed: list[tuple[str, float]]
        if "lenders" in ev.data:
            attributed.add(job_id)
            owed = [(str(d), float(g)) for d, g in ev.data["lenders"] or ()]
        else:
            owed = [(UNATTRIBUTED, borrowed.get(job_id, 0.0))]
        for pool, g in sorted(split.items()):
            lent: dict[str, float] = {}
            room = g
            for k, (lender, left) in enumerate(owed):     # the lenders' GPUs fill the pools in order
                b = min(left, room)
                if b > 0:
                    lent[lender] = lent.get(lender, 0.0) + b
                    owed[k] = (lender, left - b)
                    room -= b
            out.append(UsageRecord(job_id, ev.desk, kind, pool, g, _utc(ev.ts), _utc(end), preempted=preempted,
                                   borrowed=lent, model=models.get(job_id) or ev.data.get("model")))

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
        elif holding and ev.job_id in open_ and "gpus" in ev.data and \
                abs(float(ev.data["gpus"] or 0) - open_[ev.job_id][1]) > 1e-9:
            # an elastic gang resized (it holds its new size from the decision on): a new interval
            close(ev.job_id, ev.ts, False, WorkKind.BATCH)
            open_[ev.job_id] = (ev, float(ev.data["gpus"] or 0), ev.data.get("placement"))
        elif holding and ev.job_id in open_ and not open_[ev.job_id][2] and ev.data.get("placement"):
            first, gpus, _ = open_[ev.job_id]
            open_[ev.job_id] = (first, gpus, ev.data.get("placement"))
        elif not holding and ev.job_id in open_:
            preempted = ev.state == "PREEMPTED" or ev.reason_code == "preempted"
            close(ev.job_id, ev.ts, preempted, WorkKind.BATCH)
    for job_id in list(open_):
        close(job_id, until, False, WorkKind.SERVING if job_id.startswith("serve-") else WorkKind.BATCH)
    # an old ledger's `borrowed` is the job's last admission's: keep it on that interval only
    last: dict[str, datetime] = {}
    for r in out:
        last[r.job_id] = max(last.get(r.job_id, r.start), r.start)
    return [r if not r.borrowed or r.job_id in attributed or r.start == last[r.job_id] else replace(r, borrowed={})
            for r in out if r.gpus > 0]


def ledger_usage(ledger: Ledger, *, until: float, node_pool: Mapping[str, str] | None = None) -> list[UsageRecord]:
    """`usage_records` over every event of `ledger` up to `until` (the whole trail: an allocation
    that began before the report's `since` still counts for its part inside it)."""
    jobs = [j for j in ledger.jobs(limit=None, blobs=False) if j.kind is not JobKind.SERVING]
    borrowed = {j.job_id: float(j.borrowed) for j in jobs if j.borrowed}
    return usage_records(ledger.events(until=until, limit=_ALL), until=until, node_pool=node_pool,
                         borrowed=borrowed)



def ledger_report(ledger: Ledger, config: RayfinConfig, since: float, until: float, by: GroupBy = GroupBy.DESK,
                  desk: str | None = None) -> ChargebackReport:
    """The chargeback of [since, until) from `ledger` at the config's rates and node pools (what
    `rayfin chargeback` prints and the API returns); `desk`: that desk's own view."""
    if until < since:
        raise InvalidRequest(field="until", value=until, allowed=f"a time after since ({since:g})")
    node_pool = {n.name: n.pool for n in config.cluster.nodes}
    records = ledger_usage(ledger, until=until, node_pool=node_pool)
    rates = config.chargeback.rates_for({r.pool for r in records} | set(node_pool.values()))
    try:
        return chargeback(records, _utc(since), _utc(until), rates, by, desk=desk)
    except ValueError as exc:   # a pool without a rate: never priced at zero
        raise ConfigError(str(exc), path="chargeback.rates") from None
