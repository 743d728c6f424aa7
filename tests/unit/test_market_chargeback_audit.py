"""Chargeback sums (exact, both ways) and the audit's replay (no Ray, fixed clock)."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from fractions import Fraction

import pytest

from rayfin.market.audit import (AuditReason, ReplayCode, records_of_cycle, replay, schedule_policy, snapshot_hash,
                                 to_csv, to_jsonl)
from rayfin.market.chargeback import GroupBy, UsageRecord, WorkKind, chargeback, reconcile
from rayfin.market.plan import WindowName
from rayfin.policy import Policy, SchedulerConfig, schedule
from tests.support.policy import desks, pend, run, snap, topo

UTC = timezone.utc
T0 = datetime(2025, 11, 25, 0, 0, tzinfo=UTC)


def h(x: float) -> datetime:
    return T0 + timedelta(hours=x)


RECORDS = [
    # risk: 4 GPUs x 2 h batch, 2 of them borrowed from eq -> 8 GPU-h, 4 borrowed
    UsageRecord("r1", "risk", WorkKind.BATCH, "general", 4, h(0), h(2), borrowed={"eq": 2}),
    # eq: 8 GPUs x 1.5 h, preempted -> 12 GPU-h, all preempted
    UsageRecord("e1", "eq", WorkKind.BATCH, "general", 8, h(1), h(2.5), preempted=True),
    # eq serving: 2 GPUs x 3 h on the h100 pool -> 6 GPU-h
    UsageRecord("s1", "eq", WorkKind.SERVING, "h100", 2, h(0), h(3), model="pricer"),
    # fx: 1 GPU from 3 h to 5 h, half outside [0, 4) -> 1 GPU-h counted
    UsageRecord("f1", "fx", WorkKind.BATCH, "general", 1, h(3), h(5), borrowed={"risk": 1}),
]
RATES = {"general": 2.5, "h100": 4.0}


def test_chargeback_by_desk_sums_and_costs():
    rep = chargeback(RECORDS, h(0), h(4), RATES)
    rows = {r.key: r for r in rep.rows}
    assert rows["risk"].batch_gpu_h == 8 and rows["risk"].borrowed_gpu_h == 4 and rows["risk"].lent_gpu_h == 1
    assert rows["eq"].batch_gpu_h == 12 and rows["eq"].serving_gpu_h == 6 and rows["eq"].preempted_gpu_h == 12
    assert rows["eq"].lent_gpu_h == 4 and rows["fx"].batch_gpu_h == 1 and rows["fx"].borrowed_gpu_h == 1
    # cost: eq 12 x 2.5 + 6 x 4.0 = 54; risk 8 x 2.5 = 20; fx 1 x 2.5 = 2.5 -> 76.5
    assert (rows["eq"].cost, rep.total.cost) == (54, Fraction(153, 2))
    # 8 + 12 + 6 + 1 = 27 GPU-h; lent = borrowed = 4 + 1
    assert rep.total.gpu_h == 27 and rep.total.lent_gpu_h == rep.total.borrowed_gpu_h == 5
    assert {(f.lender, f.borrower): f.gpu_h for f in rep.flows} == {("eq", "risk"): 4, ("risk", "fx"): 1}
    assert reconcile(rep, RECORDS)


@pytest.mark.parametrize("by", list(GroupBy))
def test_chargeback_reconciles_exactly_with_awkward_numbers(by):
    # 7 GPUs x 1/3 h pieces, 0.1-GPU fractions and microsecond edges: rows and records agree exactly
    recs = [UsageRecord(f"j{k}", f"d{k % 3}", WorkKind.BATCH if k % 2 else WorkKind.SERVING, "general",
                        0.1 * (k + 1), h(k / 3), h(k / 3) + timedelta(minutes=20, microseconds=k), model=f"m{k % 2}")
            for k in range(50)]
    rep = chargeback(recs, h(0.05), h(15), RATES, by)
    assert reconcile(rep, recs)
    assert sum((r.gpu_h for r in rep.rows), Fraction(0)) == rep.total.gpu_h


def test_chargeback_outputs_and_a_missing_rate():
    rep = chargeback(RECORDS, h(0), h(4), RATES)
    doc = json.loads(rep.to_json())
    assert doc["total"]["gpu_hours"] == 27.0 and doc["flows"][0] == {"lender": "eq", "borrower": "risk", "gpu_hours": 4.0}
    assert rep.to_csv().splitlines()[0].startswith("desk,gpu_hours,batch_gpu_hours")
    table = rep.format_table()
    assert "TOTAL" in table and "lender  ->  borrower  gpu_hours" in table
    assert ["eq", "->", "risk", "4.00"] in [line.split() for line in table.splitlines()]   # who lent to whom
    with pytest.raises(ValueError, match="no rate for pool 'h100'"):
        chargeback(RECORDS, h(0), h(4), {"general": 1.0})


T = topo()
RAYFIN = SchedulerConfig.preset(Policy.RAYFIN)


def _recorded():
    # desk a borrows all 16 GPUs (nominal 8); b (nominal 8) asks for 4: reclaim one of a's jobs; c1 waits
    running = [run(f"x{k}", "a", (isl, 4), started=k) for k, isl in enumerate(["n0-i0", "n0-i1", "n1-i0", "n1-i1"])]
    s = snap(T, desks(a=8, b=8), running, [pend("b1", "b", 4), pend("a9", "a", 12, t=1)], now=100.0)
    return s, records_of_cycle(s, schedule(s, RAYFIN), WindowName.EOD)


def test_snapshot_hash_is_stable_and_sensitive():
    s, recs = _recorded()
    assert snapshot_hash(s) == snapshot_hash(replace(s)) == recs[0].snapshot_hash
    assert snapshot_hash(replace(s, now=101.0)) != snapshot_hash(s)
    assert {r.reason for r in recs} >= {AuditReason.PREEMPTED, AuditReason.QUEUED}
    assert all(r.window is WindowName.EOD for r in recs)
    line = json.loads(to_jsonl(recs).splitlines()[0])
    assert line["window"] == "eod" and len(line["snapshot_hash"]) == 64
    assert to_csv(recs).splitlines()[0].startswith("seq,at_s,subject")


def test_replay_same_code_finds_nothing():
    s, recs = _recorded()
    rep = replay([(s, recs)], schedule_policy(RAYFIN))
    assert rep.ok and rep.checked == len(recs)


def test_replay_finds_a_changed_decision_and_an_altered_snapshot():
    s, recs = _recorded()
    # a policy change: no reclaim -> b1's reclaim (wait with victims) and x*'s preemption come out differently
    changed = replay([(s, recs)], schedule_policy(RAYFIN.copy(reclaim=False)))
    codes = {(m.subject, m.code) for m in changed.mismatches}
    victim = next(r.subject for r in recs if r.reason is AuditReason.PREEMPTED)
    assert (victim, ReplayCode.DECISION_MISSING) in codes
    # static quotas: a9 (12 GPUs > a's nominal 8, no borrowing) is refused instead of queued
    static = replay([(s, recs)], schedule_policy(SchedulerConfig.preset(Policy.STATIC)))
    assert [(m.subject, m.code, m.recorded, m.replayed) for m in static.mismatches
            if m.subject == "a9"] == [("a9", ReplayCode.DECISION_CHANGED, "wait", "refuse")]
    # a stored snapshot edited after the fact no longer matches its records
    altered = replay([(replace(s, now=999.0), recs)], schedule_policy(RAYFIN))
    assert {m.code for m in altered.mismatches} == {ReplayCode.SNAPSHOT_ALTERED}
