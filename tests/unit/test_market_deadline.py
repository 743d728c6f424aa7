"""Deadlines: parsing on the XNYS calendar, ETA arithmetic, the submit answer, EDF with slack.

Clock: seconds from 0 unless a test says otherwise. XNYS in late November is UTC-5.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from rayfin.errors import RequestError
from rayfin.market import DeadlineInfeasible, MarketCalendar
from rayfin.market.deadline import (CapacityStep, DeadlineJob, DeadlineVerdict, RuntimeEstimate, RuntimeSource,
                                    SlackPolicy, Urgency, answer_submit, estimate_runtime, eta, market_order,
                                    parse_deadline, require_feasible)
from rayfin.policy.duration import DurationPredictor, DurationState, JobKey
from rayfin.policy.model import PendingJob, Priority

UTC = timezone.utc
XNYS = MarketCalendar.get("XNYS")
WED_15 = datetime(2025, 11, 26, 20, 0, tzinfo=UTC)    # Wed 26 Nov, 15:00 New York


@pytest.mark.parametrize("value, want", [
    ("close+2h", datetime(2025, 11, 26, 23, 0, tzinfo=UTC)),   # today's close 16:00 + 2 h = 18:00 local
    ("close", datetime(2025, 11, 26, 21, 0, tzinfo=UTC)),
    # the next open after Wed 15:00 skips Thanksgiving: Fri 28 09:30 - 30 min = 09:00 local = 14:00Z
    ("open-30m", datetime(2025, 11, 28, 14, 0, tzinfo=UTC)),
    ("17:00", datetime(2025, 11, 26, 22, 0, tzinfo=UTC)),      # later today
    ("08:00", datetime(2025, 11, 27, 13, 0, tzinfo=UTC)),      # passed today: tomorrow 08:00 local
    (datetime(2025, 11, 27, 1, 0, tzinfo=UTC), datetime(2025, 11, 27, 1, 0, tzinfo=UTC)),
])
def test_parse_deadline(value, want):
    assert parse_deadline(value, XNYS, WED_15) == want


def test_parse_deadline_early_close_moves_close_offsets():
    fri_10 = datetime(2025, 11, 28, 15, 0, tzinfo=UTC)      # Fri 28 10:00 local; close 13:00 local (early)
    assert parse_deadline("close+2h", XNYS, fri_10) == datetime(2025, 11, 28, 20, 0, tzinfo=UTC)   # 15:00 local


@pytest.mark.parametrize("bad", ["noon", "25:00", "open+", "close*2"])
def test_parse_deadline_refuses_bad_forms(bad):
    with pytest.raises(ValueError, match="open-30m"):
        parse_deadline(bad, XNYS, WED_15)


@pytest.mark.parametrize("ahead, gpus, runtime, steps, want", [
    # nothing ahead, 4 GPUs guaranteed: finish = 0 + 1,800
    (0, 2, 1800, [(0, 4)], 1800.0),
    # 7,200 GPU-s ahead drain at 4 GPU/s: start 1,800, finish 1,800 + 1,800 = 3,600
    (7200, 2, 1800, [(0, 4)], 3600.0),
    # the desk has 0 GPUs in [1,000, 2,000): drains 4,000 by 1,000, the other 3,200 by 2,000 + 800 = 2,800,
    # finish 2,800 + 1,800 = 4,600
    (7200, 2, 1800, [(0, 4), (1000, 0), (2000, 4)], 4600.0),
    # an 8-GPU job while the desk has 4: waits for the window that gives it 8 at 5,000, finish 5,000 + 600
    (0, 8, 600, [(0, 4), (5000, 8)], 5600.0),
    # run interrupted: 8 GPUs in [0, 1,000), 4 in [1,000, 3,000), 8 after: 1,000 s run, pause, 500 more: 3,500
    (0, 8, 1500, [(0, 8), (1000, 4), (3000, 8)], 3500.0),
    # never enough GPUs: no ETA
    (0, 8, 600, [(0, 4)], None),
])
def test_eta_arithmetic(ahead, gpus, runtime, steps, want):
    assert eta(0.0, runtime, gpus, ahead, [CapacityStep(a, g) for a, g in steps]) == want


@pytest.mark.parametrize("deadline, ahead, verdict, eta_s", [
    (10_000, 0, DeadlineVerdict.ADMITTED, 1800.0),          # ETA 1,800 < 10,000 - margin 600
    (3_000, 7200, DeadlineVerdict.AT_RISK, 3600.0),         # ETA 3,600 > 3,000 - 600
    (3_000, 28_800, DeadlineVerdict.AT_RISK, 9000.0),       # 28,800 / 4 = 7,200 + 1,800
    (1_000, 0, DeadlineVerdict.INFEASIBLE, None),           # earliest finish 1,800 > 1,000
])
def test_submit_answer(deadline, ahead, verdict, eta_s):
    a = answer_submit(0.0, deadline, RuntimeEstimate(1800.0, RuntimeSource.GIVEN), 2, ahead, [CapacityStep(0, 4)],
                      margin_s=600.0)
    assert a.verdict is verdict and a.eta_s == eta_s and a.earliest_finish_s == 1800.0


def test_infeasible_raises_a_typed_error_with_the_earliest_finish():
    a = answer_submit(0.0, 1000.0, RuntimeEstimate(1800.0, RuntimeSource.GIVEN), 2, 0, [CapacityStep(0, 4)])
    epoch = datetime(2025, 11, 26, 21, 0, tzinfo=UTC)
    with pytest.raises(DeadlineInfeasible) as exc:
        require_feasible(a, epoch, job_id="j1")
    e = exc.value
    assert isinstance(e, RequestError) and e.job_id == "j1" and e.runtime_s == 1800.0
    assert e.earliest_finish == (epoch + timedelta(seconds=1800)).isoformat()
    assert e.to_wire()["type"] == "DeadlineInfeasible"


def test_runtime_from_history_reuses_the_duration_predictor():
    p, s = DurationPredictor(), DurationState()
    key = JobKey("risk", "alice", "var", 4)
    assert estimate_runtime(None, p, s, key).source is RuntimeSource.UNKNOWN
    for x in (1000.0, 2000.0, 3000.0):
        s = p.observe(s, key, x)
    est = estimate_runtime(None, p, s, key)
    # 0.8 quantile of [1000, 2000, 3000]: position 1.6 -> 2000 + 0.6 x 1000 = 2600
    assert (est.seconds, est.source, est.samples) == (2600.0, RuntimeSource.HISTORY, 3)
    assert estimate_runtime(500.0, p, s, key).source is RuntimeSource.GIVEN
    no = answer_submit(0.0, 1e6, estimate_runtime(None, p, DurationState(), key), 2, 0, [CapacityStep(0, 4)])
    assert no.verdict is DeadlineVerdict.AT_RISK


def _p(jid, desk="risk", t=0.0, prio=Priority.NORMAL):
    return PendingJob(jid, desk, 2, prio, t)


def test_edf_order_with_slack_escalation():
    pending = [_p("other", "eq", 0.0), _p("late-dl", t=1.0), _p("early-dl", t=2.0), _p("nodl", t=3.0)]
    dl = {"late-dl": DeadlineJob("late-dl", 20_000.0, 1000.0),
          "early-dl": DeadlineJob("early-dl", 5_000.0, 3000.0)}
    order, esc = market_order(pending, dl, now_s=0.0, policy=SlackPolicy(threshold_s=3600.0, safety=1.2))
    # EDF: early-dl (5,000) before late-dl (20,000); jobs without deadlines keep their order after them
    assert [j.job_id for j in order] == ["early-dl", "late-dl", "other", "nodl"]
    by = {e.job_id: e for e in esc}
    # early-dl: slack 5,000 - 0 - 1.2 x 3,000 = 1,400 <= 3,600 -> critical
    assert by["early-dl"].urgency is Urgency.SLACK_EXHAUSTED and by["early-dl"].slack_s == pytest.approx(1400.0)
    assert order[0].priority is Priority.CRITICAL
    # late-dl: 20,000 - 1.2 x 1,000 = 18,800 > 3,600: on track, priority unchanged
    assert by["late-dl"].urgency is Urgency.ON_TRACK and order[1].priority is Priority.NORMAL
    # an hour later late-dl is still on track; at t = 15,500: 20,000 - 15,500 - 1,200 = 3,300 -> critical
    _, esc = market_order(pending, dl, now_s=15_500.0)
    assert {e.job_id: e.urgency for e in esc}["late-dl"] is Urgency.SLACK_EXHAUSTED


def test_unknown_runtime_keeps_edf_but_never_escalates():
    order, esc = market_order([_p("a"), _p("b")], {"a": DeadlineJob("a", 9e9, None), "b": DeadlineJob("b", 1.0, None)},
                              0.0)
    assert [j.job_id for j in order] == ["b", "a"] and {e.urgency for e in esc} == {Urgency.UNKNOWN_RUNTIME}
    assert all(j.priority is Priority.NORMAL for j in order)
