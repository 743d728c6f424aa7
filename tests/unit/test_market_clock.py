"""The controller on the market's clock (rayfin.controller.market_clock), FakeBackend + fake clock:
a window switch moves quota, its reclaim starts one preemption grace early, every change is an
audit event; the capacity planner pre-warms for the next window; decisions are recorded and
replay with no mismatch (and a tampered record gives exactly one).

XNYS, Tue 2025-11-25: the close is 16:00 local = 21:00Z (intraday -> eod). Test config: the
general pool is n0's 8 GPUs; the plan gives equities 6 and fx 2 intraday, equities 2 and fx 6 at
eod. Grace 10 s.
"""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone

from rayfin import cli
from rayfin.autoscale import AutoscaleState, Observations, parse_autoscaling, step
from rayfin.controller import market_clock
from rayfin.market.audit import ReplayCode
from rayfin.market.plan import WindowName
from rayfin.controller.backend import FakeBackend
from rayfin.controller.core import ControllerCore
from rayfin.controller.ledger import SqliteLedger
from rayfin.reasons import ReasonCode
from tests.support.builders import Clock, config, controller_env

UTC = timezone.utc
CLOSE = datetime(2025, 11, 25, 21, 0, tzinfo=UTC).timestamp()
GRACE = 10.0
TOK = {d: f"{d}-demo-token" for d in ("equities", "fx", "risk", "admin")}
PLAN = {"desks": {"equities": {"intraday": {"nominal_gpus": 6}, "eod": {"nominal_gpus": 2}},
                  "fx": {"intraday": {"nominal_gpus": 2, "borrowing_limit": 2, "serving": {"gpus": 1}},
                         "eod": {"nominal_gpus": 6, "serving": {"gpus": 3}}}}}


def market_env(tmp_path, start: float):
    """controller_env with the plan, the clock at `start` from construction on: (core, backend, clock, ledger)."""
    clock, ids, backend = Clock(start), iter(range(1000)), FakeBackend()
    ledger = SqliteLedger(tmp_path / "ledger.db")
    cfg = config(calendar={"exchange": "XNYS"}, quota_plan=PLAN, defaults__preemption_grace_s=GRACE)
    core = ControllerCore(cfg, ledger, backend, clock=clock, new_id=lambda d: f"{d}-{next(ids):08x}")
    return core, backend, clock, ledger


def job(gpus: int) -> dict:
    return {"kind": "callable", "payload": b"x", "gpus": gpus, "workers": "per_gpu"}


def cycles(core, n=2):
    for _ in range(n):
        core.cycle()


def window_events(ledger):
    return [(e.reason_code, e.ts, e.data["effective"]) for e in ledger.events(kinds=[market_clock.WINDOW_EVENT])]


def test_switch_moves_quota_and_reclaim_starts_one_grace_early(tmp_path):
    core, backend, clock, ledger = market_env(tmp_path, CLOSE - 120)
    cycles(core, 1)
    assert core.state.desks["equities"].nominal == 6 and core.state.desks["fx"].nominal == 2
    eq = core.submit(TOK["equities"], "equities", job(6))["job_id"]
    cycles(core)
    fx = core.submit(TOK["fx"], "fx", job(4))["job_id"]
    cycles(core)
    assert core.status(TOK["fx"], fx)["state"] == "PENDING"          # 2 free GPUs, fx wants 4
    clock.t = CLOSE - GRACE - 1                                       # just before switch - grace: nothing yet
    cycles(core)
    assert core.active[eq].preempt_deadline is None
    clock.t = CLOSE - GRACE                                           # eod quotas from here on
    cycles(core, 1)
    assert core.state.desks["equities"].nominal == 2 and core.state.desks["fx"].nominal == 6
    victim = core.active[eq]
    # equities now borrows 4 of its 6 GPUs; fx (entitled to 6) reclaims: the grace ends at the close
    assert victim.preempt_deadline == CLOSE and victim.reason_code is ReasonCode.RECLAIM
    clock.t = CLOSE - 1
    cycles(core)
    assert core.status(TOK["equities"], eq)["state"] == "RUNNING" and core.status(TOK["fx"], fx)["state"] == "PENDING"
    clock.t = CLOSE                                                   # the boundary: fx gets its GPUs now
    cycles(core, 1)
    assert core.status(TOK["equities"], eq)["state"] == "PREEMPTED"
    assert core.status(TOK["fx"], fx)["state"] in ("ADMITTED", "RUNNING")
    evs = window_events(ledger)
    assert evs == [(ReasonCode.WINDOW_IN_FORCE.value, CLOSE - 120, "intraday"),
                   (ReasonCode.WINDOW_RECLAIM_AHEAD.value, CLOSE - GRACE, "eod"),
                   (ReasonCode.WINDOW_SWITCH.value, CLOSE, "eod")]
    ahead = ledger.events(kinds=[market_clock.WINDOW_EVENT])[1].data
    assert ahead["window"] == "intraday" and ahead["next_window"] == "eod" and ahead["switch_at"] == CLOSE
    assert ahead["quotas"]["fx"]["nominal"] == 6.0 and ahead["quotas"]["equities"]["nominal"] == 2.0
    admitted = [e for e in ledger.events(job_id=fx) if e.kind == "admitted"]
    assert admitted and admitted[0].ts == CLOSE
    assert core.market(TOK["admin"])["window"] == "eod"


def test_the_window_gauge_and_the_desks_quota_gauges_follow_the_switch(tmp_path):
    from rayfin.telemetry.metrics import MemoryMetrics
    from rayfin.telemetry.recorder import TelemetryRecorder

    cfg = config(calendar={"exchange": "XNYS"}, quota_plan=PLAN, defaults__preemption_grace_s=GRACE,
                 telemetry={"metrics_publish_interval_s": 0})
    metrics, clock = MemoryMetrics(), Clock(CLOSE - 60)
    core = ControllerCore(cfg, SqliteLedger(tmp_path / "l.db"), FakeBackend(), clock=clock,
                          recorder=TelemetryRecorder(cfg, metrics=metrics))
    core.cycle()
    assert metrics.get("rayfin_quota_window", window="intraday") == 1.0
    assert metrics.get("rayfin_gpus_nominal", desk="fx") == 2 and metrics.get("rayfin_gpus_max", desk="fx") == 4
    clock.t = CLOSE - GRACE
    core.cycle()
    assert metrics.get("rayfin_quota_window", window="intraday") == 0.0
    assert metrics.get("rayfin_quota_window", window="eod") == 1.0
    assert metrics.get("rayfin_gpus_nominal", desk="fx") == 6 and metrics.get("rayfin_gpus_max", desk="fx") == 6


def test_prewarm_floor_moves_the_planners_target_before_the_switch(tmp_path):
    core, _, clock, _ = market_env(tmp_path, CLOSE - 900)
    settings = parse_autoscaling({"pools": {"general": {"lead_time_s": 300}}})

    def target(t: float) -> float:
        clock.t = t
        core.cycle()
        floor = core.prewarm_floor(settings)
        request, _ = step(AutoscaleState(), Observations(pool_demand_gpus={"general": 0.0}, floor_gpus=floor), t,
                          settings)
        return request.pools["general"].gpus

    # fx reserves 1 serving GPU intraday and 3 at eod (pool general); lead 300 s
    assert target(CLOSE - 600) == 1.0
    assert target(CLOSE - 301) == 1.0
    assert target(CLOSE - 300) == 3.0        # a lead time before the close: the eod reservation
    assert target(CLOSE + 60) == 3.0


def _recorded(tmp_path):
    core, backend, clock, ledger = market_env(tmp_path, CLOSE - 30)
    for desk, gpus in (("equities", 6), ("fx", 4), ("equities", 2)):
        core.submit(TOK[desk], desk, job(gpus))
        cycles(core)
    # a deadline job: its hint (deadline_s) and EDF order are part of the snapshot replay re-runs
    core.submit(TOK["risk"], "risk", {**job(1), "deadline": datetime.fromtimestamp(CLOSE + 4 * 3600, UTC).isoformat(),
                                  "expected_runtime_s": 60})
    cycles(core)
    for t in (CLOSE - GRACE, CLOSE - 5, CLOSE, CLOSE + 1):
        clock.t = t
        cycles(core)
    return core, ledger


def test_decisions_record_export_and_replay_with_no_mismatch(tmp_path, capsys):
    core, ledger = _recorded(tmp_path)
    events = ledger.events(kinds=[market_clock.WINDOW_EVENT, market_clock.SNAPSHOT_EVENT], limit=10**6)
    records = market_clock.audit_records(events)
    verdicts = {(r.subject, r.verdict, r.code) for r in records}
    assert ("equities-00000000", "preempt", "reclaim") in verdicts and ("plan", "switch", "window_switch") in verdicts
    assert {r.window for r in records if r.subject == "equities-00000000" and r.verdict == "preempt"} == \
        {WindowName.EOD}
    assert all(len(r.snapshot_hash) == 64 for r in records if r.subject != "plan")
    assert any('"deadline_s":"' in e.data["snapshot"] for e in events if e.kind == market_clock.SNAPSHOT_EVENT)
    rep = market_clock.replay_events(events)
    assert rep.checked == sum(1 for r in records if r.subject != "plan") >= 4 and rep.ok, rep.mismatches
    # the CLI, offline on the same ledger file
    ledger.close()
    db = str(tmp_path / "ledger.db")
    assert cli.main(["audit", "--export", "jsonl", "--ledger", db, "--since", str(CLOSE - 60)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["seq"] for x in lines] == list(range(len(records))) and lines[0]["code"] == "window_in_force"
    assert cli.main(["audit", "--export", "csv", "--ledger", db, "--since", str(CLOSE - 60)]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("seq,at_s,subject,desk,verdict,reason")
    assert cli.main(["replay", "--ledger", db, "--since", str(CLOSE - 60)]) == 0
    assert "0 differ" in capsys.readouterr().err


def test_a_tampered_record_or_snapshot_is_one_mismatch(tmp_path):
    _, ledger = _recorded(tmp_path)
    events = ledger.events(kinds=[market_clock.SNAPSHOT_EVENT], limit=10**6)
    k = next(i for i, e in enumerate(events) if any(r["verdict"] == "preempt" for r in e.data["records"]))
    data = json.loads(json.dumps(events[k].data))
    rec = next(r for r in data["records"] if r["verdict"] == "preempt")
    rec["verdict"] = "wait"                                       # the record says it only waited
    rep = market_clock.replay_events([*events[:k], replace(events[k], data=data), *events[k + 1:]])
    assert [(m.code, m.recorded, m.replayed) for m in rep.mismatches] == [(ReplayCode.DECISION_CHANGED, "wait",
                                                                          "preempt")]
    data = json.loads(json.dumps(events[k].data))
    snap = json.loads(data["snapshot"])
    snap["now"] = repr(float(snap["now"]) + 1.0)                 # the stored snapshot was edited
    data["snapshot"] = json.dumps(snap)
    rep = market_clock.replay_events([replace(events[k], data=data)])
    assert {m.code for m in rep.mismatches} == {ReplayCode.SNAPSHOT_ALTERED}


def test_a_clock_outside_the_calendar_keeps_the_configured_quotas(tmp_path):
    core, _, _, ledger = market_env(tmp_path, 1000.0)        # 1970: before the library's first session
    core.submit(TOK["fx"], "fx", job(1))
    cycles(core)
    assert core.state.in_force is None and core.state.desks["fx"].nominal == 4.0   # test.yaml's


def test_without_a_calendar_nothing_changes(tmp_path):
    core, _, clock, ledger = controller_env(tmp_path)
    core.submit(TOK["fx"], "fx", job(1))
    cycles(core)
    assert core.state.in_force is None and ledger.events(kinds=[market_clock.WINDOW_EVENT]) == []
    assert core.market(TOK["admin"]) is None and core.prewarm_floor(parse_autoscaling({})) == {}


def test_a_job_over_this_windows_ceiling_but_within_a_later_one_waits_for_it(tmp_path):
    # fx may hold at most 2 + 2 intraday; at eod its nominal is 6. A 6-GPU fx job submitted in
    # the afternoon is not refused as never fitting: it waits, and is admitted at the close.
    core, _, clock, _ = market_env(tmp_path, CLOSE - 120)
    fx = core.submit(TOK["fx"], "fx", job(6))["job_id"]        # before any cycle applied a window
    cycles(core)
    st = core.status(TOK["fx"], fx)
    assert st["state"] == "PENDING" and st["reason_code"] == ReasonCode.OVER_CEILING.value, st
    fx2 = core.submit(TOK["fx"], "fx", job(6))["job_id"]       # and after one did
    cycles(core)
    assert core.status(TOK["fx"], fx2)["state"] == "PENDING"
    clock.t = CLOSE
    cycles(core)
    assert core.status(TOK["fx"], fx)["state"] in ("ADMITTED", "RUNNING")
