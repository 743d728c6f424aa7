"""Elastic gangs' decisions (rayfin.policy.elastic): grow into idle GPUs when no job waits,
give the extra workers back while any does. Table-driven over small snapshots; no Ray."""
from __future__ import annotations

from dataclasses import replace

import pytest

from rayfin.policy import DeskQuota, Verdict
from rayfin.policy.elastic import ElasticGang, base_of, extra_id, grows, shrinks
from rayfin.reasons import ReasonCode
from tests.support.policy import B, desks, pend, run, snap, topo

# Two nodes of two 4-GPU islands (16 GPUs). Gang "g" of desk a runs 2 one-GPU workers on n0-i0.
T = topo()
G = run("g", "a", ("n0-i0", 2.0))
GANG = ElasticGang("g", "a", workers=2, min_workers=2, max_workers=8)


def _placed(grow) -> float:
    return sum(g for _, g in grow.placement)


@pytest.mark.parametrize("case, quotas, running, gang, speedup, want_workers", [
    # nothing waits, 14 GPUs idle: without a curve it grows to its declared max
    ("no curve: to max", desks(a=8, b=8), (G,), GANG, None, 8),
    # a curve that flattens after 4 workers: the best measured speed-up wins, not the largest size
    ("curve: best speed-up", desks(a=8, b=8), (G,), GANG,
     lambda j, b, k: {3: 1.3, 4: 1.6, 5: 1.6, 6: 1.5, 7: 1.4, 8: 1.4}[k], 4),
    # a curve that never gains 5%: stays
    ("curve: too little gain", desks(a=8, b=8), (G,), GANG, lambda j, b, k: 1.04, None),
    # desk a may hold at most 4 (nominal 2 + borrowing 2): grows by 2 only
    ("quota ceiling", {"a": DeskQuota("a", 2.0, 2.0), "b": DeskQuota("b", 14.0)}, (G,), GANG, None, 4),
    # only 2 GPUs idle anywhere (the rest held by b): grows by what is idle
    ("only what is idle", desks(a=8, b=8),
     (G, run("b1", "b", ("n0-i1", 4.0), ("n1-i0", 4.0), ("n1-i1", 4.0))), GANG, None, 4),
    # already above its base: grows once per stay at the base
    ("already grown", desks(a=8, b=8), (G,), ElasticGang("g", "a", 4, 2, 8), None, None),
    # a resize or preemption under way: left alone
    ("resizing", desks(a=8, b=8), (G,), ElasticGang("g", "a", 2, 2, 8, resizing=True), None, None),
])
def test_grow(case, quotas, running, gang, speedup, want_workers):
    got = grows(snap(T, quotas, running), [gang], speedup)
    if want_workers is None:
        assert got == (), case
        return
    (g,) = got
    assert (g.job_id, g.workers, g.code) == ("g", want_workers, ReasonCode.ELASTIC_GROW), case
    assert _placed(g) == want_workers - 2, case
    assert "elastic grow" in g.reason and "g" in g.reason


def test_grow_by_whole_workers_and_in_the_desks_pools():
    """Two-GPU workers never split across islands; the new workers stay in the desk's pools."""
    gang = ElasticGang("g", "a", 1, 1, 4, unit=2)
    quotas = {"a": DeskQuota("a", 8.0, pools=frozenset({"general"})), "b": DeskQuota("b", 8.0)}
    # n0-i1 has 3 free GPUs, n1-i0 and n1-i1 are free: whole two-GPU workers only
    running = (G, run("b1", "b", ("n0-i1", 1.0)))
    (g,) = grows(snap(T, quotas, running), [gang])
    assert g.workers == 4 and all(gpus % 2 == 0 for _, gpus in g.placement)
    quotas["a"] = DeskQuota("a", 8.0, pools=frozenset({"gpu-h200"}))   # a pool the cluster does not have
    assert grows(snap(T, quotas, running), [gang]) == ()


def test_no_growth_while_a_job_waits_and_one_grant_per_idle_gpu():
    quotas = desks(a=8, b=8)
    assert grows(snap(T, quotas, (G,), pending=(pend("p", "b", 1),)), [GANG]) == ()
    # two gangs, 12 GPUs idle once both run 2: the first (in the given order) takes what it can use
    g2 = run("h", "a", ("n0-i0", 2.0))
    (first, second) = grows(snap(T, quotas, (G, g2)), [GANG, ElasticGang("h", "a", 2, 2, 8)])
    assert (first.workers, second.workers) == (8, 8)   # 12 idle: 6 to the first, 6 to the second
    assert _placed(first) + _placed(second) == 12


def test_shrink_only_while_a_job_waits_and_only_once():
    x = run(extra_id("g"), "a", ("n1-i0", 4.0), prio=B)
    gang = ElasticGang("g", "a", 6, 2, 8)
    assert shrinks(snap(T, desks(a=8, b=8), (G, x)), [gang], 30.0) == ()
    (d,) = shrinks(snap(T, desks(a=8, b=8), (G, x), pending=(pend("p", "b", 4),), now=100.0), [gang], 30.0)
    assert (d.job_id, d.verdict, d.code, d.deadline) == ("g+x", Verdict.PREEMPT, ReasonCode.ELASTIC_SHRINK, 130.0)
    assert "restarts from its checkpoint at 2" in d.reason
    assert shrinks(snap(T, desks(a=8, b=8), (G, replace(x, preempt_deadline=120.0)), pending=(pend("p", "b", 4),)),
                   [gang], 30.0) == ()


def test_ids_and_gang_validation():
    assert base_of(extra_id("desk-1")) == "desk-1" and base_of("desk-1") is None
    with pytest.raises(ValueError, match="min_workers <= workers <= max_workers"):
        ElasticGang("g", "a", 9, 2, 8)
    with pytest.raises(ValueError, match="unit"):
        ElasticGang("g", "a", 2, 2, 8, unit=0)


def test_every_reason_code_has_its_words():
    """Each code's `.text` (the audit trail's words for it) exists: a code added without one
    would raise where it is shown."""
    assert all(code.text for code in ReasonCode)
