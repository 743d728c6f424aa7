"""Forecast vs actual as Ray metrics (Prometheus names get Ray's `ray_` prefix).

    rayfin_desk_request_rate{desk}            actual request rate (requests/s)
    rayfin_desk_request_rate_forecast{desk}   quantile forecast over the lead time
    rayfin_pool_demand_gpus{pool}             actual GPU demand (+ mapped serving load)
    rayfin_pool_demand_gpus_forecast{pool}    quantile forecast over the lead time
    rayfin_pool_provisioned_gpus{pool}        GPUs requested from Ray's autoscaler

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
