"""Drain plan: which nodes of a pool to cordon, bring back or release, with reasons. Pure."""
from __future__ import annotations

import pytest

from rayfin.autoscale.drain import (DrainAction, DrainParams, DrainReason, NodeLoad, ReleaseAccount, account,
                                    plan_drain)


def N(node, used, gpus=4, draining=False, pool="fx"):
    return NodeLoad(node, pool, gpus, used, draining)


@pytest.mark.parametrize("nodes, forecast, params, expect", [
    # need = max(2, used 4) x 1.25 = 5 GPUs: a (3 used) and b (1 used) cover 8; c is empty -> drains
    ([N("a", 3), N("b", 1), N("c", 0)], 2.0, DrainParams(),
     {"a": (DrainAction.KEEP, DrainReason.NEEDED), "b": (DrainAction.KEEP, DrainReason.NEEDED),
      "c": (DrainAction.DRAIN, DrainReason.FORECAST_LOW)}),
    # need = max(1, 3) x 1.25 = 3.75: a alone covers it; b still holds 1 GPU of work -> drain, not release
    ([N("a", 2), N("b", 1)], 1.0, DrainParams(),
     {"a": (DrainAction.KEEP, DrainReason.NEEDED), "b": (DrainAction.DRAIN, DrainReason.FORECAST_LOW)}),
    # b was draining and still busy: it waits; the next cycle after it empties releases it
    ([N("a", 2), N("b", 1, draining=True)], 1.0, DrainParams(),
     {"a": (DrainAction.KEEP, DrainReason.NEEDED), "b": (DrainAction.WAIT, DrainReason.DRAINING)}),
    # empty and surplus since t=0; at now=0 (default) it waits out release_after_s ...
    ([N("a", 2), NodeLoad("b", "fx", 4, 0, True, 0.0)], 1.0, DrainParams(),
     {"a": (DrainAction.KEEP, DrainReason.NEEDED), "b": (DrainAction.WAIT, DrainReason.DRAINING)}),
    # demand returns: need = 10 x 1.25 = 12.5 > 8 -> the draining node is brought back
    ([N("a", 4), N("b", 1, draining=True), N("c", 0)], 10.0, DrainParams(),
     {"a": (DrainAction.KEEP, DrainReason.NEEDED), "b": (DrainAction.UNDRAIN, DrainReason.DEMAND_RETURNED),
      "c": (DrainAction.KEEP, DrainReason.NEEDED)}),
    # nothing forecast, nothing used: the floor of 1 node keeps one (b before c by id), c drains
    ([N("b", 0), N("c", 0)], 0.0, DrainParams(min_nodes=1),
     {"b": (DrainAction.KEEP, DrainReason.MIN_NODES), "c": (DrainAction.DRAIN, DrainReason.FORECAST_LOW)}),
])
def test_plan_drain(nodes, forecast, params, expect):
    plan = plan_drain(nodes, {"fx": forecast}, params)
    got = {v.node: (v.action, v.reason) for v in plan.verdicts}
    assert got == expect
    assert all(v.detail for v in plan.verdicts)


def test_an_empty_surplus_node_is_released_after_the_hold():
    nodes = [N("a", 2), NodeLoad("b", "fx", 4, 0, True, 100.0)]
    # ... and is released once surplus for release_after_s = 300 s: 100 + 300 = 400
    assert plan_drain(nodes, {"fx": 1.0}, DrainParams(), now=399.0).verdict("b").action is DrainAction.WAIT
    plan = plan_drain(nodes, {"fx": 1.0}, DrainParams(), now=400.0)
    assert plan.release == ("b",) and plan.verdict("b").reason is DrainReason.EMPTY
    assert "b" in plan.draining            # cordoned until Ray's autoscaler has removed it


def test_the_emptiest_nodes_drain_first():
    nodes = [N("a", 1), N("b", 4), N("c", 2), N("d", 3)]
    plan = plan_drain(nodes, {"fx": 4.0}, DrainParams(headroom=0.0))
    # need = max(4, used 10) = 10: kept fullest first b (4), d (3), c (2), a (1) until >= 10 GPUs
    # of capacity: b + d + c = 12 >= 10 -> a (the emptiest) drains
    assert plan.drain == ("a",)
    assert plan.draining == frozenset({"a"})


def test_pools_apart_and_pool_without_forecast_keeps_all():
    nodes = [N("a", 0, pool="fx"), N("b", 0, pool="fx"), N("r", 0, pool="risk", draining=True)]
    plan = plan_drain(nodes, {"fx": 0.0}, DrainParams(min_nodes=1))
    assert plan.verdict("r").action is DrainAction.UNDRAIN          # no forecast for risk
    assert plan.drain == ("b",)


def test_bad_params_name_the_field():
    with pytest.raises(ValueError, match="headroom"):
        DrainParams(headroom=-1)
    with pytest.raises(ValueError, match="min_nodes"):
        DrainParams(min_nodes=-1)
    with pytest.raises(ValueError, match="release_after_s"):
        DrainParams(release_after_s=-1)


def test_release_account_accrues_node_hours_and_idle_energy():
    acc = account(ReleaseAccount(), 0.0, released={"fx": 2}, added={}, gpus_per_node={"fx": 4}, idle_w=70.0)
    acc = account(acc, 1800.0, released={}, added={"fx": 1}, gpus_per_node={"fx": 4}, idle_w=70.0)
    acc = account(acc, 3600.0, released={}, added={}, gpus_per_node={"fx": 4}, idle_w=70.0)
    # 2 nodes for 0.5 h, then 1 node for 0.5 h = 1.5 node-hours; x 4 GPUs x 70 W = 0.42 kWh
    assert acc.node_hours("fx") == pytest.approx(1.5)
    assert acc.energy_kwh("fx") == pytest.approx(0.42)
    assert ReleaseAccount.from_dict(acc.to_dict()) == acc
