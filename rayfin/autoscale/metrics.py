"""Forecast vs actual as Ray metrics (Prometheus names get Ray's `ray_` prefix).

    rayfin_desk_request_rate{desk}            actual request rate (requests/s)
    rayfin_desk_request_rate_forecast{desk}   quantile forecast over the lead time
    rayfin_pool_demand_gpus{pool}             actual GPU demand (+ mapped serving load)
    rayfin_pool_demand_gpus_forecast{pool}    quantile forecast over the lead time
    rayfin_pool_provisioned_gpus{pool}        GPUs requested from Ray's autoscaler
    rayfin_pool_nodes_draining{pool}, rayfin_pool_node_hours_released{pool},
    rayfin_pool_energy_saved_kwh{pool}        drain and what it gave back (record_drain)

Call from inside a Ray worker or driver (the controller loop); gauges are made on first use.
"""
from __future__ import annotations

from typing import Any, Mapping

_GAUGES: dict[str, Any] = {}


def _gauge(name: str, description: str, tag: str) -> Any:
    g = _GAUGES.get(name)
    if g is None:
        from ray.util.metrics import Gauge

        g = _GAUGES[name] = Gauge(name, description=description, tag_keys=(tag,))
    return g


def record_desk_forecasts(actual: Mapping[str, float], forecast: Mapping[str, float]) -> None:
    """Record each desk's actual and forecast request rate."""
    a = _gauge("rayfin_desk_request_rate", "Desk serving request rate now (requests/s).", "desk")
    f = _gauge("rayfin_desk_request_rate_forecast",
               "Desk request rate forecast (quantile peak over the lead time).", "desk")
    for desk, v in actual.items():
        a.set(float(v), tags={"desk": desk})
    for desk, v in forecast.items():
        f.set(float(v), tags={"desk": desk})


def record_capacity(request: Any) -> None:
    """Record a `CapacityRequest`: per desk and per pool, actual, forecast and provisioned."""
    record_desk_forecasts({d: v.actual for d, v in request.desks.items()},
                          {d: v.forecast for d, v in request.desks.items()})
    a = _gauge("rayfin_pool_demand_gpus", "Pool GPU demand now (running + queued + serving).", "pool")
    f = _gauge("rayfin_pool_demand_gpus_forecast", "Pool GPU demand forecast over the lead time.", "pool")
    p = _gauge("rayfin_pool_provisioned_gpus", "GPUs requested ahead of demand from Ray's autoscaler.", "pool")
    for pool, plan in request.pools.items():
        a.set(float(plan.demand_gpus), tags={"pool": pool})
        f.set(float(plan.forecast_gpus), tags={"pool": pool})
        p.set(float(plan.gpus), tags={"pool": pool})


def record_drain(plan: Any, account: Any) -> None:
    """Record a `DrainPlan` and a `ReleaseAccount` (rayfin.autoscale.drain), per pool:

        rayfin_pool_nodes_draining{pool}          nodes taking no new work (draining or released)
        rayfin_pool_node_hours_released{pool}     node-hours given back so far
        rayfin_pool_energy_saved_kwh{pool}        idle energy those nodes would have drawn
    """
    d = _gauge("rayfin_pool_nodes_draining", "Nodes of the pool being drained or released.", "pool")
    h = _gauge("rayfin_pool_node_hours_released", "Node-hours given back by draining, so far.", "pool")
    e = _gauge("rayfin_pool_energy_saved_kwh", "Idle energy not drawn by released nodes (kWh), so far.", "pool")
    draining: dict[str, int] = {}
    for v in plan.verdicts:
        draining.setdefault(v.pool, 0)
        if v.node in plan.draining:
            draining[v.pool] += 1
    for pool, n in draining.items():
        d.set(float(n), tags={"pool": pool})
    for pool in set(account.node_s) | set(draining):
        h.set(account.node_hours(pool), tags={"pool": pool})
        e.set(account.energy_kwh(pool), tags={"pool": pool})
