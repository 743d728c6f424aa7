"""Least attained service inside a desk's share (`las_within_desk`, on in the rayfin preset): a
job that has run little may preempt its own desk's jobs that have run long, never another desk's
work within its nominal. Table-driven over small snapshots; no Ray."""
from __future__ import annotations

import pytest

from rayfin.policy import SchedulerConfig, Verdict, schedule
from rayfin.policy.hints import JobHint
from rayfin.reasons import ReasonCode
from tests.support.policy import B, desks, pend, run, snap, topo

THR = 36_000.0      # the preset's threshold, GPU-seconds
LAS = SchedulerConfig.preset("rayfin", las_min_run_s=0.0)
OFF = SchedulerConfig.preset("rayfin", las_within_desk=False)

# One node, two 4-GPU islands, both busy. `old` has run 10,000 s on 4 GPUs (40,000 GPU-s: queue 1),
# `young` 100 s (400 GPU-s: queue 0). LAS: the preset with no minimum run (tested apart).
T = topo(nodes_per_rack=1)
OLD_A, YOUNG_A = run("old", "a", ("n0-i0", 4.0)), run("young", "a", ("n0-i1", 4.0), started=9_900.0)
OLD_B = run("old", "b", ("n0-i0", 4.0))
HINTS = {"old": JobHint(None, 10_000.0), "young": JobHint(None, 100.0), "new": JobHint(None, 0.0)}


@pytest.mark.parametrize("case, quotas, running, new_hint, cfg, preempted, code", [
    # desk a (nominal 4) over its share with its own two jobs: the new job swaps out the old one
    ("own long job, borrowing desk", dict(a=4, b=4), (OLD_A, YOUNG_A), JobHint(None, 0.0), LAS, ["old"],
     ReasonCode.LEAST_ATTAINED),
    # within nominal (a=8): the same swap on the entitled path
    ("own long job, within nominal", dict(a=8, b=0), (OLD_A, YOUNG_A), JobHint(None, 0.0), LAS, ["old"],
     ReasonCode.LEAST_ATTAINED),
    # the new job has itself run past the threshold (requeued after 9,000 s on 4 GPUs): queue 1
    ("new job in queue 1", dict(a=8, b=0), (OLD_A, YOUNG_A), JobHint(None, 9_000.0), LAS, [], None),
    # the rule off: rayfin waits as before
    ("rule off", dict(a=8, b=0), (OLD_A, YOUNG_A), JobHint(None, 0.0), OFF, [], None),
    # the long job belongs to desk b, within b's nominal (b=4 holds 4): never touched
    ("other desk within nominal", dict(a=4, b=4), (OLD_B, YOUNG_A), JobHint(None, 0.0), LAS, [], None),
    # the other victim candidate of a is young (queue 0): not a victim either
    ("own young job only", dict(a=4, b=4), (OLD_B, YOUNG_A), JobHint(None, 0.0), LAS, [], None),
    # desk a keeps out of it (desks[].least_attained_service: false): its long job stays
    ("desk out of it", dict(a=4, b=4), (OLD_A, YOUNG_A), JobHint(None, 0.0), LAS, [], "a-out"),
    ("desk out of it, within nominal", dict(a=8, b=0), (OLD_A, YOUNG_A), JobHint(None, 0.0), LAS, [], "a-out"),
])
def test_who_is_preempted(case, quotas, running, new_hint, cfg, preempted, code):
    from dataclasses import replace
    hints = dict(HINTS, new=new_hint)
    qs = desks(**quotas)
    if code == "a-out":
        qs, code = {**qs, "a": replace(qs["a"], las=False)}, None
    d = schedule(snap(T, qs, running, [pend("new", "a", 4)], now=10_000.0, hints=hints), cfg)
    assert [p.job_id for p in d.preempts] == preempted, case
    assert all(p.verdict is Verdict.PREEMPT and p.code is code and p.beneficiary == "new" for p in d.preempts)
    if preempted:
        assert "least attained service" in d.preempts[0].reasons[0]
        wait = {w.job_id: w for w in d.waits}["new"]
        assert wait.code is ReasonCode.AWAITING_PREEMPTION and wait.victims == tuple(preempted)
    else:
        assert [w.job_id for w in d.waits] == ["new"]


def test_a_borrowing_desk_frees_at_least_its_own_size():
    # desk a (nominal 2) borrows: its old 2-GPU job would free too little for a 4-GPU job on its
    # own, and the free GPUs are not a's to take (a cannot grow its borrowing: b lends nothing).
    quotas = dict(a=2, b=6)
    old2 = run("old", "a", ("n0-i0", 2.0))
    b_job = run("bjob", "b", ("n0-i0", 2.0), ("n0-i1", 2.0))
    d = schedule(snap(T, desks(**quotas), (old2, b_job), [pend("new", "a", 4)], now=10_000.0,
                      hints={"old": JobHint(None, 10_000.0), "bjob": JobHint(None, 10_000.0)}), LAS)
    assert d.preempts == () and [w.job_id for w in d.waits] == ["new"]


def test_lower_priority_own_work_is_a_victim_but_higher_priority_never():
    hi = run("old", "a", ("n0-i0", 4.0), prio=B)     # BATCH: lower than the new NORMAL job
    d = schedule(snap(T, desks(a=4, b=4), (hi, YOUNG_A), [pend("new", "a", 4)], now=10_000.0, hints=HINTS), LAS)
    assert [p.job_id for p in d.preempts] == ["old"]
    d = schedule(snap(T, desks(a=4, b=4), (OLD_A, YOUNG_A), [pend("new", "a", 4, prio=B)], now=10_000.0,
                      hints=HINTS), LAS)
    assert d.preempts == ()


def test_recently_started_jobs_are_spared_with_a_minimum_run():
    cfg = LAS.copy(las_min_run_s=600.0)
    recent = run("old", "a", ("n0-i0", 4.0), started=9_700.0)   # 300 s since its (re)start
    d = schedule(snap(T, desks(a=8, b=0), (recent, YOUNG_A), [pend("new", "a", 4)], now=10_000.0, hints=HINTS), cfg)
    assert d.preempts == ()
    d = schedule(snap(T, desks(a=8, b=0), (OLD_A, YOUNG_A), [pend("new", "a", 4)], now=10_000.0, hints=HINTS), cfg)
    assert [p.job_id for p in d.preempts] == ["old"]


def test_the_preset_turns_it_on_and_kueue_does_not():
    assert SchedulerConfig.preset("rayfin").las_within_desk is True
    assert SchedulerConfig.preset("rayfin").las_desk_threshold_gpu_s == THR
    assert SchedulerConfig.preset("rayfin").las_min_run_s == 3_600.0
    assert not any(SchedulerConfig.preset(p).las_within_desk for p in
                   ("fifo", "static", "kueue", "kueue_tas_fs", "kueue_node", "tiresias", "sjf_oracle"))
    d = schedule(snap(T, desks(a=8, b=0), (OLD_A, YOUNG_A), [pend("new", "a", 4)], now=10_000.0, hints=HINTS),
                 SchedulerConfig.preset("kueue_tas_fs"))
    assert d.preempts == ()


def test_deadline_work_is_never_a_victim():
    hints = dict(HINTS, old=JobHint(None, 10_000.0, deadline_s=20_000.0))
    d = schedule(snap(T, desks(a=8, b=0), (OLD_A, YOUNG_A), [pend("new", "a", 4)], now=10_000.0, hints=hints), LAS)
    assert d.preempts == ()


def test_a_requeued_job_past_the_threshold_goes_after_fresh_ones_of_its_priority():
    # `old` was preempted after 10,000 s on 4 GPUs (queue 1) and waited longest; `fresh` has not
    # run. With least attained service the GPUs go to `fresh` (the job `old` was preempted for);
    # with the rule off, aging puts `old` first.
    from rayfin.policy.ordering import JobRank, order
    jobs = [pend("old", "a", 4, t=0.0), pend("fresh", "a", 4, t=9_000.0)]
    hints = {"old": JobHint(20_000.0, 10_000.0), "fresh": JobHint(20_000.0, 0.0)}
    on = order(JobRank.PREDICTED_REMAINING, jobs, hints, 10_000.0, aging_s=3_600.0, las_levels_gpu_s=THR)
    off = order(JobRank.PREDICTED_REMAINING, jobs, hints, 10_000.0, aging_s=3_600.0)
    assert [j.job_id for j in on] == ["fresh", "old"] and [j.job_id for j in off] == ["old", "fresh"]
    # a desk that keeps out of least attained service orders as with the rule off; others as on
    out = order(JobRank.PREDICTED_REMAINING, jobs, hints, 10_000.0, aging_s=3_600.0, las_levels_gpu_s=THR,
                no_levels=frozenset({"a"}))
    assert [j.job_id for j in out] == ["old", "fresh"]
    other = order(JobRank.PREDICTED_REMAINING, jobs, hints, 10_000.0, aging_s=3_600.0, las_levels_gpu_s=THR,
                  no_levels=frozenset({"b"}))
    assert [j.job_id for j in other] == ["fresh", "old"]


def test_a_job_answered_from_the_borrowing_memo_may_still_swap():
    # desk a (nominal 0) borrows 4 GPUs for its BATCH job `old` (past the threshold). Two pending
    # jobs of a, 4 GPUs each: `requeued` (NORMAL, itself past the threshold: no swap) goes first and
    # its wait is remembered for the class (desk, 4 GPUs); `fresh` (BATCH, no service) may still
    # take the place of `old`.
    from rayfin.policy.model import Priority
    old = run("old", "a", ("n0-i0", 4.0), prio=Priority.BATCH)
    other = run("bjob", "b", ("n0-i1", 4.0))
    pending = [pend("requeued", "a", 4, t=0.0), pend("fresh", "a", 4, prio=Priority.BATCH, t=5.0)]
    hints = {"old": JobHint(None, 10_000.0), "bjob": JobHint(None, 100.0), "requeued": JobHint(None, 10_000.0),
             "fresh": JobHint(None, 0.0)}
    t = topo(nodes_per_rack=1, islands=(4, 4, 2))     # 2 GPUs free: the borrowing step runs per job
    d = schedule(snap(t, desks(a=0, b=10), (old, other), pending, now=10_000.0, hints=hints), LAS)
    assert [p.job_id for p in d.preempts] == ["old"] and d.preempts[0].beneficiary == "fresh"
    assert {w.job_id: w.code for w in d.waits}["requeued"] is not ReasonCode.AWAITING_PREEMPTION


def test_one_swap_per_cycle():
    # two desks, each with a long job and a new one: the first cycle swaps one, the cap holds the other
    t = topo(nodes_per_rack=1)
    running = (run("oa", "a", ("n0-i0", 4.0)), run("ob", "b", ("n0-i1", 4.0)))
    hints = {"oa": JobHint(None, 10_000.0), "ob": JobHint(None, 10_000.0)}
    pending = [pend("na", "a", 4, t=1.0), pend("nb", "b", 4, t=2.0)]
    d = schedule(snap(t, desks(a=2, b=2), running, pending, now=10_000.0, hints=hints), LAS)
    assert len(d.preempts) == 1
    d = schedule(snap(t, desks(a=2, b=2), running, pending, now=10_000.0, hints=hints), LAS.copy(las_max_per_cycle=2))
    assert sorted(p.job_id for p in d.preempts) == ["oa", "ob"]
    assert all("least attained service" in w.reasons[0] for w in d.waits if w.code is ReasonCode.AWAITING_PREEMPTION)
