"""rayfin.market.serving_floor: the serving desk's GPUs raised ahead of a demand forecast, the
batch desks giving them up in proportion, the headroom chosen on tuning days, and the market
simulator covering an open that asks for more than the plan's reservation only with the floor."""
from __future__ import annotations

import pytest

from benchmarks.market_day import serving_floors, with_floors
from rayfin.market.plan import WindowName
from rayfin.market.serving_floor import (FloorParams, FloorReason, choose_headroom, seasonal_peak, serving_floor,
                                         shift_quotas)
from rayfin.policy import Policy, SchedulerConfig
from rayfin.policy.model import DeskQuota, Priority
from rayfin.sim.market import MarketScenario, MarketSimulator
from rayfin.sim.trace import TraceJob
from tests.support.policy import topo


@pytest.mark.parametrize("plan,live,past,in_open,fleet,headroom,want,warm,reason", [
    (10, 5.0, (), False, 100, 0.1, 10, 6, FloorReason.PLAN),            # forecast under the plan: hold 6
    (10, 20.0, (), False, 100, 0.1, 22, 22, FloorReason.LIVE),          # 1.1 x 20
    (10, 20.0, (40.0,), False, 100, 0.1, 22, 22, FloorReason.LIVE),     # seasonal only in the open window
    (10, 20.0, (40.0,), True, 100, 0.1, 44, 44, FloorReason.SEASONAL),  # the recent open's peak
    (10, 20.0, (90.0, 5.0, 30.0, 40.0), True, 100, 0.1, 44, 44, FloorReason.SEASONAL),  # the last 3 sessions
    (10, 200.0, (), True, 100, 0.1, 75, 75, FloorReason.CAPPED),        # max_share 0.75 of the fleet
    (80, 200.0, (), True, 100, 0.1, 80, 75, FloorReason.CAPPED),        # the nominal never below the plan
    (10, 20.0, (), False, 100, 0.0, 20, 20, FloorReason.LIVE),
    (10, 0.0, (), False, 100, 0.2, 10, 0, FloorReason.PLAN),            # nothing asked: nothing held
])
def test_floor_table(plan, live, past, in_open, fleet, headroom, want, warm, reason):
    f = serving_floor(plan, live, past, in_open, fleet, FloorParams(headroom=headroom))
    assert (f.gpus, f.warm_gpus, f.reason) == (want, warm, reason)


def test_bad_params_name_the_field():
    with pytest.raises(ValueError, match="headroom"):
        FloorParams(headroom=-0.1)
    with pytest.raises(ValueError, match="max_share"):
        FloorParams(max_share=0)


def test_seasonal_peak_of_the_last_sessions():
    assert seasonal_peak([5, 50, 7, 8], 3) == 50 and seasonal_peak([50, 7, 8, 1], 3) == 8
    assert seasonal_peak([], 3) == 0 and seasonal_peak([9], 0) == 0


def test_shift_takes_the_raise_from_the_donors_in_proportion_and_keeps_the_total():
    q = {"serve": DeskQuota("serve", 10.0), "a": DeskQuota("a", 60.0), "b": DeskQuota("b", 30.0)}
    out = shift_quotas(q, "serve", 40.0, ["a", "b"])
    assert out["serve"].nominal == pytest.approx(40.0)
    assert out["a"].nominal == pytest.approx(40.0) and out["b"].nominal == pytest.approx(20.0)
    assert sum(d.nominal for d in out.values()) == pytest.approx(100.0)
    assert shift_quotas(q, "serve", 5.0, ["a", "b"]) == q                    # never lowered
    drained = shift_quotas(q, "serve", 500.0, ["a", "b"])                    # donors hold less than asked
    assert drained["serve"].nominal == pytest.approx(100.0) and drained["a"].nominal == pytest.approx(0.0)


def test_headroom_is_the_smallest_that_covers_every_tuning_step():
    # (live at the decision, demand at the step, past open peaks)
    opens = [(100.0, 105, (90.0,)), (50.0, 118, (100.0,)), (10.0, 10, ())]
    assert choose_headroom(opens, 20, float("inf")) == pytest.approx(0.2)   # 1.1 x 100 = 110 < 118 <= 120
    assert choose_headroom([(10.0, 10, ())], 20, float("inf")) == 0.0
    assert choose_headroom([(1.0, 500, ())], 20, float("inf")) == 0.5       # none covers: the grid's last


def _world(serve_obs, gpus=16, serve_peak=2):
    from types import SimpleNamespace
    return SimpleNamespace(serve_obs=serve_obs, gpus=gpus, serve_peak=serve_peak)


def test_floors_are_decided_one_lead_before_each_step_and_end_at_the_close():
    p = FloorParams(headroom=0.0, lead_s=120.0)
    w = _world(((1000.0, 2000.0, ((1000.0, 1.0, (6.0,)), (1300.0, 3.0, (6.0,)))),))
    fl = serving_floors(w, p)
    assert fl == [(880.0, 1180.0, 6, 6), (1180.0, 2000.0, 6, 6)]   # both inside the open window: seasonal 6
    late = serving_floors(w, FloorParams(headroom=0.0, lead_s=120.0, open_window_s=100.0))
    assert late == [(880.0, 1180.0, 6, 6), (1180.0, 2000.0, 3, 3)]  # after the open window: the live level
    assert serving_floors(_world(((1000.0, 2000.0, ((1000.0, 1.0, ()),)),), serve_peak=4), p) == [
        (880.0, 2000.0, 4, 1)]                                      # the plan's 4 as nominal, 1 held


def test_merged_switches_raise_serving_only_while_a_floor_is_in_force():
    q = {"serve": DeskQuota("serve", 2.0), "a": DeskQuota("a", 14.0)}
    out = with_floors(((0.0, q, WindowName.INTRADAY),), [(100.0, 200.0, 8, 8)], ["a"])
    assert [(t, s["serve"].nominal, s["a"].nominal) for t, s, _ in out] == [
        (0.0, 2.0, 14.0), (100.0, 8.0, 8.0), (200.0, 2.0, 14.0)]


def _open_run(floor: bool) -> MarketSimulator:
    """16 GPUs, the batch desk busy with long jobs, serving asks 10 GPUs at the open (t=1000)
    against a plan of 2: only the floor (decided at 880 from the last open's peak) reclaims them."""
    q = {"a": DeskQuota("a", 14.0), "serve": DeskQuota("serve", 2.0)}
    jobs = [TraceJob(f"j{k}", "ta", 1.0 * k, 50_000.0, 1, Priority.NORMAL, "n") for k in range(16)]
    switches: tuple = ((0.0, q, WindowName.INTRADAY),)
    prewarm: tuple = ()
    if floor:
        fl = [(880.0, 2800.0, 10, 10)]
        switches = with_floors(switches, fl, ["a"])
        prewarm = ((880.0, 2800.0, 10),)
    sc = MarketScenario(3000.0, switches, ((1000.0, 10), (2800.0, 0)), prewarm=prewarm, opens=(1000.0,),
                        serve_desk="serve", open_window_s=1800.0)
    sim = MarketSimulator(topo(), q, SchedulerConfig.preset(Policy.RAYFIN, preemption_grace_s=30.0),
                          {"ta": "a"}, scenario=sc)
    sim.run(jobs)
    return sim


def test_the_floor_covers_an_open_above_the_plan_and_the_plan_alone_does_not():
    without, with_ = _open_run(False), _open_run(True)
    assert without.short_open > 0          # the 8 GPUs above the plan can only borrow: never preempt
    assert with_.short_open == 0.0         # reclaimed from 880 + 30 s grace, before the open
    assert with_.preemptions >= 8
