"""The controller on the market's clock (issue 18): quota windows applied, switches audited,
capacity pre-warmed, decisions recorded for replay.

Hooks, each called from one place so the cycle stays readable:

    apply(s)                 cycle, before the snapshot: the desks' quotas (`s.desks`) become those
                             in force at the controller's clock (rayfin.market.in_force: the next
                             window's from one preemption grace before its switch); each change is
                             an audit event (WINDOW_IN_FORCE at start-up, WINDOW_RECLAIM_AHEAD,
                             WINDOW_SWITCH) with the window names and every desk's quotas.
    record_decisions(...)    cycle, after decide: for a cycle that decided something (an admission,
                             preemption, refusal, or a wait whose reasons changed), one
                             `decision_snapshot` event holding the audit records (reason code,
                             window, snapshot hash) and the snapshot and policy in canonical JSON,
                             so `rayfin replay` can re-run it (rayfin.market.audit).
                             Cost: one canonical encoding per deciding cycle, about 1 ms for tens
                             of jobs and 60-90 ms for 1,200 (timed as the cycle's `audit` step).
    prewarm_floor(...)       capacity loop: GPUs each autoscaled pool must hold ready for serving,
                             the next window's from the pool's lead time before the switch.

No Ray here: unit tests drive it through ControllerCore with FakeBackend and a fake clock.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from rayfin.autoscale import AutoscalingSettings
from rayfin.config import RayfinConfig
from rayfin.controller.records import Event
from rayfin.market.audit import (AuditReason, AuditRecord, Mismatch, ReplayCode, ReplayReport, canonical,
                                 canonical_json, decode, elastic_policy, elastic_records, hash_text, records_of_cycle,
                                 replay, schedule_policy, snapshot_from_canonical)
from rayfin.market.calendar import MarketCalendar
from rayfin.market.errors import CalendarError
from rayfin.market.in_force import InForce, Phase, QuotaClock, quota_fields
from rayfin.market.plan import WindowName
from rayfin.policy import ClusterSnapshot, CycleDecision, Decision, DeskQuota, SchedulerConfig
from rayfin.policy.elastic import ElasticGang, Grow
from rayfin.reasons import ReasonCode

if TYPE_CHECKING:
    from rayfin.controller.state import ControllerState

log = logging.getLogger("rayfin.controller")
UTC = timezone.utc
WINDOW_EVENT = "quota_window"          # ledger event kind of window changes
SNAPSHOT_EVENT = "decision_snapshot"   # ledger event kind of a deciding cycle's audit records
ELASTIC_STEP = "elastic"               # its data["step"] for the elastic step's records (none: the scheduler's)
# A snapshot above this many bytes of canonical JSON is kept as its hash only (its records still
# are): replay then reports its records as not replayable rather than the ledger growing without
# bound on a huge queue. 512 KiB holds thousands of jobs.
MAX_SNAPSHOT_BYTES = 512 * 1024


def quota_clock(config: RayfinConfig) -> QuotaClock | None:
    """The config's quota plan on its calendar, reclaim one preemption grace ahead; None without a calendar."""
    market = config.market
    if market is None:
        return None
    base = {d.name: DeskQuota.from_config(d) for d in config.desks}
    return QuotaClock(MarketCalendar.get(market.calendar.exchange), market.quota_plan, base,
                      config.defaults.preemption_grace_s)


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# ---------------------------------------------------------------- switching windows
def apply(s: "ControllerState") -> InForce | None:
    """Set the desks' quotas to those in force now; audit a change. None without a calendar."""
    if s.quota_clock is None:
        return None
    now = s.clock()
    try:
        f = s.quota_clock.at(utc(now))
    except CalendarError as exc:
        # Outside the library's years (a drill clock far off): keep the quotas last applied,
        # and say so once rather than every cycle.
        if s.in_force is not None or not s.calendar_warned:
            log.warning("quota plan not applied at %s, keeping the current quotas: %s", utc(now).isoformat(), exc)
            s.calendar_warned = True
        s.in_force = None
        return None
    prev = s.in_force
    s.in_force = f
    if prev is not None and (prev.effective, prev.window.name, prev.window.start) == (
            f.effective, f.window.name, f.window.start):
        return f
    if prev is None or prev.effective != f.effective or dict(s.desks) != dict(f.quotas):
        # in place: the core and the serving path hold this same dict
        s.desks.clear()
        s.desks.update(f.quotas)
    code, kind, text = _change(prev, f, s.quota_clock.lead_s)
    s.ledger.record(now, "", "", kind, "", text, window_data(f, prev), code)
    s.recorder.window(f.effective.value)
    log.info("quota window: %s", text)
    return f


def _change(prev: InForce | None, f: InForce, lead_s: float) -> tuple[ReasonCode, str, str]:
    nxt = f"next: {f.next_window.value} at {f.switch_at.isoformat()}"
    if prev is None:
        return (ReasonCode.WINDOW_IN_FORCE, WINDOW_EVENT,
                f"quota window {f.window.name.value} in force, quotas of {f.effective.value} ({nxt})")
    if f.phase is Phase.RECLAIM_AHEAD and f.window.name == prev.window.name:
        return (ReasonCode.WINDOW_RECLAIM_AHEAD, WINDOW_EVENT,
                f"{f.effective.value} quotas apply from {f.reclaim_from.isoformat()}, one preemption grace "
                f"({lead_s:g}s) before the switch {f.window.name.value} -> {f.next_window.value} at "
                f"{f.switch_at.isoformat()}, so reclaimed work leaves by the boundary")
    return (ReasonCode.WINDOW_SWITCH, WINDOW_EVENT,
            f"window switch {prev.window.name.value} -> {f.window.name.value} at {f.window.start.isoformat()}; "
            f"quotas of {f.effective.value} ({nxt})")


def window_data(f: InForce, prev: InForce | None) -> dict[str, Any]:
    return {"window": f.window.name.value, "effective": f.effective.value, "phase": f.phase.value,
            "previous": None if prev is None else prev.effective.value,
            "previous_window": None if prev is None else prev.window.name.value,
            "window_start": f.window.start.timestamp(), "switch_at": f.switch_at.timestamp(),
            "reclaim_from": f.reclaim_from.timestamp(), "next_window": f.next_window.value,
            "quotas": {d: quota_fields(q) for d, q in sorted(f.quotas.items())},
            "serving_gpus": dict(sorted(f.serving_gpus.items()))}


def view(s: "ControllerState") -> dict[str, Any] | None:
    """The window in force and the next switch, for the API and the Serve side; None without a calendar."""
    f = s.in_force
    if f is None:
        return None
    return {**window_data(f, None), "next_quotas": {d: quota_fields(q) for d, q in sorted(f.next_quotas.items())},
            "next_serving_gpus": dict(sorted(f.next_serving_gpus.items()))}


# ---------------------------------------------------------------- pre-warm
def prewarm_floor(f: InForce | None, settings: AutoscalingSettings, desk_pools: Mapping[str, str],
                  now: datetime) -> dict[str, float]:
    """GPUs per autoscaled pool to hold ready for serving reservations: each pool switches to
    the next window's reservations `lead_time_s` (a node's start time) before the switch, so the
    nodes are up when the window starts. A desk's serving maps to `autoscaling.desks.<d>.pool`,
    else to `desk_pools[d]` (its first configured pool)."""
    if f is None:
        return {}
    out: dict[str, float] = {}
    for pool, cfg in settings.pools.items():
        ahead = (f.switch_at - now).total_seconds() <= cfg.lead_time_s
        serving = f.next_serving_gpus if ahead else f.serving_gpus
        total = 0.0
        for desk, gpus in serving.items():
            dcfg = settings.desks.get(desk)
            if (dcfg.pool if dcfg is not None and dcfg.pool else desk_pools.get(desk)) == pool:
                total += gpus
        if total > 0:
            out[pool] = total
    return out


# ---------------------------------------------------------------- audit records for replay
def record_decisions(s: "ControllerState", snap: ClusterSnapshot, decision: CycleDecision) -> int:
    """Before `act`: keep the audit records of what this cycle decided (see module docstring).
    Returns how many records were written (0: nothing new was decided)."""
    if not s.config.controller.audit_snapshots:
        return 0
    changed = tuple(d for d in decision.waits if _wait_changed(s.last_decision.get(d.job_id), d))
    kept = CycleDecision(decision.admits, decision.preempts, changed, decision.refusals)
    if not kept.all():
        return 0
    window = _window_now(s)
    text = canonical_json(snap)           # once: the hash and the stored copy are the same text
    records = records_of_cycle(snap, kept, window, snapshot_sha=hash_text(text))
    return _store(s, snap.now, window, text, records, {"policy": canonical(s.policy)}, "decisions")


def record_elastic(s: "ControllerState", snap: ClusterSnapshot, gangs: Sequence[ElasticGang],
                   shrunk: Sequence[Decision], grown: Sequence[Grow]) -> int:
    """Before they are acted on: the audit records of the elastic step's grows and shrinks, with
    its snapshot and the gangs it was given, so `rayfin replay` re-runs them too. Returns how
    many records were written."""
    if not s.config.controller.audit_snapshots or not (shrunk or grown):
        return 0
    window = _window_now(s)
    text = canonical_json(snap)
    records = elastic_records(snap, shrunk, grown, window, hash_text(text))
    return _store(s, snap.now, window, text, records, {"step": ELASTIC_STEP, "gangs": canonical(list(gangs)),
                                                       "grace_s": canonical(s.policy.preemption_grace_s)},
                  "elastic decisions")


def _window_now(s: "ControllerState") -> WindowName | None:
    return s.in_force.effective if s.in_force is not None else None


def _store(s: "ControllerState", now: float, window: WindowName | None, text: str, records: Sequence[AuditRecord],
           extra: dict[str, Any], what: str) -> int:
    """One `decision_snapshot` event: the records, the snapshot's canonical text (the hashed text
    itself, not re-encoded; only its size when over MAX_SNAPSHOT_BYTES) and what replay needs
    besides (`extra`). Returns how many records were written."""
    data: dict[str, Any] = {"hash": records[0].snapshot_hash, "window": None if window is None else window.value,
                            "records": [r.to_dict() for r in records], **extra}
    if len(text) <= MAX_SNAPSHOT_BYTES:
        data["snapshot"] = text
    else:
        data["snapshot_bytes"] = len(text)
    verdicts = ", ".join(f"{r.verdict} {r.subject}" for r in records[:5]) + (" ..." if len(records) > 5 else "")
    s.ledger.record(now, "", "", SNAPSHOT_EVENT, "", f"{len(records)} {what}: {verdicts}", data,
                    ReasonCode.DECISIONS_RECORDED)
    return len(records)


def _wait_changed(prev: Decision | None, d: Decision) -> bool:
    return prev is None or prev.reasons != d.reasons


def audit_records(events: Iterable[Event]) -> list[AuditRecord]:
    """The audit trail of `rayfin audit --export`: every recorded decision and every window
    change, in ledger order, numbered from 0."""
    out: list[AuditRecord] = []
    for e in events:
        if e.kind == SNAPSHOT_EVENT:
            for r in (e.data or {}).get("records", []):
                out.append(AuditRecord.from_dict({**r, "seq": len(out)}))
        elif e.kind == WINDOW_EVENT:
            data = e.data or {}
            out.append(AuditRecord(len(out), e.ts, "plan", None, "switch", AuditReason.WINDOW_SWITCH, e.reason,
                                   _window(data.get("effective")), "", e.reason_code))
    return out


def _window(value: Any) -> WindowName | None:
    return None if value is None else WindowName(value)


def replay_events(events: Iterable[Event], policy: SchedulerConfig | None = None) -> ReplayReport:
    """Re-run each recorded snapshot through the scheduler (the policy it was recorded with,
    unless `policy` is given) and report decisions that come out differently. Records are numbered
    as `audit_records` numbers them. A record whose snapshot was not kept (over
    MAX_SNAPSHOT_BYTES) cannot be re-run and is reported as DECISION_MISSING."""
    checked, mismatches, seq = 0, [], 0
    for e in events:
        if e.kind == WINDOW_EVENT:
            seq += 1
        if e.kind != SNAPSHOT_EVENT:
            continue
        data = e.data or {}
        recs = []
        for r in data.get("records", []):
            recs.append(AuditRecord.from_dict({**r, "seq": seq}))
            seq += 1
        if "snapshot" not in data:
            checked += len(recs)
            mismatches += [Mismatch(r.seq, r.subject, ReplayCode.DECISION_MISSING, r.verdict, None) for r in recs]
            continue
        body = data["snapshot"]
        body = json.loads(body) if isinstance(body, str) else body
        if data.get("step") == ELASTIC_STEP:    # the elastic step's grows and shrinks
            try:
                gangs = [decode(ElasticGang, g) for g in data.get("gangs", [])]
                grace = decode(float, data.get("grace_s", "0.0"))
            except (ValueError, TypeError, KeyError) as exc:   # the stored gangs were edited into nonsense
                checked += len(recs)
                mismatches += [Mismatch(r.seq, r.subject, ReplayCode.SNAPSHOT_ALTERED, r.verdict,
                                        f"stored gangs unreadable: {exc}") for r in recs]
                continue
            again = elastic_policy(gangs, grace)
        else:
            again = schedule_policy(policy or decode(SchedulerConfig, data["policy"]))
        rep = replay([(snapshot_from_canonical(body), recs)], again)
        checked += rep.checked
        mismatches.extend(rep.mismatches)
    return ReplayReport(checked, tuple(mismatches))


__all__ = ["apply", "prewarm_floor", "quota_clock", "record_decisions", "record_elastic", "audit_records",
           "replay_events", "view", "window_data", "WINDOW_EVENT", "SNAPSHOT_EVENT", "MAX_SNAPSHOT_BYTES"]
