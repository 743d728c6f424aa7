"""Gang workers, the pure parts: worker counts, the island rule, rank order over topologies,
unit-aware placement, the runner's log buffer, and the controller's results and logs (on the
FakeBackend with an injected clock)."""
from __future__ import annotations

import pytest

from placement.ranks import (WorkerRuleError, check_unit_fits, rank_layout, ring_crossings, worker_count)
from placement.topology import Island, Topology
from rayfin.errors import InvalidRequest, JobNotFound
from rayfin.policy import ClusterSnapshot, DeskQuota, PendingJob, SchedulerConfig, schedule
from rayfin.policy.settings import Policy
from rayfin.runner import LogBuffer
from tests.support.builders import controller_env


def topo(*nodes: tuple[str, str, list[int]]) -> Topology:
    """nodes: (rack, node, [gpus per island])."""
    return Topology(tuple(Island(f"{n}-i{k}", n, r, "general", g, k) for r, n, isl in nodes
                          for k, g in enumerate(isl)))


# ---------------------------------------------------------------------------- worker counts
@pytest.mark.parametrize("gpus, workers, want", [
    (8, 1, 1), (8, 2, 2), (8, 4, 4), (8, 8, 8), (8, "per_gpu", 8), (1, "per_gpu", 1), (10, 5, 5),
])
def test_worker_count(gpus, workers, want):
    assert worker_count(gpus, workers) == want


@pytest.mark.parametrize("gpus, workers, says", [
    (8, 3, "divisor of gpus=8 (1, 2, 4, 8)"),
    (4, 5, "at most one worker per GPU"),
    (4, 0, "a whole number >= 1"),
    (4, "all", "a whole number >= 1 or 'per_gpu'"),
    (4, True, "a whole number"),
])
def test_bad_worker_counts_name_the_field(gpus, workers, says):
    with pytest.raises(WorkerRuleError) as err:
        worker_count(gpus, workers)
    assert err.value.field == "workers" and says in err.value.allowed


@pytest.mark.parametrize("islands, gpus, unit, ok", [
    ([4, 4], 8, 4, True),      # two 4-GPU workers, one per island
    ([4, 4], 8, 8, False),     # one 8-GPU worker would span islands
    ([4, 4], 8, 2, True),
    ([3, 3], 6, 2, False),     # 3-GPU islands hold one 2-GPU worker each: 4 GPUs, not 6
    ([3, 3], 6, 3, True),
    ([8], 8, 8, True),
])
def test_a_worker_never_spans_islands(islands, gpus, unit, ok):
    t = topo(("r0", "n0", islands))
    if ok:
        check_unit_fits(t, ["general"], gpus, unit)
    else:
        with pytest.raises(WorkerRuleError) as err:
            check_unit_fits(t, ["general"], gpus, unit)
        assert err.value.field == "workers"


# ---------------------------------------------------------------------------- rank order
TWO_RACKS = topo(("r0", "n0", [4, 4]), ("r0", "n1", [4, 4]), ("r1", "n2", [4, 4]))


@pytest.mark.parametrize("placement, unit, islands_in_rank_order", [
    # One island: all ranks there.
    ((("n0-i1", 4),), 1, ["n0-i1"] * 4),
    # Placement given out of order: ranks still go rack, node, island in configuration order.
    ((("n2-i0", 2), ("n0-i0", 2), ("n1-i1", 2)), 1, ["n0-i0"] * 2 + ["n1-i1"] * 2 + ["n2-i0"] * 2),
    # Islands of one node adjacent, before the next node.
    ((("n1-i0", 4), ("n0-i1", 4), ("n0-i0", 2)), 2, ["n0-i0", "n0-i1", "n0-i1", "n1-i0", "n1-i0"]),
    # 10 GPUs over three islands, one worker per GPU.
    ((("n0-i0", 4), ("n0-i1", 4), ("n1-i0", 2)), 1, ["n0-i0"] * 4 + ["n0-i1"] * 4 + ["n1-i0"] * 2),
])
def test_ranks_follow_the_topology(placement, unit, islands_in_rank_order):
    slots = rank_layout(TWO_RACKS, placement, unit)
    assert [s.island for s in slots] == islands_in_rank_order
    assert [s.rank for s in slots] == list(range(len(slots)))
    # Every island boundary is crossed exactly once by the ring 0 -> W-1 (plus the wrap-around).
    changes = sum(1 for a, b in zip(slots, slots[1:]) if a.island != b.island)
    assert changes == len({s.island for s in slots}) - 1


def test_local_and_node_ranks():
    slots = rank_layout(TWO_RACKS, (("n0-i0", 2), ("n0-i1", 2), ("n1-i0", 2)), 1)
    assert [(s.node_rank, s.local_rank, s.local_world_size) for s in slots] == [
        (0, 0, 4), (0, 1, 4), (0, 2, 4), (0, 3, 4),   # n0: 4 workers over its two islands
        (1, 0, 2), (1, 1, 2)]                           # n1: 2 workers


def test_topology_order_crosses_slow_links_least():
    # 2 islands on each of two racks: an interleaved order would cross racks at every hop.
    slots = rank_layout(TWO_RACKS, (("n2-i0", 2), ("n0-i0", 2)), 1)
    assert ring_crossings(TWO_RACKS, slots) == {"nvlink": 2, "intra_node": 0, "intra_rack": 0, "inter_rack": 2}


def test_rank_layout_refuses_a_partial_worker():
    with pytest.raises(ValueError, match="whole number"):
        rank_layout(TWO_RACKS, (("n0-i0", 3),), 2)


# ---------------------------------------------------------------------------- placement
def test_scheduler_gives_every_island_whole_workers():
    # Three islands with 3 free GPUs each: a gang of 2-GPU workers takes 2 + 2 + 2, never 3 + 3.
    from rayfin.policy import RunningJob

    t = topo(("r0", "n0", [4, 4, 4]))
    desks = {"fx": DeskQuota("fx", 12.0, 0.0, 0.0, 1.0, frozenset({"general"}))}
    busy = tuple(RunningJob(f"o{k}", "fx", 1.0, ((f"n0-i{k}", 1.0),)) for k in range(3))
    snap = ClusterSnapshot(0.0, t, desks, running=busy, pending=(PendingJob("g", "fx", 6, unit=2),))
    d = schedule(snap, SchedulerConfig.preset(Policy.RAYFIN))
    assert len(d.admits) == 1
    assert sorted(g for _, g in d.admits[0].placement) == [2.0, 2.0, 2.0]
    # With 1-GPU workers the same job fits in two islands.
    snap1 = ClusterSnapshot(0.0, t, desks, running=busy, pending=(PendingJob("g", "fx", 6, unit=1),))
    assert sorted(g for _, g in schedule(snap1, SchedulerConfig.preset(Policy.RAYFIN)).admits[0].placement) == [3, 3]


def test_a_gang_that_cannot_be_cut_into_whole_workers_waits():
    from rayfin.policy import RunningJob

    t = topo(("r0", "n0", [4, 4]))
    desks = {"fx": DeskQuota("fx", 8.0, 0.0, 0.0, 1.0, frozenset({"general"}))}
    busy = (RunningJob("a", "fx", 1.0, (("n0-i0", 1.0),)), RunningJob("b", "fx", 1.0, (("n0-i1", 1.0),)))
    # 6 GPUs free (3 + 3), but a 4-GPU worker fits nowhere.
    snap = ClusterSnapshot(0.0, t, desks, running=busy, pending=(PendingJob("g", "fx", 4, unit=4),))
    d = schedule(snap, SchedulerConfig.preset(Policy.RAYFIN))
    assert not d.admits and [w.job_id for w in d.waits] == ["g"]


def test_reclaim_frees_whole_workers_for_a_gang_in_one_round():
    # fx owns the 8 GPUs (two 4-GPU islands); eq borrows 3 GPUs on each (a 2-GPU and a 1-GPU
    # job). fx's gang of three 2-GPU workers needs 6: stopping the two 2-GPU jobs leaves 3 + 3
    # free GPUs, which hold only two whole workers. The reclaim must count whole workers and
    # stop a third job now, not find out a grace period later.
    from rayfin.policy import RunningJob

    t = topo(("r0", "n0", [4, 4]))
    desks = {"fx": DeskQuota("fx", 8.0, 0.0, 0.0, 1.0, frozenset({"general"})),
             "eq": DeskQuota("eq", 0.0, 8.0, 0.0, 1.0, frozenset({"general"}))}
    busy = (RunningJob("big0", "eq", 2.0, (("n0-i0", 2.0),)), RunningJob("one0", "eq", 1.0, (("n0-i0", 1.0),)),
            RunningJob("big1", "eq", 2.0, (("n0-i1", 2.0),)), RunningJob("one1", "eq", 1.0, (("n0-i1", 1.0),)))
    snap = ClusterSnapshot(0.0, t, desks, running=busy, pending=(PendingJob("g", "fx", 6, unit=2),))
    d = schedule(snap, SchedulerConfig.preset(Policy.RAYFIN))
    stopped = {p.job_id for p in d.preempts}
    (wait,) = d.waits
    assert all(g % 2 == 0 for _, g in wait.placement), wait.placement
    assert sum(g for _, g in wait.placement) == 6 and len(stopped) == 3, (stopped, wait.placement)
    # Once they stop, the gang is admitted at once, in whole workers.
    left = tuple(v for v in busy if v.job_id not in stopped)
    d2 = schedule(ClusterSnapshot(1.0, t, desks, running=left, pending=snap.pending),
                  SchedulerConfig.preset(Policy.RAYFIN))
    assert len(d2.admits) == 1 and all(g % 2 == 0 for _, g in d2.admits[0].placement)


# ---------------------------------------------------------------------------- log buffer
def test_log_buffer_keeps_the_newest_bytes_and_offsets():
    buf = LogBuffer(1024)
    buf.write("a" * 600)
    text, off = buf.read(0)
    assert text == "a" * 600 and off == 600
    buf.write("b" * 600)                   # 1200 > 1024: the oldest chunk goes
    text, off2 = buf.read(off)
    assert text == "b" * 600 and off2 == 1200
    text, _ = buf.read(0)                  # a reader that fell behind gets what is kept
    assert text == "b" * 600
    buf.write("c" * 5000)                  # one chunk larger than the bound: its tail
    text, end = buf.read(0)
    assert text == "c" * 1024 and end == 6200


# ---------------------------------------------------------------------------- the controller
TOK = {d: f"{d}-demo-token" for d in ("fx", "risk", "quant", "admin")}


@pytest.fixture
def env(tmp_path):
    core, backend, _, ledger = controller_env(tmp_path, controller__max_log_bytes=2048)
    return core, backend, ledger


def test_gang_submit_reserves_whole_workers_and_keeps_every_rank(env):
    core, backend, _ = env
    job = core.submit(TOK["quant"], "quant", {"kind": "callable", "payload": b"x", "gpus": 10,
                                              "workers": "per_gpu"})["job_id"]
    for _ in range(3):
        core.cycle()
    assert core.status(TOK["quant"], job)["state"] == "RUNNING"
    assert backend.units[f"{job}~0"] == 1 and backend.runners[f"{job}~0"].unit == 1
    assert sum(g for _, g in backend.group_of(job)) == 10
    backend.output(job, 0, "rank 0 line\n")
    backend.output(job, 3, "rank 3 line 1\nrank 3 line 2\n")
    core.cycle()
    backend.finish(job, result=b"r0", results=tuple(f"r{i}".encode() for i in range(10)))
    core.cycle()
    assert core.status(TOK["quant"], job)["state"] == "SUCCEEDED"
    assert core.results(TOK["quant"], job)["results"] == [f"r{i}".encode() for i in range(10)]
    assert core.result(TOK["quant"], job)["result"] == b"r0"
    assert [ln["text"] for ln in core.logs(TOK["quant"], job, rank=3)["lines"]] == ["rank 3 line 1", "rank 3 line 2"]
    assert [ln["text"] for ln in core.logs(TOK["quant"], job, tail=1)["lines"]] == ["rank 3 line 2"]
    with pytest.raises(JobNotFound):                      # another desk's job reads as absent
        core.logs(TOK["fx"], job)
    with pytest.raises(JobNotFound):
        core.results(TOK["fx"], job)


def test_logs_are_bounded_per_rank(env):
    core, backend, ledger = env
    job = core.submit(TOK["fx"], "fx", {"kind": "callable", "payload": b"x", "gpus": 2, "workers": 2})["job_id"]
    for _ in range(3):
        core.cycle()
    for i in range(40):
        backend.output(job, 1, f"line {i:03d} " + "x" * 90 + "\n")
        core.cycle()
    backend.output(job, 0, "rank 0 is short\n")
    core.cycle()
    kept = ledger.logs(job, rank=1)
    assert sum(len(ln.text) + 1 for ln in kept) <= 2048          # controller.max_log_bytes
    assert kept[-1].text.startswith("line 039")                 # the newest is kept
    assert [ln.text for ln in ledger.logs(job, rank=0)] == ["rank 0 is short"]


@pytest.mark.parametrize("patch, field", [
    ({"workers": 3}, "workers"),
    ({"workers": "half"}, "workers"),
    ({"dist_backend": "mpi"}, "dist_backend"),
    ({"gpus": 8, "workers": 1}, "workers"),      # one 8-GPU worker: quant's islands hold 4
])
def test_gang_spec_errors_name_the_field(env, patch, field):
    core, _, _ = env
    spec = {"kind": "callable", "payload": b"x", "gpus": 4, **patch}
    with pytest.raises(InvalidRequest) as err:
        core.submit(TOK["quant"], "quant", spec)
    assert err.value.field == field


def test_bad_log_queries_name_the_field(env):
    core, _, _ = env
    job = core.submit(TOK["fx"], "fx", {"kind": "callable", "payload": b"x", "gpus": 1})["job_id"]
    with pytest.raises(InvalidRequest) as err:
        core.logs(TOK["fx"], job, rank=-1)
    assert err.value.field == "rank"
    with pytest.raises(InvalidRequest) as err:
        core.logs(TOK["fx"], job, tail="ten")
    assert err.value.field == "tail"
