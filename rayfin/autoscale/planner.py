"""Capacity planner: GPUs to hold ready per desk pool, one lead time ahead of forecast demand.

One call per controller cycle, pure (no Ray, clock passed in):

    request, state = step(state, Observations(pool_demand_gpus={...}, desk_request_rate={...}),
                          now, settings)

For every pool (1) the pool's demand forecaster and each desk's request-rate forecaster learn
the new observation; (2) the pool's load is its GPU demand plus, for desks that map serving
load to the pool, rate * gpus_per_request_per_s; (3) the forecast load is the `quantile` peak
over the next `lead_time_s` (a node's start time), times (1 + headroom); (4) the GPU count is
`decide_replicas` over one-bundle units: up at once, down only after the forecast stayed lower
for `release_after_s`; (5) the pool's request is that many bundles. Pools not listed under
`autoscaling.pools` are forecast and reported but get no request.

The request is a value: `CapacityRequest.bundles()` is what the controller's adapter
(rayfin.controller.autoscale_ray) passes to
`ray.autoscaler.sdk.request_resources` (one global request for all pools, as Ray keeps only
the latest). The state is a value too: `to_dict()` is JSON-safe for the controller to persist.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from rayfin.autoscale.config import AutoscalingSettings, PoolAutoscaling
from rayfin.autoscale.replicas import ReplicaParams, decide_replicas
from rayfin.forecast import ForecastState, init, predict, update

DEFAULT_LEAD_S = 180.0


@dataclass(frozen=True)
class Observations:
    """What the controller saw this cycle.

    pool_demand_gpus: GPUs the pool's work wants now (running + queued).
    desk_request_rate: each desk's serving request rate (requests/s) now.
    floor_gpus: GPUs the pool must hold ready whatever the forecast says, e.g. the serving
        reservations of the next quota window from a lead time before it starts
        (rayfin.controller.market_clock.prewarm_floor). Not learnt by the forecaster.
    """

    pool_demand_gpus: Mapping[str, float] = field(default_factory=dict)
    desk_request_rate: Mapping[str, float] = field(default_factory=dict)
    floor_gpus: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PoolPlan:
    pool: str
    gpus: float                              # GPUs requested ahead of demand (0: no request)
    bundles: tuple[dict[str, float], ...]
    demand_gpus: float                       # actual load now (GPU demand + mapped serving load)
    forecast_gpus: float                     # quantile peak over the lead time
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class DeskForecast:
    desk: str
    actual: float                            # request rate now
    forecast: float                          # quantile peak over the lead time
    median: float                            # median forecast for the same horizon


@dataclass(frozen=True)
class CapacityRequest:
    pools: Mapping[str, PoolPlan]
    desks: Mapping[str, DeskForecast]
    now: float

    def bundles(self) -> list[dict[str, float]]:
        """All pools' bundles, pools in name order: the argument of request_resources."""
        return [dict(b) for p in sorted(self.pools) for b in self.pools[p].bundles]

    @property
    def reasons(self) -> dict[str, tuple[str, ...]]:
        return {p: plan.reasons for p, plan in self.pools.items()}

    @property
    def gpus(self) -> dict[str, float]:
        return {p: plan.gpus for p, plan in self.pools.items()}


@dataclass(frozen=True)
class AutoscaleState:
    """Forecasters and hysteresis per pool/desk. Treat as immutable: `step` returns a new one."""

    forecasts: Mapping[str, ForecastState] = field(default_factory=dict)   # "pool/x", "desk/y"
    requested: Mapping[str, int] = field(default_factory=dict)             # bundles per pool
    below_since: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"forecasts": {k: v.to_dict() for k, v in self.forecasts.items()},
                "requested": dict(self.requested), "below_since": dict(self.below_since)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "AutoscaleState":
        data = data or {}
        return cls(forecasts={k: ForecastState.from_dict(v) for k, v in data.get("forecasts", {}).items()},
                   requested={k: int(v) for k, v in data.get("requested", {}).items()},
                   below_since={k: float(v) for k, v in data.get("below_since", {}).items()})


def _learn(forecasts: dict[str, ForecastState], key: str, now: float, value: float,
           settings: AutoscalingSettings) -> ForecastState:
    fs = forecasts.get(key)
    if fs is None:
        fs = init(settings.forecast.params())
    fs = update(fs, now, float(value))
    forecasts[key] = fs
    return fs


def _lead(settings: AutoscalingSettings, pool: str | None) -> float:
    cfg = settings.pools.get(pool) if pool else None
    return cfg.lead_time_s if cfg else DEFAULT_LEAD_S


def step(state: AutoscaleState, observations: Observations, now: float,
         settings: AutoscalingSettings) -> tuple[CapacityRequest, AutoscaleState]:
    """One planning cycle; see the module docstring. Never raises for unknown pools or desks."""
    forecasts = dict(state.forecasts)
    desks: dict[str, DeskForecast] = {}
    serving_now: dict[str, float] = {}
    serving_fc: dict[str, float] = {}
    for desk, rate in sorted(observations.desk_request_rate.items()):
        fs = _learn(forecasts, f"desk/{desk}", now, rate, settings)
        dcfg = settings.desks.get(desk)
        pred = predict(fs, _lead(settings, dcfg.pool if dcfg else None), settings.quantile, now=now)
        desks[desk] = DeskForecast(desk, float(rate), pred.peak, pred.peak_median)
        if dcfg and dcfg.pool and dcfg.gpus_per_request_per_s > 0:
            k = dcfg.gpus_per_request_per_s
            serving_now[dcfg.pool] = serving_now.get(dcfg.pool, 0.0) + k * rate
            serving_fc[dcfg.pool] = serving_fc.get(dcfg.pool, 0.0) + k * pred.peak
    pools = sorted(set(observations.pool_demand_gpus) | set(settings.pools) | set(serving_now)
                   | set(observations.floor_gpus))
    plans: dict[str, PoolPlan] = {}
    requested = dict(state.requested)
    below = dict(state.below_since)
    for pool in pools:
        demand = float(observations.pool_demand_gpus.get(pool, 0.0))
        fs = _learn(forecasts, f"pool/{pool}", now, demand, settings)
        pcfg = settings.pools.get(pool)
        pred = predict(fs, _lead(settings, pool), settings.quantile, now=now)
        actual = demand + serving_now.get(pool, 0.0)
        forecast = pred.peak + serving_fc.get(pool, 0.0)
        floor = float(observations.floor_gpus.get(pool, 0.0))
        forecast = max(forecast, floor)
        if pcfg is None or not settings.enabled:
            why = "autoscaling disabled" if not settings.enabled else "pool not under autoscaling.pools"
            plans[pool] = PoolPlan(pool, 0.0, (), actual, forecast, (f"no request: {why}",))
            requested.pop(pool, None)
            below.pop(pool, None)
            continue
        plans[pool], n, since = _plan_pool(pool, pcfg, actual, forecast, requested.get(pool, 0),
                                           below.get(pool), now, settings, floor)
        requested[pool] = n
        if since is None:
            below.pop(pool, None)
        else:
            below[pool] = since
    new_state = replace(state, forecasts=forecasts, requested=requested, below_since=below)
    return CapacityRequest(pools=plans, desks=desks, now=now), new_state


def _plan_pool(pool: str, cfg: PoolAutoscaling, actual: float, forecast: float, current: int,
               below_since: float | None, now: float, settings: AutoscalingSettings,
               floor: float = 0.0) -> tuple[PoolPlan, int, float | None]:
    bundle = cfg.bundle_for(pool)
    per = float(bundle["GPU"])
    factor = 1.0 + cfg.headroom
    params = ReplicaParams(
        load_per_replica=per,
        min_replicas=math.ceil(cfg.min_gpus / per - 1e-9),
        max_replicas=math.floor(cfg.max_gpus / per + 1e-9) if cfg.max_gpus is not None else 1_000_000,
        downscale_hold_s=settings.release_after_s,
        downscale_band=0.0,
        slack=cfg.slack,
    )
    d = decide_replicas(actual * factor, forecast * factor, current, now, params, below_since)
    reasons = (f"lead {cfg.lead_time_s:g}s, P{settings.quantile * 100:g} forecast {forecast:.3g} GPUs, "
               f"demand now {actual:.3g} GPUs", *d.reasons)
    if floor > 0:
        reasons = (*reasons, f"floor {floor:g} GPUs held ready (next quota window's serving reservations)")
    plan = PoolPlan(pool, d.replicas * per, tuple(dict(bundle) for _ in range(d.replicas)), actual, forecast, reasons)
    return plan, d.replicas, d.below_since
