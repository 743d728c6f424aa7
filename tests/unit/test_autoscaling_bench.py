"""Pure pieces of the autoscaling benchmark and policy: frontier arithmetic, the node-layer
replay with and without drain, the calibrated Serve policy's persisted state, drain metrics."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.autoscaling_frontier import Point, envelope, interp_rate, ratio_at_equal_cost
from benchmarks.autoscaling_nodes import NodeConfig, simulate_nodes


def P(knob, cost, rate, fam="ray_default"):
    return Point(fam, knob, cost, rate)


def test_envelope_drops_dominated_points():
    pts = [P(4, 70, 0.18), P(3, 72, 0.11), P(2, 69, 0.04), P(1, 99, 0.013), P(0.75, 118, 0.013)]
    # 69 h / 4% dominates 70 h / 18% and 72 h / 11%; 118 h at the same 1.3% as 99 h adds nothing
    assert [p.knob for p in envelope(pts)] == [2, 1]


def test_interp_is_log_linear_in_rate_and_none_outside_the_cost_range():
    front = [P(2, 100, 0.04), P(1, 200, 0.01)]
    # halfway in cost: exp((log 0.04 + log 0.01) / 2) = 0.02
    assert interp_rate(front, 150) == pytest.approx(0.02)
    assert interp_rate(front, 99) is None and interp_rate(front, 201) is None


def test_ratio_at_equal_cost_is_a_geometric_mean_over_compared_points():
    ray = [P(2, 100, 0.04), P(1, 200, 0.01)]
    ours = [P(0.1, 150, 0.01, "rayfin"), P(0.3, 100, 0.01, "rayfin"), P(0.01, 400, 0.001, "rayfin")]
    r = ratio_at_equal_cost(ours, ray)
    # at 150 h: 0.01 / 0.02 = 0.5; at 100 h: 0.01 / 0.04 = 0.25; 400 h is outside Ray's range
    assert r["compared"] == 2
    assert r["geomean"] == pytest.approx(math.sqrt(0.5 * 0.25), rel=1e-3)


def _series():
    # One day at 10 s steps on 2-GPU nodes: 6 replicas for 2 h, then 3 and 4 replicas in turn
    # every 2 minutes, then 6 again for the last 2 h.
    k = np.arange(8640)
    r = np.where(k < 720, 6, 3 + (k // 12) % 2).astype(float)
    r[-720:] = 6
    return r


def test_drain_gives_back_the_node_spread_placement_keeps_alive():
    r = _series()
    cfg = NodeConfig(gpus_per_node=2, node_start_s=180, idle_timeout_s=300)
    # The forecast sees 3 minutes ahead (what the Serve policy's forecast does).
    fc = np.maximum(r, np.roll(r, -18))
    spread = simulate_nodes("serve_spread", r, fc, 10.0, cfg)
    pack = simulate_nodes("serve_pack", r, fc, 10.0, cfg)
    drain = simulate_nodes("rayfin_drain", r, fc, 10.0, cfg)
    # Spread puts the 4th replica on the node that had just emptied, every 2 minutes, so it never
    # idles 300 s: 3 nodes all day (72 node-hours). The drain cordons it; it is released.
    assert spread.node_hours == pytest.approx(72.0)
    assert drain.drains >= 1
    assert drain.node_hours < spread.node_hours - 15
    assert drain.energy_kwh < spread.energy_kwh
    # Packing alone empties it too, but starts the evening's node only when replicas wait;
    # the drain's forecast starts it ahead: fewer replica-hours waiting.
    assert drain.pending_replica_s < pack.pending_replica_s


def test_unknown_node_policy_is_refused():
    with pytest.raises(ValueError, match="serve_spread"):
        simulate_nodes("bogus", np.ones(3), np.ones(3), 10.0, NodeConfig())


def _ctx(load, target, now, state):
    cfg = SimpleNamespace(get_target_ongoing_requests=lambda: 2.0)
    return SimpleNamespace(total_num_requests=load, target_num_replicas=target, current_num_replicas=target,
                           capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=20,
                           policy_state=state, current_time=now, config=cfg)


def test_calibrated_policy_keeps_its_margin_in_policy_state_and_resumes_from_a_dict():
    from rayfin.forecast.conformal import ConformalState
    from serve_apps.autoscaling_policy import PredictivePolicy

    pol = PredictivePolicy(lead_time_s=120, miss_budget=0.05, forecast={"bin_s": 60.0, "season_s": 600.0,
                                                                       "week_seasons": 0, "kernel_bins": 0})
    state, n = {}, 1
    rng = np.random.default_rng(0)
    for k in range(600):                            # 100 minutes at 10 s ticks
        n, state = pol(_ctx(float(rng.poisson(6)), n, k * 10.0, state))
    cs = state["conformal"]
    assert isinstance(cs, ConformalState) and cs.bins > 50
    # Persisted as JSON-safe dicts (what Serve / the controller keep), the next call picks it up.
    persisted = {**state, "conformal": cs.to_dict(), "forecast": state["forecast"].to_dict()}
    n2, state2 = pol(_ctx(6.0, n, 6000.0, persisted))
    assert state2["conformal"].bins >= cs.bins and state2["conformal"].theta == pytest.approx(cs.theta, abs=0.1)


def test_record_drain_sets_per_pool_gauges(monkeypatch):
    from rayfin.controller import autoscale_ray as metrics
    from rayfin.autoscale.drain import DrainParams, NodeLoad, ReleaseAccount, account, plan_drain

    class G:
        def __init__(self):
            self.v = {}

        def set(self, value, tags):
            self.v[tags["pool"]] = value

    fakes = {n: G() for n in ("rayfin_pool_nodes_draining", "rayfin_pool_node_hours_released",
                              "rayfin_pool_energy_saved_kwh")}
    monkeypatch.setattr(metrics, "_GAUGES", dict(fakes))
    plan = plan_drain([NodeLoad("a", "fx", 4, 2), NodeLoad("b", "fx", 4, 1)], {"fx": 1.0}, DrainParams())
    acc = account(account(ReleaseAccount(), 0, {"fx": 1}, {}, {"fx": 4}, 70.0), 3600, {}, {}, {"fx": 4}, 70.0)
    metrics.record_drain(plan, acc)
    assert fakes["rayfin_pool_nodes_draining"].v == {"fx": 1.0}            # b drains
    assert fakes["rayfin_pool_node_hours_released"].v["fx"] == pytest.approx(1.0)
    assert fakes["rayfin_pool_energy_saved_kwh"].v["fx"] == pytest.approx(0.28)   # 1 h x 4 x 70 W
