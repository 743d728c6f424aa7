"""Pure pieces of the benchmark: calibrated placement model, in-window demand and load sizing,
trace windows, Kubernetes-style node fit."""
from __future__ import annotations

from pathlib import Path

import pytest

from placement.gang import FreeIndex
from rayfin.policy.node_fit import node_fit, pods
from rayfin.sim.load import gpus_for_load, in_window_demand, windows
from rayfin.sim.metrics import bounded_slowdown, jain
from rayfin.sim.placement_model import (Fabric, PlacementModel, Stretch, fabric_slowdowns, model_class,
                                        spread_slowdown)
from rayfin.sim.trace import TraceJob
from tests.support.policy import topo

PROFILES = Path(__file__).resolve().parents[3] / "shared" / "profiles" / "pollux"


def _rows(*rows):
    return [{"placement": p, "local_bsz": str(b), "step_time": str(t)} for p, b, t in rows]


@pytest.mark.parametrize("rows, expected", [
    # '22' at bsz 8 takes 1.5 s against '4' at 1.0 s: 1.5x
    (_rows(("4", 8, 1.0), ("22", 8, 1.5)), 1.5),
    # median of 1.2 ('11' vs '2') and 2.0 ('1111' vs '4'); a row without a packed reference is skipped
    (_rows(("2", 4, 1.0), ("11", 4, 1.2), ("4", 4, 1.0), ("1111", 4, 2.0), ("13", 7, 9.9)), 1.6),
])
def test_spread_slowdown_compares_with_the_packed_row(rows, expected):
    assert spread_slowdown(rows) == pytest.approx(expected)


def test_spread_slowdown_needs_a_reference():
    with pytest.raises(ValueError, match="packed reference"):
        spread_slowdown(_rows(("22", 8, 1.5)))


@pytest.mark.parametrize("fabric, measured, expected", [
    (Fabric.PCIE_ETHERNET, {"a": 2.0, "b": 0.9}, {"a": 2.0, "b": 1.0}),      # speed-ups not credited
    # nvlink-ib: 1 + 0.05 * (s - 1) / (2 - 1): a -> 1.05, b -> 1.025, c (below 1) -> 1.0
    (Fabric.NVLINK_IB, {"a": 2.0, "b": 1.5, "c": 0.9}, {"a": 1.05, "b": 1.025, "c": 1.0}),
])
def test_fabric_slowdowns(fabric, measured, expected):
    assert fabric_slowdowns(measured, fabric) == pytest.approx(expected)


def test_calibrated_stretch_only_for_jobs_spread_over_nodes_they_could_share():
    t = topo(nodes_per_rack=4)   # nodes of 8 GPUs (two islands of 4)
    s = Stretch(PlacementModel.CALIBRATED, {m: 2.0 for m in ("bert", "cifar10", "deepspeech2", "imagenet",
                                                              "ncf", "yolov3")}, cap=1.8)
    assert s.factor(t, "j", (("n0-i0", 4.0),)) == 1.0                       # one island
    assert s.factor(t, "j", (("n0-i0", 2.0), ("n0-i1", 2.0))) == 1.0         # two islands, one node: not measured
    assert s.factor(t, "j", (("n0-i0", 2.0), ("n1-i0", 2.0))) == 1.8         # two nodes: 2.0, capped at 1.8
    assert s.factor(t, "j", (("n0-i0", 4.0), ("n0-i1", 4.0), ("n1-i0", 4.0))) == 1.0   # 12 GPUs: must spread
    assert s.factor(t, "j", (("n0-i0", 1.0),)) == 1.0
    assert Stretch(PlacementModel.NONE).factor(t, "j", (("n0-i0", 2.0), ("n1-i0", 2.0))) == 1.0
    # linear: 0.7 + 0.3 * 300 / 25 = 4.3 (two nodes of one rack)
    assert Stretch(PlacementModel.LINEAR).factor(t, "j", (("n0-i0", 2.0), ("n1-i0", 2.0))) == pytest.approx(4.3)


@pytest.mark.skipif(not PROFILES.exists(), reason="shared/profiles not present")
def test_calibration_reads_the_pollux_profiles():
    pe = Stretch.build("calibrated", "pcie-ethernet", profile_dir=PROFILES).slowdowns
    ib = Stretch.build("calibrated", "nvlink-ib", profile_dir=PROFILES).slowdowns
    assert set(pe) == {"bert", "cifar10", "deepspeech2", "imagenet", "ncf", "yolov3"}
    assert 1.5 < pe["bert"] < 2.8 and pe["imagenet"] < 1.2         # sensitive vs insensitive models
    assert max(ib.values()) == pytest.approx(1.05) and min(ib.values()) >= 1.0


def test_model_class_is_a_stable_hash():
    assert model_class("42") == model_class("42")
    assert len({model_class(str(k)) for k in range(100)}) == 6


def _j(i, submit, dur, gpus=1):
    return TraceJob(str(i), "u", submit, dur, gpus)


@pytest.mark.parametrize("jobs, expected", [
    # window [0, 100]: a 2-GPU job running all of it, a 1-GPU job for 50 s: 2 + 0.5 = 2.5
    ([_j(0, 0, 1000, 2), _j(1, 50, 10_000, 1), _j(2, 100, 5, 1)], 2.5),
    # a job longer than the window counts only inside it
    ([_j(0, 0, 10, 4), _j(1, 100, 1, 1)], 0.4),
])
def test_in_window_demand(jobs, expected):
    assert in_window_demand(jobs) == pytest.approx(expected)


@pytest.mark.parametrize("load, gpus", [(1.0, 568), (1.1, 512), (2.0, 280)])
def test_gpus_for_load_rounds_to_whole_nodes(load, gpus):
    # demand 566 GPUs: 70.75 nodes -> 71 (568); 566 / 1.1 = 514.5 -> 64 nodes; 283 -> 35 nodes = 280
    jobs = [_j(0, 0, 100, 566), _j(1, 100, 1, 1)]
    assert in_window_demand(jobs) == pytest.approx(566)
    assert gpus_for_load(jobs, load) == gpus


def test_gpus_for_load_refuses_bad_load():
    with pytest.raises(ValueError, match="load"):
        gpus_for_load([_j(0, 0, 1)], 0.0)


def test_windows_split_and_retime():
    ws = windows([_j(k, 10.0 * k, 1) for k in range(10)], 3)
    assert [len(w) for w in ws] == [3, 3, 4] and [w[0].submit_s for w in ws] == [0.0, 0.0, 0.0]
    assert ws[1][1].submit_s == 10.0


@pytest.mark.parametrize("gpus, size, expected", [(4, 8, [4]), (8, 8, [8]), (20, 8, [8, 8, 4]), (0, 8, [])])
def test_pods(gpus, size, expected):
    assert pods(gpus, size) == expected


def test_node_fit_never_splits_a_pod_across_nodes():
    t = topo(nodes_per_rack=2)
    lay = t.layout
    # free: n0-i0 3, n0-i1 0, n1-i0 4, n1-i1 4: 4 GPUs do not fit n0 (3), so n1 whole island
    idx = FreeIndex(lay, [3, 0, 4, 4])
    got = node_fit(idx, 4, frozenset({"general"}))
    assert got == [(lay.index["n1-i0"], 4)]
    # 6 GPUs: n1, across its two islands (the device plugin knows no islands)
    assert node_fit(idx, 6, frozenset({"general"})) == [(lay.index["n1-i0"], 4), (lay.index["n1-i1"], 2)]
    # 9 GPUs: pods 8 + 1 -> n1 (8), n0 (1)
    assert sorted(node_fit(idx, 9, frozenset({"general"}))) == [(0, 1), (2, 4), (3, 4)]
    # 8 GPUs free in all, but no node holds a pod of 7 once n1 is taken
    assert node_fit(FreeIndex(lay, [3, 0, 4, 0]), 7, frozenset({"general"})) is None


@pytest.mark.parametrize("values, expected", [([1, 1, 1], 1.0), ([1, 0, 0], 1 / 3), ([2, 1], 0.9)])
def test_jain(values, expected):
    # (2 + 1)^2 / (2 * (4 + 1)) = 0.9
    assert jain(values) == pytest.approx(expected)


def test_bounded_slowdown_floors_short_jobs():
    assert list(bounded_slowdown([20.0, 300.0], [1.0, 100.0])) == pytest.approx([2.0, 3.0])


@pytest.mark.parametrize("bsz, expected", [
    (2.0, 1.0),     # below the smallest measured batch: its step time
    (4.0, 1.0),
    (6.0, 1.5),     # halfway between (4, 1.0) and (8, 2.0)
    (16.0, 4.0),    # above the largest: gradient accumulation, 2.0 * 16 / 8
])
def test_step_time_interpolates(bsz, expected):
    from rayfin.sim.elastic import step_time
    assert step_time([(4.0, 1.0), (8.0, 2.0)], bsz) == pytest.approx(expected)


def test_throughput_keeps_the_global_batch():
    from rayfin.sim.elastic import throughput
    # 1 worker: batch 8 in 2.0 s; 2 workers: local batch 4 in 1.2 s -> 8 / 1.2; 3 workers interpolated
    table = {1: [(4.0, 1.0), (8.0, 2.0)], 2: [(4.0, 1.2), (8.0, 2.2)], 4: [(2.0, 1.0), (4.0, 1.5)]}
    assert throughput(table, 1, 8.0) == pytest.approx(4.0)
    assert throughput(table, 2, 8.0) == pytest.approx(8.0 / 1.2)
    assert throughput(table, 3, 8.0) == pytest.approx((8.0 / 1.2 + 8.0 / 1.0) / 2)


@pytest.mark.skipif(not PROFILES.exists(), reason="shared/profiles not present")
def test_measured_curves_are_not_linear():
    from rayfin.sim.elastic import ScalingCurves
    c = ScalingCurves.load(PROFILES)
    gains = [c.speedup(str(k), 4, 8) for k in range(12)]
    assert all(g < 1.9 for g in gains)          # doubling never doubles the speed
    assert c.speedup("0", 4, 4) == pytest.approx(1.0)
