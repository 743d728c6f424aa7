"""The scheduling policy core, table-driven over small snapshots (no Ray, no clock).

Cluster used by most tests: one rack, nodes n0 and n1, each with islands [4, 4] = 16 GPUs.
Desks a and b have nominal 8 each (unlimited borrowing/lending) unless a test says otherwise.
"""
from __future__ import annotations

import pytest

from rayfin.policy import (DeskQuota, Policy, QueueOrder, QuotaMode, SchedulerConfig, Verdict, check_quota,
                           never_fits, schedule)
from tests.support.policy import B, C, N, by_id, desks, pend, run, snap, topo

RAYFIN = SchedulerConfig.preset(Policy.RAYFIN)   # grace 30 s
T = topo()


def _a_borrows_everything(prios=(N, N, N, N), started=(1, 2, 3, 4)):
    """Desk a holds all 16 GPUs (8 above its nominal 8): x1..x4, one per island."""
    islands = ["n0-i0", "n0-i1", "n1-i0", "n1-i1"]
    return [run(f"x{k + 1}", "a", (islands[k], 4), prio=prios[k], started=started[k]) for k in range(4)]


@pytest.mark.parametrize("name, running, want_victim", [
    # lowest priority first, even though x2 started before x4
    ("lowest-priority", _a_borrows_everything(prios=(N, B, N, N)), "x2"),
    # equal priority: the most recently started (x4 at t=4)
    ("most-recent", _a_borrows_everything(), "x4"),
    # fewest: x1 alone frees an island (1 victim); y1+y2 are more recent but 2 victims
    ("fewest", [run("x1", "a", ("n0-i0", 4), started=1), run("y1", "a", ("n0-i1", 2), started=5),
                run("y2", "a", ("n0-i1", 2), started=6), run("x3", "a", ("n1-i0", 4), started=2),
                run("x4", "a", ("n1-i1", 4), started=3)], "x4"),
])
def test_reclaim_victim_choice(name, running, want_victim):
    # b is below nominal (0/8) and asks for 4: entitled; a is borrowing 16 - 8 = 8 -> reclaim
    dec = schedule(snap(T, desks(a=8, b=8), running, [pend("b1", "b", 4)], now=100.0), RAYFIN)
    assert [d.job_id for d in dec.preempts] == [want_victim], name
    p = dec.preempts[0]
    assert p.verdict is Verdict.PREEMPT and p.deadline == 130.0 and p.beneficiary == "b1"   # 100 + grace 30
    assert "reclaimed" in p.reason and "nominal" in p.reason
    w = by_id(dec.waits)["b1"]
    assert w.victims == (want_victim,) and "entitled" in w.reason and not dec.admits


def test_no_over_preemption_while_victims_drain():
    running = _a_borrows_everything()
    running[3] = run("x4", "a", ("n1-i1", 4), started=4, deadline=130.0, preempted_for="b1")
    # b1 (4 GPUs) is covered by x4 draining: no new victim, b1 keeps waiting on x4
    dec = schedule(snap(T, desks(a=8, b=8), running, [pend("b1", "b", 4)], now=110.0), RAYFIN)
    assert dec.preempts == () and by_id(dec.waits)["b1"].victims == ("x4",)
    # a second entitled job b2 (b: 4 + 4 = 8 <= nominal 8) needs one more victim, x3 (next most recent)
    dec = schedule(snap(T, desks(a=8, b=8), running, [pend("b1", "b", 4), pend("b2", "b", 4, t=1)], now=110.0),
                   RAYFIN)
    assert [d.job_id for d in dec.preempts] == ["x3"]
    assert by_id(dec.waits)["b1"].victims == ("x4",) and by_id(dec.waits)["b2"].victims == ("x3",)


def test_draining_gpus_kept_for_their_beneficiary():
    running = _a_borrows_everything()
    running[3] = run("x4", "a", ("n1-i1", 4), started=4, deadline=130.0, preempted_for="b1")
    # c2 arrives first in order but x4 is reserved for b1 (still pending): c2 must find its own victim
    dec = schedule(snap(T, desks(a=8, b=4, c=4), running, [pend("c2", "c", 4), pend("b1", "b", 4, t=1)]), RAYFIN)
    assert by_id(dec.waits)["b1"].victims == ("x4",)
    assert "x4" not in by_id(dec.waits)["c2"].victims and len(dec.preempts) == 1


def test_beneficiary_admitted_once_gpus_are_free():
    running = _a_borrows_everything()[:3]     # x4 was stopped at its deadline: n1-i1 is free
    dec = schedule(snap(T, desks(a=8, b=8), running, [pend("b1", "b", 4)], now=130.0), RAYFIN)
    assert [d.job_id for d in dec.admits] == ["b1"] and dec.admits[0].placement == (("n1-i1", 4.0),)


def test_borrowers_never_preempt():
    # b holds its nominal 8 and asks for 4 more while a holds 8: b would borrow, so it only waits
    running = [run("a1", "a", ("n0-i0", 4)), run("a2", "a", ("n0-i1", 4)),
               run("b0", "b", ("n1-i0", 4)), run("b00", "b", ("n1-i1", 4))]
    dec = schedule(snap(T, desks(a=8, b=8), running, [pend("b1", "b", 4)]), RAYFIN)
    assert dec.preempts == () and [d.job_id for d in dec.waits] == ["b1"]


def test_borrowing_admits_above_nominal_on_lent_gpus():
    # a holds 8 = nominal; b holds nothing and lends its 8: a's 4-GPU job borrows 4
    running = [run("a1", "a", ("n0-i0", 4)), run("a2", "a", ("n0-i1", 4))]
    dec = schedule(snap(T, desks(a=8, b=8), running, [pend("a3", "a", 4)]), RAYFIN)
    (adm,) = dec.admits
    assert adm.borrowed == 4.0 and "borrows 4" in adm.reason
    # static partitions: the same job waits at nominal
    dec = schedule(snap(T, desks(a=8, b=8), running, [pend("a3", "a", 4)]), SchedulerConfig.preset("static"))
    assert not dec.admits and "static partition" in dec.waits[0].reason


def test_priority_preemption_within_desk_nominal():
    # a: 8 GPUs of batch work (its whole nominal); b: 8 GPUs normal (its nominal). a submits critical 4.
    running = [run("ab1", "a", ("n0-i0", 4), prio=B, started=1), run("ab2", "a", ("n0-i1", 4), prio=B, started=2),
               run("b1", "b", ("n1-i0", 4)), run("b2", "b", ("n1-i1", 4))]
    dec = schedule(snap(T, desks(a=8, b=8), running, [pend("ac", "a", 4, prio=C)]), RAYFIN)
    # critical work of a: 0 + 4 <= nominal 8 -> entitled; b is not borrowing -> only a's batch work goes,
    # the most recently started one (ab2)
    assert [d.job_id for d in dec.preempts] == ["ab2"]
    assert "higher-priority" in dec.preempts[0].reason
    # a normal job of a is not entitled to preempt a's batch jobs? It is (normal > batch), but not critical ones
    running2 = [run("ac1", "a", ("n0-i0", 4), prio=C), run("ac2", "a", ("n0-i1", 4), prio=C)] + running[2:]
    dec = schedule(snap(T, desks(a=8, b=8), running2, [pend("an", "a", 4)]), RAYFIN)
    assert dec.preempts == () and not dec.admits


@pytest.mark.parametrize("weights, want", [
    # equal weights. start: a holds 6, b holds 2 (both above nominal 1); 8 free; each has four 2-GPU jobs.
    # shares: a 6, b 2 -> b (4) -> b (6) -> tie 6/6, a by name (8) -> b (8) ... free is 0 after 4 admits
    ((1.0, 1.0), ["b", "b", "a", "b"]),
    # b weight 3, both hold 4: shares a 4/1 = 4, b 4/3 = 1.33 -> b 6/3 = 2 -> b 8/3 = 2.67 -> b 10/3 = 3.33
    # -> b 12/3 = 4 (its 4th job)
    ((1.0, 3.0), ["b", "b", "b", "b"]),
    # b weight 1.01, both hold 4: b 3.96 -> a 4 -> b 5.94 < a 6 -> a 6 (tie-free) ... = b, a, b, a
    ((1.0, 1.01), ["b", "a", "b", "a"]),
])
def test_weighted_fair_share_orders_borrowers(weights, want):
    wa, wb = weights
    if wb == 1.0:
        running = [run("ra", "a", ("n0-i0", 4), ("n0-i1", 2)), run("rb", "b", ("n0-i1", 2))]
    else:   # 1.01: b's share 4/1.01 = 3.96 < 4, so b goes first where plain name order would pick a
        running = [run("ra", "a", ("n0-i0", 4)), run("rb", "b", ("n0-i1", 4))]
    quotas = {"a": DeskQuota("a", 1.0, weight=wa), "b": DeskQuota("b", 1.0, weight=wb)}
    pending = [pend(f"a{k}", "a", 2, t=k) for k in range(4)] + [pend(f"b{k}", "b", 2, t=10 + k) for k in range(4)]
    dec = schedule(snap(T, quotas, running, pending), RAYFIN)   # 8 GPUs free: four 2-GPU admissions
    assert [d.desk for d in dec.admits] == want
    # FIFO order instead hands the GPUs to a, whose jobs were submitted first
    dec = schedule(snap(T, quotas, running, pending), RAYFIN.copy(order=QueueOrder.FIFO))
    assert {d.desk for d in dec.admits} == {"a"}


def test_rayfin_places_best_fit_and_kueue_first_fit():
    # n0-i0 has 3 used (1 free); a 4-GPU job: rayfin takes a whole island, first fit spans two
    running = [run("r", "b", ("n0-i0", 3))]
    dec = schedule(snap(T, desks(a=8, b=8), running, [pend("j", "a", 4)]), RAYFIN)
    assert dec.admits[0].placement == (("n0-i1", 4.0),) and "NVLink island" in dec.admits[0].reason
    dec = schedule(snap(T, desks(a=8, b=8), running, [pend("j", "a", 4)]), SchedulerConfig.preset("kueue"))
    assert dec.admits[0].placement == (("n0-i0", 1.0), ("n0-i1", 3.0))


@pytest.mark.parametrize("quota, gpus, why", [
    (DeskQuota("a", 8.0, borrowing_limit=4.0), 13, "at most 12"),   # 8 + 4 = 12 < 13
    (DeskQuota("a", 8.0), 17, "16 GPUs in all"),                   # unlimited borrowing, 16-GPU pool
    (DeskQuota("a", 8.0), 0, "at least 1 GPU"),
])
def test_never_fits_refused_at_once(quota, gpus, why):
    dec = schedule(snap(T, {"a": quota, "b": DeskQuota("b", 8.0)}, [], [pend("j", "a", gpus)]), RAYFIN)
    assert [d.job_id for d in dec.refusals] == ["j"] and why in dec.refusals[0].reason
    assert "to fix" in dec.refusals[0].reason


def test_static_refuses_above_nominal_and_fifo_ignores_quotas():
    dec = schedule(snap(T, desks(a=8, b=8), [], [pend("j", "a", 12)]), SchedulerConfig.preset("static"))
    assert [d.job_id for d in dec.refusals] == ["j"]
    dec = schedule(snap(T, desks(a=8, b=8), [], [pend("j", "a", 12)]), SchedulerConfig.preset("fifo"))
    assert [d.job_id for d in dec.admits] == ["j"]


def test_unavailable_and_fractional_serving_gpus():
    # n0 lost; serving holds 0.5 GPU on n1-i0 -> only 3 whole GPUs there, 4 on n1-i1
    serving = run("serve", "b", ("n1-i0", 0.5), preemptible=False)
    s = snap(T, desks(a=8, b=8), [serving], [pend("j", "a", 4), pend("k", "a", 3, t=1)],
             unavailable={"n0-i0": 4, "n0-i1": 4})
    dec = schedule(s, RAYFIN)
    assert by_id(dec.admits)["j"].placement == (("n1-i1", 4.0),)
    assert by_id(dec.admits)["k"].placement == (("n1-i0", 3.0),)


def test_presets_are_enums_and_default_is_rayfin():
    assert SchedulerConfig() == SchedulerConfig.preset(Policy.RAYFIN) == SchedulerConfig.preset("rayfin")
    assert SchedulerConfig.preset("fifo").quota is QuotaMode.NONE
    assert SchedulerConfig.preset("kueue").copy(preemption_grace_s=5).preemption_grace_s == 5


def test_quota_arithmetic_still_exported():
    d = desks(a=8, b=8)
    # a holds 8, asks 4: borrowable = spare 0 + b's unused 8 - borrowed 0 = 8 -> fits, borrows 4
    q = check_quota(d["a"], 4, d, {"a": 8.0, "b": 0.0}, 16.0)
    assert q.fits and q.borrowed == 4.0
    assert never_fits(DeskQuota("a", 8.0, 0.0), 9, 16) is not None


def test_policy_and_placement_never_import_ray():
    import subprocess
    import sys
    code = ("import sys, rayfin.policy, rayfin.policy.preemption, placement.gang, placement.allreduce, rayfin.sim;"
            "bad = [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))


def test_reason_only_decisions_equal_the_dataclass():
    # scheduler._d fills a Decision's slots directly (cheaper for long queues); it must be the
    # same value the constructor builds, every field included.
    from rayfin.policy.model import Decision
    from rayfin.policy.scheduler import _d
    from rayfin.reasons import ReasonCode
    job = pend("j1", "a", 2)
    got = _d(job, Verdict.WAIT, ("no room",), ReasonCode.NO_FREE_GPUS)
    assert got == Decision("j1", "a", Verdict.WAIT, ("no room",), code=ReasonCode.NO_FREE_GPUS)
    assert got.reason == "no room" and got.placement == () and got.deadline is None


@pytest.mark.parametrize("seed", range(40))
def test_reclaim_search_with_floors_equals_the_plain_scan(seed, monkeypatch):
    # plan_reclaim tries domains best score floor first and stops early; the plan must be the
    # one the plain scan (every domain in order, strictly better replaces) returns.
    import random

    import rayfin.policy.preemption as pre
    from rayfin.policy.hints import JobHint
    rng = random.Random(seed)
    t = topo(racks=2, nodes_per_rack=2)   # 2 racks x 2 nodes x 2 islands of 4 GPUs
    islands = [i.id for i in t.islands]
    running, hints, k = [], {}, 0
    for isl in islands:
        left = 4
        while left > 0:
            g = rng.choice([x for x in (1, 2, 4) if x <= left])
            desk = rng.choice(["a", "b", "c"])
            running.append(run(f"r{k}", desk, (isl, float(g)), started=float(rng.randint(0, 50)),
                               prio=rng.choice([B, N, C])))
            hints[f"r{k}"] = JobHint(float(rng.choice([600, 3600, 86400])), 100.0, float(rng.randint(1, 900)))
            left -= g
            k += 1
    pending = [pend(f"p{i}", "a", rng.choice([1, 2, 4, 8]), t=float(i)) for i in range(6)]
    cfg = SchedulerConfig.preset("rayfin")

    def plain(ctx, job, need_own, level, kind, bounds, domains):
        best = None
        for dom in domains:
            plan = pre._plan_in(ctx, job, dom, kind, need_own, level)
            if plan is not None and (best is None or plan.score < best.score):
                best = plan
                if plan.score[0] == -1 and not plan.victims:
                    break
        return best
    s = snap(t, desks(a=16, b=8, c=8), running, pending, now=100.0, hints=hints)
    fast = schedule(s, cfg)
    monkeypatch.setattr(pre, "_best_domain", plain)
    slow = schedule(s, cfg)
    assert fast == slow



def _random_full_cluster(seed: int):
    import random

    from rayfin.policy.hints import JobHint
    rng = random.Random(seed)
    t = topo(racks=2, nodes_per_rack=2)   # 32 GPUs
    running, hints, k = [], {}, 0
    for isl in [i.id for i in t.islands]:
        left = 4
        while left > 0:
            g = rng.choice([x for x in (1, 2, 4) if x <= left])
            running.append(run(f"r{k}", rng.choice("abcd"), (isl, float(g)), started=float(rng.randint(0, 50)),
                               prio=rng.choice([B, N, N, C]),
                               **({"deadline": 130.0, "preempted_for": rng.choice([None, "p0", "gone"])}
                                  if rng.random() < 0.1 else {})))
            hints[f"r{k}"] = JobHint(float(rng.choice([600, 3600, 86400])), 100.0, float(rng.randint(1, 900)))
            left -= g
            k += 1
    from dataclasses import replace
    pending = []
    for i in range(12):
        job = pend(f"p{i}", rng.choice("abcd"), rng.choice([1, 1, 2, 4, 8]), prio=rng.choice([N, N, C]), t=float(i))
        if job.gpus >= 2 and rng.random() < 0.3:
            job = replace(job, unit=2)     # a gang of 2-GPU workers: whole workers per island
        pending.append(job)
    down = {rng.choice([i.id for i in t.islands]): rng.choice([1.0, 2.5, 4.0])} if rng.random() < 0.3 else {}
    return snap(t, desks(a=8, b=8, c=8, d=8), running, pending, now=100.0, hints=hints, unavailable=down)


@pytest.mark.parametrize("preset", ["rayfin", "kueue_tas_fs", "kueue_node", "fifo", "static", "tiresias",
                                    "sjf_oracle"])
def test_reclaim_precheck_changes_no_decision(preset, monkeypatch):
    # _Cycle._may_reclaim skips the planner when no desk borrows, no own lower-priority work can
    # go and no GPUs are coming free: every decision must be the one the planner would have made,
    # on 40 random full clusters; and the shortcut must have fired in some of them.
    from rayfin.policy.scheduler import _Cycle
    cfg = SchedulerConfig.preset(preset)
    checked = _Cycle._may_reclaim
    skipped = []

    def counting(self, job):
        ok = checked(self, job)
        skipped.append(not ok)
        return ok
    for seed in range(40):
        s = _random_full_cluster(seed)
        monkeypatch.setattr(_Cycle, "_may_reclaim", counting)
        fast = schedule(s, cfg)
        monkeypatch.setattr(_Cycle, "_may_reclaim", lambda self, job: True)
        assert fast == schedule(s, cfg), f"seed {seed}"
    if cfg.reclaim or cfg.priority_preemption:   # (the others never plan a reclaim for an entitled job)
        assert sum(skipped) >= 3 and not all(skipped)


def test_pool_domains_by_level():
    from placement.topology import LinkLevel
    t = topo(racks=2, nodes_per_rack=2)   # 2 racks x 2 nodes x 2 islands
    in_pool, by_level = t.layout.pool_domains(frozenset({"general"}))
    assert in_pool == tuple(range(8))
    assert by_level[LinkLevel.NVLINK] == tuple((i,) for i in range(8))
    assert by_level[LinkLevel.INTRA_NODE] == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert by_level[LinkLevel.INTRA_RACK] == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert by_level[LinkLevel.INTER_RACK] == (tuple(range(8)),)
    assert t.layout.pool_domains(frozenset({"general"})) is t.layout.pool_domains(frozenset({"general"}))
    assert t.layout.pool_domains(frozenset({"other"}))[0] == ()


@pytest.mark.parametrize("preset", ["tiresias", "rayfin", "kueue_tas_fs"])
def test_a_running_job_of_a_desk_no_longer_configured_does_not_crash_the_cycle(preset):
    # An operator removed a desk from the config while its job ran: the cycle must still decide
    # (it raised KeyError in the reclaim planner under least attained service).
    from rayfin.policy.hints import JobHint
    t = topo()
    running = [run("old", "gone", ("n0-i0", 4.0), started=0.0), run("r1", "b", ("n0-i1", 4.0), started=0.0),
               run("r2", "b", ("n1-i0", 4.0), started=0.0), run("r3", "b", ("n1-i1", 4.0), started=0.0)]
    hints = {r.job_id: JobHint(86400.0, 90_000.0, 600.0) for r in running}
    s = snap(t, desks(a=8, b=8), running, [pend("p0", "a", 4)], now=100_000.0, hints=hints)
    d = schedule(s, SchedulerConfig.preset(preset))
    assert [w.job_id for w in d.waits] == ["p0"] and d.preempts   # it waits for a victim
