"""Queue order: submission, least attained service (Tiresias), predicted remaining with aging."""
from __future__ import annotations

import pytest

from rayfin.policy import SchedulerConfig, Verdict, schedule
from rayfin.policy.hints import JobHint
from rayfin.policy.ordering import JobRank, las_queue, order, rank_key
from tests.support.policy import desks, pend, run, snap, topo

R = JobRank


@pytest.mark.parametrize("hint, expected", [
    (JobHint(100.0, 0.0), 100.0),        # nothing run yet: the prediction
    (JobHint(100.0, 40.0), 60.0),        # 100 - 40
    (JobHint(100.0, 250.0), 250.0),      # outlived its prediction: as much again as it ran
    (JobHint(None, 40.0), None),         # no prediction
])
def test_remaining(hint, expected):
    assert hint.remaining_s(floor_s=1.0) == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize("attained, threshold, queue", [(0.0, 3600.0, 0), (3599.0, 3600.0, 0), (3600.0, 3600.0, 1)])
def test_las_queue(attained, threshold, queue):
    assert las_queue(attained, threshold) == queue


@pytest.mark.parametrize("rank, hint, wait, aging_s, expected", [
    (R.SUBMISSION, JobHint(5.0), 0.0, 1.0, (0.0, 0.0)),
    # LAS: 2 GPUs x 1000 s attained = 2000 < 3600: queue 0; 2 x 2000 = 4000: queue 1
    (R.ATTAINED_SERVICE, JobHint(None, 1000.0), 0.0, 1.0, (0.0, 0.0)),
    (R.ATTAINED_SERVICE, JobHint(None, 2000.0), 0.0, 1.0, (1.0, 0.0)),
    # aged: 100 / (1 + 300 / 300) = 50
    (R.PREDICTED_REMAINING, JobHint(100.0), 300.0, 300.0, (50.0, 100.0)),
    # aging_s 0: plain shortest remaining first
    (R.PREDICTED_REMAINING, JobHint(100.0), 300.0, 0.0, (100.0, 0.0)),
    # no prediction: LAS fallback, remaining = max(attained 0, floor 60): 60 / (1 + 120 / 120) = 30
    (R.PREDICTED_REMAINING, JobHint(None), 120.0, 120.0, (30.0, 60.0)),
])
def test_rank_key(rank, hint, wait, aging_s, expected):
    job = pend("j", "a", 2, t=0.0)
    assert rank_key(rank, job, hint, wait, aging_s=aging_s, las_threshold_gpu_s=3600.0, floor_s=60.0) == \
        pytest.approx(expected)


def test_short_job_jumps_a_long_one_but_aging_lets_the_long_one_back():
    # 1 island of 4 GPUs free (n0-i0); both want all 4. long submitted first.
    t = topo(nodes_per_rack=1)
    running = [run("x", "a", ("n0-i1", 4.0))]
    pending = [pend("long", "a", 4, t=0.0), pend("short", "a", 4, t=10.0)]
    hints = {"long": JobHint(10_000.0), "short": JobHint(100.0)}
    cfg = SchedulerConfig.preset("rayfin", aging_s=3600.0)
    # at t=20: long 1e4 / (1 + 20/3600) = 9945; short 100 / (1 + 10/3600) = 99.7: short first
    d = schedule(snap(t, desks(a=8), running, pending, now=20.0, hints=hints), cfg)
    assert [x.job_id for x in d.admits] == ["short"]
    # at t=100000 the long one has waited: 1e4 / (1 + 1e5/3600) = 347; a short job that just
    # arrived: 100 / 1 = 100, still first; one predicted at 1,000 s: 1000 > 347, the long one goes first
    pending2 = [pend("long", "a", 4, t=0.0), pend("mid", "a", 4, t=100_000.0)]
    d = schedule(snap(t, desks(a=8), running, pending2, now=100_000.0,
                      hints={"long": JobHint(10_000.0), "mid": JobHint(100.0)}), cfg)
    assert [x.job_id for x in d.admits] == ["mid"]
    d = schedule(snap(t, desks(a=8), running, pending2, now=100_000.0,
                      hints={"long": JobHint(10_000.0), "mid": JobHint(1_000.0)}), cfg)
    assert [x.job_id for x in d.admits] == ["long"]
    # kueue_tas_fs ignores hints: submission order
    d = schedule(snap(t, desks(a=8), running, pending, now=20.0, hints=hints), SchedulerConfig.preset("kueue_tas_fs"))
    assert [x.job_id for x in d.admits] == ["long"]


def test_tiresias_preempts_the_job_with_most_attained_service():
    # 8 GPUs, all busy: "old" ran 10,000 s on 4 GPUs (queue 1), "young" 10 s (queue 0).
    t = topo(nodes_per_rack=1)
    running = [run("old", "a", ("n0-i0", 4.0)), run("young", "b", ("n0-i1", 4.0))]
    hints = {"old": JobHint(None, 10_000.0), "young": JobHint(None, 10.0), "new": JobHint(None, 0.0)}
    d = schedule(snap(t, desks(a=4, b=4), running, [pend("new", "a", 4)], now=50.0, hints=hints),
                 SchedulerConfig.preset("tiresias"))
    assert [p.job_id for p in d.preempts] == ["old"] and d.preempts[0].verdict is Verdict.PREEMPT
    # a job in queue 1 itself preempts nobody
    hints["new"] = JobHint(None, 5_000.0)
    d = schedule(snap(t, desks(a=4, b=4), running, [pend("new", "a", 4)], now=50.0, hints=hints),
                 SchedulerConfig.preset("tiresias"))
    assert d.preempts == () and [w.job_id for w in d.waits] == ["new"]


def test_victim_with_the_most_recent_checkpoint_goes_first():
    # desk b borrows both islands of n1 (two 4-GPU jobs); desk a (nominal 8) wants 4 back.
    t = topo(nodes_per_rack=2)
    running = [run("a0", "a", ("n0-i0", 4.0)), run("b0", "b", ("n0-i1", 4.0)),
               run("b1", "b", ("n1-i0", 4.0), started=100.0), run("b2", "b", ("n1-i1", 4.0), started=50.0)]
    pending = [pend("a1", "a", 4)]
    base = schedule(snap(t, desks(a=8, b=4), running, pending, now=1000.0), SchedulerConfig.preset("kueue_tas_fs"))
    assert [p.job_id for p in base.preempts] == ["b1"]        # default: most recently started
    # b1 last checkpointed 900 s ago, b2 10 s ago: rayfin takes b2 (4 x 10 GPU-s lost, not 4 x 900)
    hints = {"b0": JobHint(None, 1000.0, 500.0), "b1": JobHint(None, 900.0, 900.0), "b2": JobHint(None, 950.0, 10.0)}
    d = schedule(snap(t, desks(a=8, b=4), running, pending, now=1000.0, hints=hints), SchedulerConfig.preset("rayfin"))
    assert [p.job_id for p in d.preempts] == ["b2"]


@pytest.mark.parametrize("rank", list(R))
@pytest.mark.parametrize("aging_s", [0.0, 3600.0])
@pytest.mark.parametrize("levels", [None, 7200.0])
@pytest.mark.parametrize("deadlines", [False, True])
def test_order_is_the_stable_sort_by_priority_then_rank_key(rank, aging_s, levels, deadlines):
    # `order` computes the keys as arrays; it must give exactly the stable sort by
    # (-priority, deadline first and earliest, LAS level, rank_key) that the per-job key function
    # gives, ties (equal keys) included.
    import random
    from dataclasses import replace

    from rayfin.policy.model import Priority
    rng = random.Random(7)
    jobs, hints = [], {}
    for i in range(400):
        job = pend(f"j{i}", "a", rng.choice([1, 2, 4, 8]), t=float(rng.choice([0, 5, 50, 500, 5000])),
                   prio=rng.choice(list(Priority)))
        jobs.append(job)
        pick = rng.random()
        if pick < 0.6:   # predicted, some outlived their prediction, some exact ties
            hints[job.job_id] = JobHint(float(rng.choice([10, 60, 100, 3600, 86400])),
                                        float(rng.choice([0, 0, 30, 5000])))
        elif pick < 0.8:
            hints[job.job_id] = JobHint(None, float(rng.choice([0, 10, 4000])))
        if deadlines and job.job_id in hints and rng.random() < 0.3:
            hints[job.job_id] = replace(hints[job.job_id], deadline_s=float(rng.choice([7000, 9000])))
    now = 6000.0

    def key(j):
        h = hints.get(j.job_id)
        dl = h.deadline_s if h is not None else None
        edf = (0, dl) if dl is not None else (1, 0.0)
        level = ((h.attained_s if h else 0.0) * j.gpus >= levels,) \
            if levels is not None and rank is R.PREDICTED_REMAINING else ()
        return (-int(j.priority),) + edf + level + rank_key(rank, j, h, now, aging_s=aging_s,
                                                             las_threshold_gpu_s=3600.0)
    want = sorted(jobs, key=key)
    got = order(rank, jobs, hints, now, aging_s=aging_s, las_threshold_gpu_s=3600.0, las_levels_gpu_s=levels)
    assert [j.job_id for j in got] == [j.job_id for j in want]
    if deadlines:
        assert any(h.deadline_s is not None for h in hints.values())
