"""Gang placement and the all-reduce cost model (pure; no Ray)."""
from __future__ import annotations

import pytest

from placement.allreduce import achieved_bandwidth, ideal_bandwidth, ring_allreduce_seconds, stretch_factor
from placement.gang import FreeIndex
from placement.topology import LinkLevel
from tests.support.policy import topo


def _index(t, used: dict[str, int]) -> FreeIndex:
    lay = t.layout
    free = [float(c) for c in lay.capacity]
    for isl, g in used.items():
        free[lay.index[isl]] -= g
    return FreeIndex(lay, free)


def _ids(t, pix):
    return sorted((t.layout.island_ids[i], g) for i, g in pix)


ALL = frozenset({"general"})


@pytest.mark.parametrize("used, gpus, want, level", [
    # best fit: the island with the fewest free GPUs that still holds the job.
    # free: n0-i0 1, n0-i1 4, n1-i0 2, n1-i1 4
    ({"n0-i0": 3, "n1-i0": 2}, 2, [("n1-i0", 2)], LinkLevel.NVLINK),
    ({"n0-i0": 3, "n1-i0": 2}, 1, [("n0-i0", 1)], LinkLevel.NVLINK),
    # ties between whole islands go to the busier node: n0 has 4 free, n1 has 8 -> n0-i1
    ({"n0-i0": 4}, 4, [("n0-i1", 4)], LinkLevel.NVLINK),
    # 3 GPUs, no island has 3 free (free 2,2,2,2): two islands of one node, not two nodes
    ({"n0-i0": 2, "n0-i1": 2, "n1-i0": 2, "n1-i1": 2}, 3, [("n0-i0", 2), ("n0-i1", 1)], LinkLevel.INTRA_NODE),
])
def test_best_fit_island_and_node(used, gpus, want, level):
    t = topo()
    got = _index(t, used).best_fit(gpus, ALL, t.ideal_level(gpus))
    assert got is not None
    pix, lvl = got
    assert _ids(t, pix) == want and lvl == level


def test_multi_island_job_takes_whole_nodes_in_one_rack():
    # 2 racks x 2 nodes x [4, 4]. Rack r0: n0 empty, n1 has 4 used. Rack r1: n2, n3 empty.
    t = topo(racks=2)
    idx = _index(t, {"n1-i0": 4})
    # 16 GPUs: r0 has 12 free (cannot), r1 has 16 -> both nodes of r1, whole islands
    pix, lvl = idx.best_fit(16, ALL, t.ideal_level(16))
    assert lvl == LinkLevel.INTRA_RACK
    assert _ids(t, pix) == [("n2-i0", 4), ("n2-i1", 4), ("n3-i0", 4), ("n3-i1", 4)]
    # 8 GPUs: one whole node; n0, n2, n3 all have 8 free; tie -> the busier rack r0 -> n0
    pix, lvl = idx.best_fit(8, ALL, t.ideal_level(8))
    assert lvl == LinkLevel.INTRA_NODE and _ids(t, pix) == [("n0-i0", 4), ("n0-i1", 4)]
    # 12 GPUs in r0 (n0 8 + n1 4) needs 2 nodes, in r1 also 2 nodes; tie on nodes -> fewer free (r0: 12 < 16)
    pix, lvl = idx.best_fit(12, ALL, t.ideal_level(12))
    assert lvl == LinkLevel.INTRA_RACK and {i.split("-")[0] for i, _ in _ids(t, pix)} == {"n0", "n1"}


def test_first_fit_is_topology_blind():
    t = topo()
    idx = _index(t, {"n0-i0": 3})
    # first fit walks islands in order: 1 from n0-i0, then 3 from n0-i1
    assert _ids(t, idx.first_fit(4, ALL)) == [("n0-i0", 1), ("n0-i1", 3)]
    assert idx.first_fit(14, ALL) is None   # 13 free


def test_take_updates_node_and_rack_counts():
    t = topo()
    idx = _index(t, {})
    idx.take([(0, 3)])
    assert idx.total == 13 and int(idx.nfree[0]) == 5 and int(idx.rfree[0]) == 13 and idx.whole(0) == 1


def test_allreduce_cost_and_stretch():
    t = topo(racks=2)
    one_island = (("n0-i0", 4.0),)
    two_nodes = (("n0-i0", 2.0), ("n1-i0", 2.0))
    two_racks = (("n0-i0", 2.0), ("n2-i0", 2.0))
    # t = 2 (n-1)/n * S / B: 2 * 3/4 * 1 GB / 300 GB/s = 0.005 s
    assert ring_allreduce_seconds(t, one_island) == pytest.approx(0.005)
    assert achieved_bandwidth(t, two_nodes) == 25.0 and achieved_bandwidth(t, two_racks) == 12.5
    assert ideal_bandwidth(t, 4) == 300.0 and ideal_bandwidth(t, 8) == 64.0 and ideal_bandwidth(t, 16) == 25.0
    # 0.7 + 0.3 * 300 / 25 = 4.3 ; 0.7 + 0.3 * 300 / 12.5 = 7.9 ; ideal: 1.0 ; one GPU: 1.0
    assert stretch_factor(t, two_nodes, 0.3) == pytest.approx(4.3)
    assert stretch_factor(t, two_racks, 0.3) == pytest.approx(7.9)
    assert stretch_factor(t, one_island, 0.3) == 1.0
    assert stretch_factor(t, (("n0-i0", 1.0),), 0.3) == 1.0
