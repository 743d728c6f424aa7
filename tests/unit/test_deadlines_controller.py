"""Deadlines in the controller (rayfin.controller.deadlines): the submit answer, EDF and the slack
escalation through ControllerCore on the FakeBackend with an injected clock, the record kept in
the ledger, the API's validation and its typed refusal, and the pure ahead/capacity functions.

Cluster (configs/test.yaml): general pool n0 (two islands of 4) for equities (nominal 4, may
borrow 4) and fx (nominal 4, no borrowing); risk pool n1 (8) for risk; quant owns nothing and
borrows in both. Clock: epoch seconds (Clock(T0)).
"""
from __future__ import annotations

import base64
from datetime import datetime, timezone

import cloudpickle
import pytest
from fastapi.testclient import TestClient

from rayfin.api import ApiLimits, build_app
from rayfin.controller.backend import FakeBackend
from rayfin.controller.core import ControllerCore
from rayfin.controller.ledger import SqliteLedger
from rayfin.controller.recorder import NullRecorder
from rayfin.controller.records import JobRecord
from rayfin.errors import InvalidRequest
from rayfin.jobspec import JobSpec
from rayfin.market.deadline import CapacityStep, DeskWork, ahead_by_job, ahead_of, capacity_steps, eta
from rayfin.market.errors import DeadlineInfeasible
from rayfin.policy.hints import JobHint
from rayfin.policy.model import PendingJob, Priority
from rayfin.policy.ordering import JobRank, order
from rayfin.sdk import connect
from rayfin.tables import job_lines
from tests.support.api import CorePort
from tests.support.builders import Clock, config

UTC = timezone.utc
TOK = {d: f"{d}-demo-token" for d in ("equities", "fx", "risk", "quant", "admin")}
T0 = datetime(2025, 11, 26, 20, 0, tzinfo=UTC).timestamp()     # Wed 26 Nov 2025, 15:00 New York


def at(seconds: float) -> str:
    return datetime.fromtimestamp(T0 + seconds, UTC).isoformat()


class Spy(NullRecorder):
    def __init__(self) -> None:
        self.deadlines: list[tuple[str, str]] = []

    def deadline_changed(self, job, code) -> None:
        self.deadlines.append((job.job_id, str(code)))


def make(tmp_path, **patch):
    clock, spy, backend = Clock(T0), Spy(), FakeBackend()
    ids = iter(range(1000))
    ledger = SqliteLedger(tmp_path / "ledger.db")
    core = ControllerCore(config(**patch), ledger, backend, clock=clock, recorder=spy,
                          new_id=lambda d: f"{d}-{next(ids):08x}")
    return core, backend, clock, spy, ledger


@pytest.fixture
def env(tmp_path):
    return make(tmp_path)


def spec(gpus=1, **kw):
    return {"kind": "callable", "payload": b"x", "gpus": gpus, **kw}


def run(core, n=1):
    for _ in range(n):
        core.cycle()


def kinds(ledger, job_id):
    return [e.kind for e in ledger.events(job_id=job_id, limit=100)]


# ---------------------------------------------------------------- the submit answer
def test_no_deadline_no_answer(env):
    core, *_ = env
    job = core.submit(TOK["fx"], "fx", spec(1))
    assert "answer" not in job and job["deadline"] is None and job["deadline_status"] is None


def test_admitted_on_an_idle_desk_with_eta_now_plus_runtime(env):
    core, _, clock, spy, ledger = env
    job = core.submit(TOK["fx"], "fx", spec(2, deadline=at(3600), expected_runtime_s=600))
    a = job["answer"]
    assert a["verdict"] == "admitted" and a["eta"] == T0 + 600 and a["deadline"] == T0 + 3600
    assert a["runtime_source"] == "given" and "before the deadline" in a["reason"]
    st = core.status(TOK["fx"], job["job_id"])
    assert (st["deadline"], st["eta"], st["deadline_status"]) == (T0 + 3600, T0 + 600, "on_track")
    assert "deadline_admitted" in kinds(ledger, job["job_id"])
    assert spy.deadlines == []                         # admitted: no at-risk metric


def test_at_risk_when_the_desk_queue_ahead_pushes_the_eta_past_the_deadline(env):
    core, _, clock, spy, ledger = env
    # fx (nominal 4) is busy for 1,000 s more on all 4 GPUs
    busy = core.submit(TOK["fx"], "fx", spec(4, expected_runtime_s=1000))["job_id"]
    run(core, 3)
    assert core.status(TOK["fx"], busy)["state"] == "RUNNING"
    # ahead 4 x 1,000 GPU-s at 4 GPUs: starts at +1,000, ends at +1,300 > +1,200
    job = core.submit(TOK["fx"], "fx", spec(2, deadline=at(1200), expected_runtime_s=300))
    assert job["answer"]["verdict"] == "at_risk" and job["answer"]["eta"] == pytest.approx(T0 + 1300)
    assert job["deadline_status"] == "at_risk" and job["eta"] == pytest.approx(T0 + 1300)
    assert kinds(ledger, job["job_id"]).count("deadline_at_risk") == 1
    assert spy.deadlines == [(job["job_id"], "deadline_at_risk")]      # the metric, once
    run(core, 3)                                                        # still at risk: no new event
    assert kinds(ledger, job["job_id"]).count("deadline_at_risk") == 1
    assert [c for _, c in spy.deadlines].count("deadline_at_risk") == 1


def test_infeasible_raises_typed_with_earliest_finish_and_queues_nothing(env):
    core, _, _, spy, ledger = env
    with pytest.raises(DeadlineInfeasible) as err:
        core.submit(TOK["fx"], "fx", spec(1, deadline=at(300), expected_runtime_s=900))
    e = err.value
    assert e.earliest_finish == datetime.fromtimestamp(T0 + 900, UTC).isoformat()
    assert e.deadline == datetime.fromtimestamp(T0 + 300, UTC).isoformat() and e.runtime_s == 900
    assert "earliest" in e.message
    assert core.jobs(TOK["fx"], "fx") == []
    refused = [ev for ev in ledger.events(desk="fx", limit=10) if ev.kind == "refused"]
    assert refused and refused[-1].reason_code == "deadline_infeasible"


def test_unknown_runtime_is_at_risk_never_admitted(env):
    core, *_ = env
    job = core.submit(TOK["fx"], "fx", spec(1, deadline=at(3600)))
    assert job["answer"]["verdict"] == "at_risk" and job["answer"]["eta"] is None
    assert job["answer"]["runtime_source"] == "unknown"


@pytest.mark.parametrize("deadline, words", [
    ("25:00", "HH:MM"),
    ("tomorrow", "open-30m"),
    ("2026-11-30T21:00:00", "naive"),                       # no UTC offset: ambiguous
    (datetime(2026, 11, 30, 21, 0), "naive"),               # a naive datetime
    ("open-30x", "HH:MM"),
])
def test_bad_deadline_names_the_field_and_the_forms(env, deadline, words):
    core, *_ = env
    with pytest.raises(InvalidRequest) as err:
        core.submit(TOK["fx"], "fx", spec(1, deadline=deadline))
    assert err.value.field == "deadline" and words in err.value.allowed


def test_string_forms_need_a_calendar_and_past_deadlines_are_refused(env):
    core, *_ = env
    with pytest.raises(InvalidRequest) as err:
        core.submit(TOK["fx"], "fx", spec(1, deadline="open-30m"))
    assert err.value.field == "deadline" and "no `calendar:`" in err.value.allowed
    assert "absolute datetime" in err.value.allowed
    with pytest.raises(InvalidRequest) as past:
        core.submit(TOK["fx"], "fx", spec(1, deadline=at(-60), expected_runtime_s=1))
    assert past.value.field == "deadline" and "after now" in past.value.allowed


def test_string_forms_on_the_calendar(tmp_path):
    core, *_ = make(tmp_path, calendar={"exchange": "XNYS"})
    # Wed 15:00 New York: the next open skips Thanksgiving -> Fri 28 09:30 - 30 min = 14:00Z
    a = core.submit(TOK["fx"], "fx", spec(1, deadline="open-30m", expected_runtime_s=60))
    assert a["deadline"] == datetime(2025, 11, 28, 14, 0, tzinfo=UTC).timestamp()
    b = core.submit(TOK["fx"], "fx", spec(1, deadline="17:00", expected_runtime_s=60))    # 17:00 New York
    assert b["deadline"] == datetime(2025, 11, 26, 22, 0, tzinfo=UTC).timestamp()


def test_quota_plan_windows_feed_the_eta(tmp_path):
    # risk's nominal is 8, but 2 in the eod window (16:00-22:00 New York = +1 h to +7 h)
    core, *_ = make(tmp_path, calendar={"exchange": "XNYS"},
                    quota_plan={"desks": {"risk": {"eod": {"nominal_gpus": 2}}}})
    busy = core.submit(TOK["risk"], "risk", spec(8, workers="per_gpu", expected_runtime_s=3600))["job_id"]
    run(core, 3)
    assert core.status(TOK["risk"], busy)["state"] == "RUNNING"
    job = core.submit(TOK["risk"], "risk", spec(4, deadline=at(86400), expected_runtime_s=1200))
    # 8 x 3,600 GPU-s ahead drain at 8 GPUs by +1 h, when eod starts; a 4-GPU job cannot run on
    # eod's 2 guaranteed GPUs, so it starts at 22:00 New York (03:00Z) and ends 1,200 s later
    assert job["answer"]["eta"] == pytest.approx(datetime(2025, 11, 27, 3, 20, tzinfo=UTC).timestamp())
    # without the plan: right after the busy job, at +1 h
    plain, *_ = make(tmp_path / "plain", calendar={"exchange": "XNYS"})
    plain.submit(TOK["risk"], "risk", spec(8, workers="per_gpu", expected_runtime_s=3600))
    run(plain, 3)
    job = plain.submit(TOK["risk"], "risk", spec(4, deadline=at(86400), expected_runtime_s=1200))
    assert job["answer"]["eta"] == pytest.approx(T0 + 3600 + 1200)


# ---------------------------------------------------------------- EDF and escalation
def test_edf_inside_the_desk(env):
    core, backend, clock, *_ = env
    blocker = core.submit(TOK["fx"], "fx", spec(4, expected_runtime_s=100))["job_id"]
    run(core, 3)
    plain = core.submit(TOK["fx"], "fx", spec(4, expected_runtime_s=50))["job_id"]    # shortest: first without EDF
    late = core.submit(TOK["fx"], "fx", spec(4, deadline=at(40000), expected_runtime_s=100))["job_id"]
    soon = core.submit(TOK["fx"], "fx", spec(4, deadline=at(30000), expected_runtime_s=100))["job_id"]
    started = []
    for job in (blocker, soon, late):
        backend.finish(job)
        run(core)
        admitted = [j for j in (plain, late, soon) if core.status(TOK["fx"], j)["state"] == "ADMITTED"]
        started += admitted
        run(core, 2)
    assert started == [soon, late, plain]
    assert not any(core.status(TOK["fx"], j)["escalated"] for j in (soon, late))   # plenty of slack


def test_slack_running_out_escalates_and_reclaims_borrowed_work(env):
    core, backend, clock, spy, ledger = env
    # risk holds 5 of its 8 (no island of its pool has 4 free: quant's 4-GPU worker lands in the
    # general pool, on fx's unused nominal) and lends 3; equities holds its nominal 4 itself
    core.submit(TOK["risk"], "risk", spec(4, expected_runtime_s=50000))
    core.submit(TOK["risk"], "risk", spec(1, expected_runtime_s=50000))
    own = core.submit(TOK["equities"], "equities", spec(4, expected_runtime_s=50000))["job_id"]
    run(core, 3)
    borrower = core.submit(TOK["quant"], "quant", spec(4, priority="batch"))["job_id"]
    run(core, 3)
    assert core.status(TOK["quant"], borrower)["state"] == "RUNNING"
    assert all(i.startswith("n0-") for i, _ in backend.group_of(borrower))
    # equities asks 2 GPUs more by +3 h: at normal priority it must borrow (risk lends 3 in quota
    # terms), but no placement has 2 free GPUs, and borrowers never preempt
    job = core.submit(TOK["equities"], "equities", spec(2, deadline=at(10800), expected_runtime_s=600))
    jid = job["job_id"]
    assert job["answer"]["verdict"] == "at_risk"       # its own 4 GPUs are busy for 50,000 s
    run(core, 3)
    st = core.status(TOK["equities"], jid)
    assert st["state"] == "PENDING" and not st["escalated"]          # slack 10,800 - 720 > 3,600
    assert core.status(TOK["quant"], borrower)["state"] == "RUNNING"
    assert backend.stops == []
    clock.advance(7200 + 60)                                          # slack 3,540 - 720 < 3,600
    run(core)
    st = core.status(TOK["equities"], jid)
    assert st["escalated"] and "deadline_escalated" in kinds(ledger, jid)
    q = core.status(TOK["quant"], borrower)
    assert q["preempt_deadline"] is not None and q["reason_code"] == "reclaim"    # borrowed work, not own
    assert core.status(TOK["equities"], own)["preempt_deadline"] is None
    clock.advance(31)                                                 # the grace period
    run(core, 4)
    st = core.status(TOK["equities"], jid)
    assert st["state"] == "RUNNING" and st["eta"] == pytest.approx(clock.t + 600, abs=1)
    assert st["deadline_status"] == "on_track"
    assert kinds(ledger, jid).count("deadline_escalated") == 1 and "deadline_on_track" in kinds(ledger, jid)
    assert [c for j, c in spy.deadlines if j == jid] == ["deadline_at_risk", "deadline_escalated", "deadline_on_track"]
    explain = core.explain(TOK["equities"], jid)
    assert explain["job"]["deadline"] == T0 + 10800


# ---------------------------------------------------------------- the record
def test_record_keeps_deadline_and_eta_and_old_rows_load(env):
    core, _, _, _, ledger = env
    jid = core.submit(TOK["fx"], "fx", spec(1, deadline=at(3600), expected_runtime_s=60))["job_id"]
    back = ledger.get_job(jid)
    assert (back.deadline, back.eta, back.expected_runtime_s, back.deadline_risk) == (T0 + 3600, T0 + 60, 60, False)
    old = JobRecord(job_id="fx-1", desk="fx", name="j", kind="callable", gpus=1, priority=1, comm="none",
                    state="PENDING", submitted_at=1.0, info={"gen": 2})          # a row from before deadlines
    assert old.deadline is None and old.eta is None and old.public()["deadline_status"] is None
    stored = JobRecord(**{**old.__dict__, "info": back.stored_info()})
    assert stored.deadline == T0 + 3600 and "deadline" not in stored.info


def test_jobs_table_shows_deadline_and_eta(env):
    core, *_ = env
    core.submit(TOK["fx"], "fx", spec(1, deadline=at(3600)))
    from rayfin.sdk import JobStatus
    rows = [JobStatus.from_public(j) for j in core.jobs(TOK["fx"], "fx")]
    lines = job_lines(rows)
    assert "deadline" in lines[0] and "eta" in lines[0]
    assert "11-26 21:00" in lines[1] and "?!" in lines[1]           # no runtime: no ETA, at risk
    from rayfin.cli import deadline_lines
    job = core.explain(TOK["fx"], rows[0].job_id)["job"]
    assert deadline_lines(job) == ["  deadline: 2025-11-26 21:00:00Z, no ETA (at risk)"]
    assert deadline_lines({**job, "deadline": None}) == []


# ---------------------------------------------------------------- the API and the SDK
@pytest.fixture
def api(tmp_path):
    core, backend, clock, spy, ledger = make(tmp_path)
    return core, TestClient(build_app(CorePort(core), ApiLimits()))


def body(**kw):
    b64 = base64.b64encode(cloudpickle.dumps((len, ("abc",), {}))).decode()
    return {"desk": "fx", "kind": "callable", "payload_b64": b64, "gpus": 1, **kw}


@pytest.mark.parametrize("deadline", ["25:61", "soon", "2026-11-30T21:00:00", 17])
def test_api_bad_deadline_is_422_naming_the_field(api, deadline):
    _, c = api
    r = c.post("/v1/jobs", json=body(deadline=deadline), headers={"Authorization": f"Bearer {TOK['fx']}"})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "InvalidRequest" and err["fields"]["field"] == "deadline"
    assert "HH:MM" in err["fields"]["allowed"] and "open-30m" in err["fields"]["allowed"]


def test_api_infeasible_is_422_and_the_sdk_raises_it_typed(api):
    core, c = api
    r = c.post("/v1/jobs", json=body(deadline=at(60), expected_runtime_s=120),
               headers={"Authorization": f"Bearer {TOK['fx']}"})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "DeadlineInfeasible"
    assert err["fields"]["earliest_finish"] == datetime.fromtimestamp(T0 + 120, UTC).isoformat()
    fx = connect("fx", token=TOK["fx"], url="http://testserver", transport=c._transport, retry_s=0)
    with pytest.raises(DeadlineInfeasible) as raised:
        fx.submit(len, "abc", deadline=datetime.fromtimestamp(T0 + 60, UTC), expected_runtime_s=120)
    assert raised.value.earliest_finish == err["fields"]["earliest_finish"]
    job = fx.submit(len, "abc", deadline=datetime.fromtimestamp(T0 + 600, UTC), expected_runtime_s=120)
    assert job.answer.verdict == "admitted" and job.answer.eta == datetime.fromtimestamp(T0 + 120, UTC)
    st = job.status()
    assert st.deadline == datetime.fromtimestamp(T0 + 600, UTC) and st.deadline_status == "on_track"
    assert str(job.answer).startswith("admitted: ETA 2025-11-26 20:02:00Z, deadline 2025-11-26 20:10:00Z")
    with pytest.raises(InvalidRequest) as bad:                 # checked in the SDK, before the network
        fx.submit(len, "abc", deadline="half past nine")
    assert bad.value.field == "deadline"


def test_spec_wire_form():
    s = JobSpec.parse(spec(1, deadline=datetime(2026, 1, 2, 3, 4, tzinfo=UTC), expected_runtime_s=5))
    assert s.deadline == "2026-01-02T03:04:00+00:00" and s.expected_runtime_s == 5.0
    assert JobSpec.parse(spec(1, deadline="2026-01-02T03:04:00Z")).deadline == "2026-01-02T03:04:00+00:00"
    assert JobSpec.parse(spec(1, deadline=" close+2h ")).deadline == "close+2h"
    for bad in (0, -1, float("nan"), True, "10"):
        with pytest.raises(InvalidRequest) as err:
            JobSpec.parse(spec(1, expected_runtime_s=bad))
        assert err.value.field == "expected_runtime_s"


# ---------------------------------------------------------------- the pure parts
def test_ahead_counts_running_work_then_the_queue_in_edf_order():
    work = [DeskWork("run", 4, 300, running=True),
            DeskWork("plain", 2, 100, priority=1, submitted_at=1.0),
            DeskWork("late", 2, 600, priority=1, deadline_s=9000, submitted_at=2.0),
            DeskWork("soon", 1, 600, priority=1, deadline_s=5000, submitted_at=3.0),
            DeskWork("crit", 1, 50, priority=2, submitted_at=4.0)]
    a = ahead_by_job(work)
    assert a == {"crit": 1200, "soon": 1250, "late": 1850, "plain": 3050}
    assert ahead_of(DeskWork("new", 1, 10, priority=1, deadline_s=6000), work) == 1850
    # the docstring's example
    assert ahead_by_job([DeskWork("r", 4, 300, running=True), DeskWork("A", 2, 600, deadline_s=1.0),
                         DeskWork("B", 1, 10)]) == {"A": 1200, "B": 2400}


def test_capacity_steps_follow_the_plan_windows_and_fall_back_to_base():
    assert capacity_steps(100, 4) == (CapacityStep(100, 4),)
    steps = capacity_steps(100, 4, [(0, 200, 4), (200, 500, 1), (500, 900, 6)])
    assert steps == (CapacityStep(100, 4), CapacityStep(200, 1), CapacityStep(500, 6), CapacityStep(900, 4))
    # a job of 2 GPUs with 1,000 GPU-s ahead: 400 GPU-s by 200, nothing it can use 200-500, then 6 GPUs
    assert eta(100, 100, 2, 1000, steps) == pytest.approx(500 + (1000 - 400 - 300) / 6 + 100)


def test_order_puts_deadline_jobs_first_by_deadline_inside_each_priority():
    jobs = [PendingJob("a", "fx", 1, Priority.NORMAL, 1.0), PendingJob("b", "fx", 1, Priority.NORMAL, 2.0),
            PendingJob("c", "fx", 1, Priority.NORMAL, 3.0), PendingJob("d", "fx", 1, Priority.CRITICAL, 4.0)]
    hints = {"b": JobHint(100.0, deadline_s=900.0), "c": JobHint(100.0, deadline_s=500.0), "a": JobHint(10.0)}
    for rank in JobRank:
        assert [j.job_id for j in order(rank, jobs, hints, 0.0)] == ["d", "c", "b", "a"]
    no_deadlines = {"a": JobHint(10.0), "b": JobHint(100.0), "c": JobHint(50.0)}
    assert [j.job_id for j in order(JobRank.PREDICTED_REMAINING, jobs, no_deadlines, 0.0)] == ["d", "a", "c", "b"]


def test_at_risk_and_escalation_are_metrics_once_per_transition(tmp_path):
    from opentelemetry.sdk.trace import TracerProvider

    from rayfin.telemetry.metrics import METRICS, MemoryMetrics
    from rayfin.telemetry.recorder import TelemetryRecorder

    clock, metrics = Clock(T0), MemoryMetrics()
    cfg = config()
    rec = TelemetryRecorder(cfg, metrics=metrics, tracer_provider=TracerProvider(), clock=clock)
    core = ControllerCore(cfg, SqliteLedger(tmp_path / "l.db"), FakeBackend(), clock=clock, recorder=rec)
    core.submit(TOK["fx"], "fx", spec(4, expected_runtime_s=5000))
    run(core, 3)
    core.submit(TOK["fx"], "fx", spec(1, deadline=at(2000), expected_runtime_s=60))   # at risk, slack < 3,600
    run(core, 5)
    assert metrics.get("rayfin_deadline_at_risk", desk="fx") == 1
    assert metrics.get("rayfin_deadline_escalations", desk="fx") == 1
    assert {"rayfin_deadline_at_risk", "rayfin_deadline_escalations"} <= set(METRICS)


@pytest.mark.parametrize("guard", [True, False])
def test_an_escalated_job_does_not_preempt_its_desks_as_urgent_deadline_work(tmp_path, guard):
    # risk's whole pool runs `first` (due at +15,700 s, 10,000 s long); `late`, due at the same
    # time, waits behind it and escalates when its slack runs out (first's has not). With the guard (the default) it does not
    # priority-preempt `first`, which is as urgent: EDF inside the desk is not undone by
    # preemption. Without it, it does (the thrashing the market benchmark's heavy point showed).
    core, backend, clock, _, _ = make(tmp_path, deadlines={"guard_deadline_class": guard})
    first = core.submit(TOK["risk"], "risk", spec(8, deadline=at(15700), expected_runtime_s=10000, workers="per_gpu"))["job_id"]
    run(core, 3)
    assert core.status(TOK["risk"], first)["state"] == "RUNNING"
    late = core.submit(TOK["risk"], "risk", spec(8, deadline=at(15700), expected_runtime_s=2000, workers="per_gpu"))["job_id"]
    run(core, 2)
    clock.advance(9800)           # slack of late: 5,900 - 1.2 x 2,000 < 3,600; of first: 5,900 - 1.2 x 200
    run(core, 2)
    assert core.status(TOK["risk"], late)["escalated"] and not core.status(TOK["risk"], first)["escalated"]
    preempted = core.status(TOK["risk"], first)["preempt_deadline"] is not None
    assert preempted is (not guard)
