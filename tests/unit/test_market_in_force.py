"""Which quotas are in force at t (rayfin.market.in_force), on the library's XNYS calendar.

XNYS in late November 2025 (EST, UTC-5): regular session 09:30-16:00 local = 14:30Z-21:00Z;
2025-11-28 closes early at 13:00 local = 18:00Z; 2025-11-27 (Thanksgiving) is a holiday.
Windows: intraday open->close, eod close->close+6h, overnight, weekend_holiday. Lead (grace) 60 s.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from rayfin.market import MarketCalendar, QuotaPlan, WindowName
from rayfin.market.in_force import Phase, QuotaClock, in_force
from rayfin.policy.model import DeskQuota

UTC = timezone.utc
XNYS = MarketCalendar.get("XNYS")
I, E, O, W = WindowName.INTRADAY, WindowName.EOD, WindowName.OVERNIGHT, WindowName.WEEKEND_HOLIDAY  # noqa: E741
N, R = Phase.NORMAL, Phase.RECLAIM_AHEAD
BASE = {"eq": DeskQuota("eq", 8.0, 8.0), "risk": DeskQuota("risk", 8.0, 8.0)}
PLAN = QuotaPlan.model_validate({"desks": {
    "eq": {"intraday": {"nominal_gpus": 12, "serving": {"gpus": 2}}, "eod": {"nominal_gpus": 4},
           "weekend_holiday": {"nominal_gpus": 2}},
    "risk": {"intraday": {"nominal_gpus": 4}, "eod": {"nominal_gpus": 12, "borrowing_limit": 4},
             "weekend_holiday": {"nominal_gpus": 14}}}})
NOMINAL = {I: (12, 4), E: (4, 12), O: (8, 8), W: (2, 14)}   # (eq, risk) per window; overnight keeps the base
LEAD = 60.0


def z(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


@pytest.mark.parametrize("case, t, window, effective, phase, switch, nxt", [
    # normal day, mid-session: intraday until the 21:00Z close, reclaim ahead from 20:59Z
    ("normal intraday", z(2025, 11, 25, 18, 0), I, I, N, z(2025, 11, 25, 21, 0), E),
    # the pre-switch interval: 30 s before the close the policy already applies eod's quotas
    ("normal, 30 s before close", z(2025, 11, 25, 20, 59, 30), I, E, R, z(2025, 11, 25, 21, 0), E),
    # exactly at switch - lead the next window's quotas apply (the interval is closed on the left)
    ("normal, at switch - lead", z(2025, 11, 25, 20, 59, 0), I, E, R, z(2025, 11, 25, 21, 0), E),
    ("normal, 1 s before switch - lead", z(2025, 11, 25, 20, 58, 59), I, I, N, z(2025, 11, 25, 21, 0), E),
    # at the boundary: eod is the calendar's window, quotas eod, next switch close + 6 h = 03:00Z
    ("normal, at close", z(2025, 11, 25, 21, 0), E, E, N, z(2025, 11, 26, 3, 0), O),
    # early close (13:00 local = 18:00Z): the pre-switch interval moves with it
    ("early close, 12:59:30 local", z(2025, 11, 28, 17, 59, 30), I, E, R, z(2025, 11, 28, 18, 0), E),
    ("early close, 12:58 local", z(2025, 11, 28, 17, 58), I, I, N, z(2025, 11, 28, 18, 0), E),
    # the eve of a holiday: overnight ends at Thanksgiving's local midnight (05:00Z)
    ("holiday eve, 30 s before midnight", z(2025, 11, 27, 4, 59, 30), O, W, R, z(2025, 11, 27, 5, 0), W),
    # holiday: weekend_holiday all day, then overnight from Friday's local midnight
    ("holiday noon", z(2025, 11, 27, 17, 0), W, W, N, z(2025, 11, 28, 5, 0), O),
])
def test_in_force_table(case, t, window, effective, phase, switch, nxt):
    f = in_force(XNYS, PLAN, BASE, t, LEAD)
    assert (f.window.name, f.effective, f.phase, f.switch_at, f.next_window) == (window, effective, phase, switch,
                                                                                  nxt), case
    assert f.reclaim_from == switch - timedelta(seconds=LEAD)
    assert (f.quotas["eq"].nominal, f.quotas["risk"].nominal) == NOMINAL[effective], case
    assert (f.next_quotas["eq"].nominal, f.next_quotas["risk"].nominal) == NOMINAL[nxt], case


def test_serving_and_borrowing_follow_the_effective_window():
    f = in_force(XNYS, PLAN, BASE, z(2025, 11, 25, 18, 0), LEAD)
    assert dict(f.serving_gpus) == {"eq": 2.0} and dict(f.next_serving_gpus) == {}
    g = in_force(XNYS, PLAN, BASE, z(2025, 11, 25, 20, 59, 30), LEAD)
    assert dict(g.serving_gpus) == {} and g.quotas["risk"].borrowing_limit == 4.0   # eod: 12 + 4


def test_lead_longer_than_the_window_starts_reclaim_at_its_start():
    # a 3 h lead over a 1 h window would reach back before the window: clamp to the window's start
    f = in_force(XNYS, PLAN, BASE, z(2025, 11, 25, 20, 30), 7 * 3600.0)
    assert f.reclaim_from == f.window.start == z(2025, 11, 25, 14, 30) and f.phase is R and f.effective is E


def test_clock_caches_until_the_answer_can_change_and_survives_going_back():
    clock = QuotaClock(XNYS, PLAN, BASE, LEAD)
    a = clock.at(z(2025, 11, 25, 18, 0))
    assert clock.at(z(2025, 11, 25, 20, 58, 59)) is a                 # same answer, no recomputation
    b = clock.at(z(2025, 11, 25, 20, 59, 0))
    assert b is not a and b.phase is R
    c = clock.at(z(2025, 11, 25, 21, 0))
    assert c.window.name is E and c.phase is N
    assert clock.at(z(2025, 11, 25, 18, 0)).effective is I           # back in time: recomputed


def test_clock_answers_a_boundary_from_its_precomputed_chain(monkeypatch):
    import rayfin.market.in_force as mod
    clock = QuotaClock(XNYS, PLAN, BASE, LEAD)
    clock.at(z(2025, 11, 25, 18, 0))          # computes now and the answer from 20:59Z
    calls = []
    real = mod.in_force
    monkeypatch.setattr(mod, "in_force", lambda *a: calls.append(a[3]) or real(*a))
    f = clock.at(z(2025, 11, 25, 20, 59, 0))
    assert f.phase is R and calls == []        # the crossing cycle did no calendar work
    clock.at(z(2025, 11, 25, 20, 59, 1))
    assert calls == [z(2025, 11, 25, 21, 0)]   # the next cycle computed the answer from the switch
    g = clock.at(z(2025, 11, 25, 21, 0, 0))
    assert g.window.name is E and calls == [z(2025, 11, 25, 21, 0)]
