"""benchmarks.market_day and its simulator: the speed-ups (incremental deadline set, array sort,
per-generation borrowing memo, one reclaim context per cycle, no decision timing) change no
decision, the open is placed where the tuning days have serving demand, and the result checker
tells a changed figure from a changed timing."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from benchmarks.market_day import open_minute
from benchmarks.same_results import differences
from rayfin.market.deadline import DeadlineJob, SlackPolicy, market_order
from rayfin.market.plan import WindowName
from rayfin.policy import Policy, SchedulerConfig
from rayfin.policy.duration import DurationPredictor
from rayfin.policy.model import DeskQuota, PendingJob, Priority
from rayfin.policy.ordering import JobRank
from rayfin.sim.market import MarketScenario, MarketSimulator
from rayfin.sim.trace import TraceJob
from tests.support.policy import topo


def _digest(policy: str) -> tuple[str, int, float, float]:
    """A small market run with reclaim, borrowing, deadline EDF and escalation, serving steps with
    a pre-warm and a window switch; the digest of every job's (first start, end, refusal)."""
    day = {"a": DeskQuota("a", 6.0), "b": DeskQuota("b", 6.0), "risk": DeskQuota("risk", 0.0),
           "serve": DeskQuota("serve", 4.0)}
    night = {"a": DeskQuota("a", 4.0), "b": DeskQuota("b", 4.0), "risk": DeskQuota("risk", 8.0),
             "serve": DeskQuota("serve", 0.0)}
    jobs = [TraceJob(f"j{k}", ("ta", "tb")[k % 2], 97.0 * k, 300.0 + 211 * (k % 7), 1 + (k * 5) % 4,
                     Priority.NORMAL, f"n{k % 5}") for k in range(80)]
    dl = {}
    for k in range(12):
        jobs.append(TraceJob(f"r{k}", "risk", 4000.0 + 60 * k, 600.0 + 150 * (k % 4), 2 + 2 * (k % 2),
                             Priority.NORMAL, f"r{k % 3}"))
        dl[f"r{k}"] = 9000.0 + 200 * (k % 3)
    sc = MarketScenario(12000.0, ((0.0, day, WindowName.INTRADAY), (3970.0, night, WindowName.EOD)),
                        ((500.0, 2), (1500.0, 4), (2500.0, 3), (3600.0, 0)), prewarm=((470.0, 900.0, 4),),
                        opens=(500.0,), deadlines=dl)
    mapping = {"ta": "a", "tb": "b", "risk": "risk"}
    if policy == "rayfin":
        cfg = SchedulerConfig.preset(Policy.RAYFIN, preemption_grace_s=30.0, rank=JobRank.SUBMISSION)
        sim = MarketSimulator(topo(), day, cfg, mapping, scenario=sc, order="market", predictor=DurationPredictor(),
                              slack=SlackPolicy(threshold_s=1800.0), checkpoint_interval_s=600.0)
    elif policy == "edf":
        sim = MarketSimulator(topo(), day, SchedulerConfig.preset(Policy.FIFO, preemption_grace_s=30.0), mapping,
                              scenario=sc, order="edf")
    else:
        sim = MarketSimulator(topo(), day, SchedulerConfig.preset(Policy.KUEUE_TAS_FS, preemption_grace_s=30.0),
                              mapping, scenario=sc)
    sim.run(jobs)
    rows = sorted((j, r.first_start, r.end, r.refused) for j, r in sim.recs.items())
    return (hashlib.sha256(repr(rows).encode()).hexdigest()[:16], sim.preemptions, round(sim.short, 3),
            round(sim.idle_wait, 3))


# computed with the code before the speed-ups (main at b4f0d42): the same run must give the same
# starts, ends, preemptions, serving shortfall and idle GPU-seconds
@pytest.mark.parametrize("policy, want", [
    ("rayfin", ("543637fe3289c496", 183, 24.0, 2943.0)),
    ("kueue_tas_fs", ("65ceb3e8dae23e5e", 14, 24.0, 4969.428)),
    ("edf", ("24e9ea0ca410c447", 0, 246.713, 2232.375)),
])
def test_speedups_change_no_decision(policy, want):
    assert _digest(policy) == want


def test_market_order_without_escalation_records_is_the_same_order():
    rng = np.random.default_rng(3)
    pending = [PendingJob(f"p{k}", "risk" if k % 3 else "a", 1 + k % 4, Priority(int(rng.integers(0, 3))),
                          float(rng.integers(0, 50))) for k in range(200)]
    dl = {j.job_id: DeadlineJob(j.job_id, float(rng.uniform(0, 20_000)),
                                None if k % 11 == 0 else float(rng.uniform(0, 9000)))
          for k, j in enumerate(pending) if k % 2}
    for th in (float("-inf"), 0.0, 3600.0):
        pol = SlackPolicy(threshold_s=th)
        full, esc = market_order(pending, dl, 1000.0, pol)
        fast, none = market_order(pending, dl, 1000.0, pol, escalations=False)
        assert fast == full and none == () and len(esc) == len(dl)
        assert any(j.priority is Priority.CRITICAL for j in full) or th == float("-inf")
        for e in esc:
            job = next(j for j in pending if j.job_id == e.job_id)
            assert pol.priority(dl[e.job_id], 1000.0, job.priority) == e.priority


def test_open_minute_is_the_busiest_open_window_of_the_tuning_days_within_one_trace_day():
    inv = np.zeros(1440 * 3)
    inv[1440 + 600:1440 + 630] = 5.0          # day 1: a burst at 10:00
    inv[1440 + 1300:1440 + 1330] = 50.0       # a larger one at 21:40: its session would run past midnight
    assert 590 <= open_minute(inv, [1]) <= 630     # the 10:00 burst, not the later, larger one
    inv[1440 + 1040:1440 + 1100] = 20.0          # a burst just before the latest allowed open
    assert open_minute(inv, [1]) == 1440 - 390     # the latest open whose session still ends by midnight


def test_same_results_tells_a_changed_figure_from_a_changed_timing():
    a = {"policies": {"x": {"misses": 1, "per_seed": [{"seed": 0, "timing": {"wall_s": 3.0}}]}}, "wall_s": 9.0}
    b = {"policies": {"x": {"misses": 1, "per_seed": [{"seed": 0, "timing": {"wall_s": 4.0}}]}}, "wall_s": 1.0}
    ignore = frozenset({"wall_s", "timing"})
    assert differences(a, b, ignore) == []
    b["policies"]["x"]["misses"] = 2
    assert differences(a, b, ignore) == ["/policies/x/misses: 1 vs 2"]
    assert differences({"k": 1}, {"k": 1.0}, ignore) == ["/k: 1 vs 1.0"]


def test_guard_keeps_an_escalated_job_from_preempting_its_desks_as_urgent_deadline_work():
    # risk holds all 16 GPUs with "first" (due at 10,000); "late" arrives due at the same time with
    # too little slack, escalates to critical, and without the guard preempts "first" (same desk,
    # lower priority); with it, "first" is shown at the escalated priority and keeps running
    desks = {"risk": DeskQuota("risk", 16.0), "a": DeskQuota("a", 0.0)}
    jobs = [TraceJob("first", "risk", 0.0, 5000.0, 16), TraceJob("late", "risk", 100.0, 4000.0, 8)]
    # a second (same) window at 2,000 s: a cycle then, when late's slack (10,000 - 2,000 - 1.2 x 4,000) is gone
    sc = MarketScenario(1e9, ((0.0, desks, WindowName.EOD), (2000.0, desks, WindowName.EOD)),
                        deadlines={"first": 10_000.0, "late": 10_000.0})
    cfg = SchedulerConfig.preset(Policy.RAYFIN, preemption_grace_s=30.0, rank=JobRank.SUBMISSION)
    runs = {}
    for guard in (False, True):
        sim = MarketSimulator(topo(), desks, cfg, {"risk": "risk"}, scenario=sc, order="market", predictor="oracle",
                              slack=SlackPolicy(threshold_s=3600.0), guard_deadline_class=guard)
        sim.run(jobs)
        runs[guard] = (sim.preemptions, sim.recs["first"].end, sim.recs["late"].end)
    assert runs[False][0] >= 1                      # the escalated job preempted its desk's own deadline work
    assert runs[True] == (0, 5000.0, 9000.0)        # guarded: first runs through, late starts when it ends
