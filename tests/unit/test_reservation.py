"""Head-of-line reservation for a long-waiting large job (rayfin.policy.reservation): it blocks a
borrowing job that would delay it, lets through one predicted to finish in time and work within
its desk's nominal, and is released once the large job is placed."""
from __future__ import annotations

import pytest

from rayfin.policy import DeskQuota, QueueOrder, SchedulerConfig, Verdict, schedule
from rayfin.policy.hints import JobHint
from rayfin.policy.reservation import candidates, plan
from rayfin.reasons import ReasonCode
from tests.support.policy import by_id, desks, pend, run, snap, topo

NOW = 10_000.0
RESV = SchedulerConfig.preset("rayfin", reservation=True, reserve_wait_factor=4.0, reserve_after_s=3600.0,
                              reserve_min_gpus=9)


def _cluster():
    """16 GPUs (2 nodes x 2 islands x 4). Running: n0-i0 ends at NOW+500, n0-i1 at NOW+5,000,
    n1-i0 at NOW+20,000; n1-i1 is free. `big` (12 GPUs, desk a) waited 10,000 s, predicted
    1,000 s: it can start at NOW+5,000 on n1-i1, n0-i0 and n0-i1."""
    t = topo(nodes_per_rack=2)
    running = [run("r1", "a", ("n0-i0", 4.0)), run("r2", "a", ("n0-i1", 4.0)), run("r3", "b", ("n1-i0", 4.0))]
    hints = {"r1": JobHint(1000.0, 500.0), "r2": JobHint(6000.0, 1000.0), "r3": JobHint(30_000.0, 10_000.0)}
    return t, running, hints


def test_plan_finds_the_start_and_the_islands():
    t, running, hints = _cluster()
    big = pend("big", "a", 12, t=0.0)
    lay = t.layout
    free = lay.arrays()[0].copy()
    for k in ("n0-i0", "n0-i1", "n1-i0"):
        free[lay.index[k]] = 0
    r = plan(big, NOW, lay, free, running, {**hints, "big": JobHint(1000.0)}, None)
    assert r is not None and r.start_s == NOW + 5000.0
    assert {lay.island_ids[i] for i in r.islands} == {"n1-i1", "n0-i0", "n0-i1"}


B, W = ReasonCode.BORROWING, ReasonCode.WITHIN_NOMINAL


@pytest.mark.parametrize("small_desk, small_pred, big_submitted, cfg, verdict, code", [
    # a 4-GPU job of desk b (at its nominal: it borrows from c) predicted to run 10,000 s would
    # hold n1-i1 past the start: it waits
    ("b", 10_000.0, 0.0, RESV, Verdict.WAIT, ReasonCode.RESERVATION),
    # predicted 1,000 s: done by NOW+1,000 < NOW+5,000, it cannot delay the large job: admitted
    ("b", 1_000.0, 0.0, RESV, Verdict.ADMIT, B),
    # no prediction: it may run for ever, so it waits
    ("b", None, 0.0, RESV, Verdict.WAIT, ReasonCode.RESERVATION),
    # desk c's job is within c's nominal: a guarantee outranks the reservation
    ("c", 10_000.0, 0.0, RESV, Verdict.ADMIT, W),
    # reservation off (the default): greedy backfill admits it
    ("b", 10_000.0, 0.0, SchedulerConfig.preset("rayfin"), Verdict.ADMIT, B),
    # the large job waited 2,000 s only (< reserve_after_s): no reservation
    ("b", 10_000.0, 8_000.0, RESV, Verdict.ADMIT, B),
    # waited 10,000 s but that is < 20 x its predicted 1,000 s: no reservation
    ("b", 10_000.0, 0.0, RESV.copy(reserve_wait_factor=20.0), Verdict.ADMIT, B),
    # only jobs of >= 16 GPUs may reserve: the 12-GPU job does not
    ("b", 10_000.0, 0.0, RESV.copy(reserve_min_gpus=16), Verdict.ADMIT, B),
    # horizon: it would start 5,000 s from now, more than 1 x its predicted 1,000 s: no reservation
    ("b", 10_000.0, 0.0, RESV.copy(reserve_horizon=1.0), Verdict.ADMIT, B),
    # ... but within 10 x: reserved
    ("b", 10_000.0, 0.0, RESV.copy(reserve_horizon=10.0), Verdict.WAIT, ReasonCode.RESERVATION),
])
def test_reservation_blocks_only_jobs_that_would_delay_the_large_job(small_desk, small_pred, big_submitted, cfg,
                                                                     verdict, code):
    t, running, hints = _cluster()
    pending = [pend("big", "a", 12, t=big_submitted), pend("small", small_desk, 4, t=NOW - 10.0)]
    hints = {**hints, "big": JobHint(1000.0), "small": JobHint(small_pred)}
    d = schedule(snap(t, desks(a=8, b=4, c=4), running, pending, now=NOW, hints=hints), cfg)
    got = by_id(d.admits + d.waits)
    assert got["small"].verdict is verdict and got["small"].code is code
    if verdict is Verdict.ADMIT:
        assert got["small"].placement == (("n1-i1", 4.0),)
    if code is ReasonCode.RESERVATION:
        assert "reserved for job big" in got["small"].reasons[0]
    assert got["big"].verdict is Verdict.WAIT


def test_no_reservation_for_a_job_its_desk_could_not_take_at_the_start():
    # desk c lends at most 2 GPUs and b none (it is at its nominal): desk a can hold 8 + 2, so the
    # 12-GPU job would leave reserved GPUs idle; no reservation, b's long 2-GPU job borrows c's 2
    t, running, hints = _cluster()
    quotas = {"a": DeskQuota("a", 8.0, None, None, 1.0), "b": DeskQuota("b", 4.0, None, None, 1.0),
              "c": DeskQuota("c", 4.0, None, 2.0, 1.0)}
    pending = [pend("big", "a", 12, t=0.0), pend("small", "b", 2, t=NOW - 10.0)]
    hints = {**hints, "big": JobHint(1000.0), "small": JobHint(10_000.0)}
    d = schedule(snap(t, quotas, running, pending, now=NOW, hints=hints), RESV)
    assert by_id(d.admits)["small"].placement == (("n1-i1", 2.0),)
    # with c lending 4, desk a could take it at the start: reserved, and the 2-GPU job waits
    quotas["c"] = DeskQuota("c", 4.0, None, None, 1.0)
    d = schedule(snap(t, quotas, running, pending, now=NOW, hints=hints), RESV)
    assert by_id(d.waits)["small"].code is ReasonCode.RESERVATION


@pytest.mark.parametrize("gpus, verdict", [(2, Verdict.ADMIT), (4, Verdict.WAIT)])
def test_a_long_job_may_use_free_gpus_the_reservation_does_not_need(gpus, verdict):
    # 24 GPUs; free now: n0-i0 (4) and n1-i1 (2); n0-i1 frees at NOW+5,000. Desk b (10 of 8 GPUs)
    # borrows. `big` (8 GPUs) starts
    # then on n0-i0 + n0-i1 (8); n1-i1's 2 GPUs are surplus (6 + 4 - 8 = 2): a long 2-GPU job may
    # take them, a long 4-GPU job finds nothing outside the reservation
    t = topo(nodes_per_rack=3)
    running = [run("r2", "a", ("n0-i1", 4.0)), run("r3", "a", ("n1-i0", 4.0)), run("r4", "b", ("n2-i0", 4.0)),
               run("r5", "b", ("n2-i1", 4.0)), run("r6", "b", ("n1-i1", 2.0))]
    hints = {"r2": JobHint(6000.0, 1000.0), "r3": JobHint(3e4, 1e4), "r4": JobHint(4e4, 1e4), "r5": JobHint(5e4, 1e4),
             "r6": JobHint(6e4, 1e4), "big": JobHint(1000.0), "small": JobHint(1e5)}
    pending = [pend("big", "a", 8, t=0.0), pend("small", "b", gpus, t=NOW - 10.0)]
    d = schedule(snap(t, desks(a=12, b=8, c=4), running, pending, now=NOW, hints=hints), RESV.copy(reserve_min_gpus=8))
    got = by_id(d.admits + d.waits)
    assert got["small"].verdict is verdict
    if verdict is Verdict.ADMIT:
        assert got["small"].placement == (("n1-i1", 2.0),)
    else:
        assert got["small"].code is ReasonCode.RESERVATION


def test_reservation_is_released_once_the_large_job_is_placed():
    # empty 16-GPU cluster; every job borrows (desks a and b have nominal 2 and 1, c lends 13) and
    # borrowing goes in submission order: x1, x2, big, x3 (all but big predicted to run long).
    # big (6 GPUs, min 5) qualifies: it can start now on n0 (islands n0-i0, n0-i1 reserved).
    t = topo(nodes_per_rack=2)
    cfg = RESV.copy(reserve_min_gpus=5, rank=SchedulerConfig.preset("kueue_tas_fs").rank, order=QueueOrder.FIFO)
    pending = [pend("x1", "b", 4, t=NOW - 5), pend("x2", "b", 4, t=NOW - 5), pend("big", "a", 6, t=0.0),
               pend("x3", "b", 2, t=NOW - 5)]
    hints = {"big": JobHint(1000.0), "x1": JobHint(1e6), "x2": JobHint(1e6), "x3": JobHint(1e6)}
    d = schedule(snap(t, desks(a=2, b=1, c=13), (), pending, now=NOW, hints=hints), cfg)
    got = by_id(d.admits + d.waits)
    # x1 and x2 may not use n0 (reserved): they go to n1's islands
    assert {got["x1"].placement[0][0], got["x2"].placement[0][0]} == {"n1-i0", "n1-i1"}
    # big is placed on n0 and the reservation goes with it: x3 takes n0's last 2 GPUs
    assert {isl for isl, _ in got["big"].placement} <= {"n0-i0", "n0-i1"}
    assert got["x3"].verdict is Verdict.ADMIT and got["x3"].placement[0][0].startswith("n0-")
    assert "held a reservation" in got["big"].reasons[1]
    # the next cycle: big is running, nothing is reserved; a long job takes what is free on n0
    running = [run("big", "a", *got["big"].placement), run("x1", "b", *got["x1"].placement),
               run("x2", "b", *got["x2"].placement)]
    d = schedule(snap(t, desks(a=2, b=1, c=13), running, [pend("x4", "b", 2, t=NOW - 5)], now=NOW + 1,
                      hints={"x4": JobHint(1e6)}), cfg)
    assert [a.job_id for a in d.admits] == ["x4"]


def test_candidates_highest_priority_then_most_overdue():
    from tests.support.policy import C
    jobs = [pend("a", "a", 16, t=0.0), pend("b", "a", 16, t=0.0), pend("c", "a", 16, prio=C, t=5000.0),
            pend("small", "a", 4, t=0.0), pend("fresh", "a", 16, t=NOW - 100)]
    hints = {"a": JobHint(2000.0), "b": JobHint(1000.0), "c": JobHint(1000.0)}
    got = candidates(jobs, hints, NOW, min_gpus=9, wait_factor=1.0, after_s=600.0)
    assert [j.job_id for j in got] == ["c", "b", "a"]
