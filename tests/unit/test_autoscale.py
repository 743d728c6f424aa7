"""Capacity planner, replica arithmetic, config and the Serve policy, without Ray running."""
from __future__ import annotations

import json

import pytest

from rayfin.autoscale import (
    AutoscaleState,
    Observations,
    ReplicaParams,
    decide_replicas,
    parse_autoscaling,
    step,
)
from rayfin.controller.autoscale_ray import AutoscalerUnavailable, RayAutoscalerAdapter
from rayfin.errors import ConfigError
from rayfin.forecast import ForecastParams, init, update
from tests.support.serve import policy_ctx


# --- replica arithmetic -------------------------------------------------------------------

P = ReplicaParams(load_per_replica=2.0, min_replicas=1, max_replicas=20, downscale_hold_s=60, downscale_band=0.1)


@pytest.mark.parametrize("current_load, forecast_load, current, expect, why", [
    # max(3, 9) / 2 = 4.5 -> 5, up at once
    (3.0, 9.0, 2, 5, "up 2 -> 5"),
    # max(9, 3) / 2 = 4.5 -> 5: current load wins when the forecast is lower
    (9.0, 3.0, 2, 5, "current load"),
    # 7.9 / 2 = 3.95 -> 4 == current
    (7.9, 0.0, 4, 4, "hold"),
    # 5.5 / 2 = 2.75 > (4 - 1) * 0.9 = 2.7: inside the band, no downscale clock
    (5.5, 0.0, 4, 4, "band"),
    # 100 / 2 = 50 -> capped at max_replicas 20
    (100.0, 0.0, 3, 20, "capped"),
    # 0 load -> min_replicas 1, but only after the hold: first call starts the clock
    (0.0, 0.0, 3, 3, "lower for 0s"),
])
def test_decide_replicas_table(current_load, forecast_load, current, expect, why):
    d = decide_replicas(current_load, forecast_load, current, now=100.0, params=P)
    assert d.replicas == expect
    assert why in d.reason


def test_downscale_waits_for_the_hold_and_resets_on_interruption():
    d = decide_replicas(1.0, 0.0, 4, now=0.0, params=P)
    assert (d.replicas, d.below_since) == (4, 0.0)
    d = decide_replicas(1.0, 0.0, 4, now=59.0, params=P, below_since=d.below_since)
    assert d.replicas == 4
    d2 = decide_replicas(1.0, 0.0, 4, now=60.0, params=P, below_since=d.below_since)
    assert (d2.replicas, d2.below_since) == (1, None)  # 1.0 / 2 = 0.5 -> 1 (min)
    # an interruption (load back up) clears the clock
    d3 = decide_replicas(8.0, 0.0, 4, now=30.0, params=P, below_since=0.0)
    assert d3.below_since is None


def test_quota_caps_and_forces_down_at_once():
    q = ReplicaParams(load_per_replica=1.0, max_replicas=50, quota_replicas=6)
    assert decide_replicas(20.0, 0.0, 2, 0.0, q).replicas == 6
    d = decide_replicas(20.0, 0.0, 9, 0.0, q)
    assert d.replicas == 6 and "over quota" in d.reason


def test_replica_params_validate():
    with pytest.raises(ValueError):
        ReplicaParams(load_per_replica=0)
    with pytest.raises(ValueError):
        ReplicaParams(load_per_replica=1, min_replicas=5, max_replicas=2)


# --- config -------------------------------------------------------------------------------

def test_empty_autoscaling_section_is_valid():
    s = parse_autoscaling({})
    assert s.enabled and s.quantile == 0.9 and s.pools == {}
    assert parse_autoscaling(None) == s


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError) as e:
        parse_autoscaling({"pools": {"risk": {"lead_time_s": -1}}, "quantile": 2})
    paths = {p for p, _, _ in e.value.problems}
    assert "autoscaling.pools.risk.lead_time_s" in paths and "autoscaling.quantile" in paths
    with pytest.raises(ConfigError, match="unknown field"):
        parse_autoscaling({"pols": {}})
    with pytest.raises(ConfigError, match="pool is required"):
        parse_autoscaling({"desks": {"fx": {"gpus_per_request_per_s": 0.1}}})


def test_default_bundle_uses_the_pool_resource():
    s = parse_autoscaling({"pools": {"risk": {}}})
    assert s.pools["risk"].bundle_for("risk") == {"GPU": 1.0, "rayfin_pool_risk": 1.0}


# --- planner ------------------------------------------------------------------------------

SETTINGS = parse_autoscaling({
    "release_after_s": 120,
    "forecast": {"bin_s": 60, "season_s": 3600, "week_seasons": 0, "kernel_bins": 1},
    "pools": {"risk": {"lead_time_s": 300, "max_gpus": 16}},
    "desks": {"fx": {"pool": "general", "gpus_per_request_per_s": 0.1}},
})


def burst(t: float) -> float:
    """4 GPUs of demand from minute 30 to 40 of every hour, 0 otherwise."""
    return 4.0 if 1800 <= t % 3600 < 2400 else 0.0


def run(hours: float, state=None, dt: float = 30.0):
    state = state or AutoscaleState()
    log = []
    t = 0.0
    while t < hours * 3600:
        req, state = step(state, Observations({"risk": burst(t)}), t, SETTINGS)
        log.append((t, req))
        t += dt
    return log, state


def test_capacity_comes_up_before_a_learnt_burst_and_goes_back():
    log, _ = run(4)
    last_hour = [(t, r) for t, r in log if t >= 3 * 3600]
    before = [r.pools["risk"].gpus for t, r in last_hour if 1800 - 300 <= t % 3600 < 1800]
    assert max(before) >= 4, before  # ready one lead time (300 s) before minute 30
    assert any("forecast load" in " ".join(r.pools["risk"].reasons) for t, r in last_hour if t % 3600 < 1800)
    # quiet: from burst end + lead + release_after_s (+ a bin) to one lead before the next burst
    quiet = [r.pools["risk"].gpus for t, r in last_hour
             if t % 3600 >= 2400 + 300 + 120 + 60 or t % 3600 < 1800 - 300 - 60]
    assert quiet and max(quiet) == 0, quiet  # released after release_after_s once the forecast falls


def test_request_bundles_and_unconfigured_pools():
    req, st = step(AutoscaleState(), Observations({"risk": 3.0, "general": 2.0}, {"fx": 10.0}), 0.0, SETTINGS)
    assert req.pools["risk"].gpus == 3.0  # current demand, nothing learnt yet
    assert req.bundles() == [{"GPU": 1.0, "rayfin_pool_risk": 1.0}] * 3
    # "general" is not under autoscaling.pools: forecast and reported (incl. fx's 10 * 0.1 GPUs), no bundles
    assert req.pools["general"].bundles == () and req.pools["general"].demand_gpus == pytest.approx(3.0)
    assert req.desks["fx"].actual == 10.0
    assert st.requested == {"risk": 3}


def test_max_gpus_caps_the_request():
    req, _ = step(AutoscaleState(), Observations({"risk": 40.0}), 0.0, SETTINGS)
    assert req.pools["risk"].gpus == 16.0 and "capped" in " ".join(req.pools["risk"].reasons)


def test_state_survives_a_restart_through_json():
    _, state = run(2)
    restored = AutoscaleState.from_dict(json.loads(json.dumps(state.to_dict())))
    obs = Observations({"risk": 1.0})
    a, _ = step(state, obs, 7200.0, SETTINGS)
    b, _ = step(restored, obs, 7200.0, SETTINGS)
    assert a.pools["risk"].forecast_gpus == pytest.approx(b.pools["risk"].forecast_gpus)
    assert a.bundles() == b.bundles()


def test_disabled_requests_nothing():
    s = parse_autoscaling({"enabled": False, "pools": {"risk": {}}})
    req, _ = step(AutoscaleState(), Observations({"risk": 5.0}), 0.0, s)
    assert req.bundles() == [] and "disabled" in req.pools["risk"].reasons[0]


# --- Ray adapter (injected request function) ---------------------------------------------

def test_adapter_sends_only_changes_and_releases():
    calls = []
    adapter = RayAutoscalerAdapter(request_fn=lambda bundles: calls.append(bundles))
    req, _ = step(AutoscaleState(), Observations({"risk": 2.0}), 0.0, SETTINGS)
    assert adapter.apply(req).sent and not adapter.apply(req).sent
    adapter.release()
    assert calls == [[{"GPU": 1.0, "rayfin_pool_risk": 1.0}] * 2, []]


def test_adapter_maps_ray_errors():
    def boom(bundles):
        raise ConnectionError("no GCS")

    req, _ = step(AutoscaleState(), Observations({"risk": 1.0}), 0.0, SETTINGS)
    with pytest.raises(AutoscalerUnavailable, match="to fix"):
        RayAutoscalerAdapter(request_fn=boom).apply(req)


# --- Serve policy arithmetic (a hand-built context; no Ray cluster) ------------------------

ctx = policy_ctx


def test_serve_policy_covers_current_load_and_keeps_state():
    from serve_apps.autoscaling_policy import PredictivePolicy

    pol = PredictivePolicy(lead_time_s=60, quota_replicas=8)
    n, st = pol(ctx(9.0, 1, 0.0))
    assert n == 5  # ceil(9 / 2)
    assert st["forecast"].acc_n == 1 and "up 1 -> 5" in st["reason"]
    n, st = pol(ctx(40.0, 5, 1.0, st))
    assert n == 8  # 40 / 2 = 20, quota 8


def test_serve_policy_scales_ahead_with_a_seeded_forecast():
    from serve_apps.autoscaling_policy import PredictivePolicy

    p = ForecastParams(bin_s=10, season_s=600, week_seasons=0, kernel_bins=0)
    fs = init(p)
    for t in range(0, 3000, 2):  # 5 seasons: load 10 in seconds [300, 400) of each 600 s
        fs = update(fs, float(t), 10.0 if 300 <= t % 600 < 400 else 0.0)
    pol = PredictivePolicy(lead_time_s=30, initial_state=fs.to_dict())
    n, st = pol(ctx(0.0, 1, 3000.0 + 280.0))  # 20 s before the burst, no load yet
    assert n >= 4, st["reason"]  # P90 of ~10 ongoing / 2 per replica
    assert st["forecast_load"] >= 8.0


def test_serve_policy_prewarms_for_the_next_quota_window():
    """fx reserves 1 serving GPU intraday and 3 at eod (XNYS close 2025-11-25 21:00Z); with 0.5 GPU
    a replica and a 120 s replica start, the floor goes 2 -> 6 replicas 120 s before the close."""
    from datetime import datetime, timezone

    from serve_apps.autoscaling_policy import PredictivePolicy

    close = datetime(2025, 11, 25, 21, 0, tzinfo=timezone.utc).timestamp()
    plan = {"desks": {"fx": {"intraday": {"serving": {"gpus": 1}}, "eod": {"serving": {"gpus": 3}}}}}
    pol = PredictivePolicy(desk="fx", lead_time_s=120, market={"exchange": "XNYS", "quota_plan": plan,
                                                               "gpus_per_replica": 0.5})
    n, st = pol(ctx(0.0, 1, close - 600))
    assert (n, st["market_window"], st["market_floor"]) == (2, "intraday", 2)      # ceil(1 / 0.5)
    n, st = pol(ctx(0.0, n, close - 121, st))
    assert n == 2
    n, st = pol(ctx(0.0, n, close - 120, st))
    assert (n, st["market_window"]) == (6, "eod")                                    # ceil(3 / 0.5), ahead
    assert PredictivePolicy(desk="fx", lead_time_s=120)(ctx(0.0, 1, close - 60))[0] == 1   # no plan: no floor


def test_serve_policy_prewarms_the_open_from_the_last_sessions_opens():
    """XNYS opens 14:30Z on Mon 24 and Tue 25 Nov 2025. Monday's first 30 min ask for 6 replicas
    (load 12, target 2); from 120 s before Tuesday's open the floor is ceil(1.2 x 6) = 8 with no
    load yet, and not a second earlier."""
    from datetime import datetime, timezone

    from serve_apps.autoscaling_policy import PredictivePolicy

    mon = datetime(2025, 11, 24, 14, 30, tzinfo=timezone.utc).timestamp()
    tue = datetime(2025, 11, 25, 14, 30, tzinfo=timezone.utc).timestamp()
    pol = PredictivePolicy(desk="fx", lead_time_s=120, market={"exchange": "XNYS", "quota_plan": {},
                                                               "open_floor": {"headroom": 0.2}})
    st: dict = {}
    for k, load in enumerate((4.0, 12.0, 8.0)):          # inside Monday's open window
        _, st = pol(ctx(load, 1, mon + 60 + 300 * k, st))
    assert st["open_current"] == [mon, 6.0] and st["open_peaks"] == []
    _, st = pol(ctx(0.0, 1, mon + 1800 + 5, st))          # the window is over: Monday joins the history
    assert st["open_peaks"] == [6.0] and st["open_current"] is None
    n, st = pol(ctx(0.0, 1, tue - 121, dict(st, forecast=None)))
    assert n == 1
    n, st = pol(ctx(0.0, 1, tue - 120, dict(st, forecast=None)))
    assert n == 8, st["reason"]
    with pytest.raises(ValueError, match="open_floor"):
        PredictivePolicy(market={"exchange": "XNYS", "quota_plan": {}, "open_floor": {"headrom": 0.2}})
