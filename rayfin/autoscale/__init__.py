"""Predictive autoscaling: capacity ahead of forecast demand, per desk pool.

Controller-facing API (pure; the controller persists `state.to_dict()`):

    settings = parse_autoscaling(config.autoscaling)
    state = AutoscaleState.from_dict(persisted)             # or AutoscaleState()
    request, state = step(state, Observations(pool_demand_gpus={"risk": 6.0},
                                              desk_request_rate={"fx": 40.0}), now, settings)
    adapter.apply(request)            # rayfin.controller.autoscale_ray.RayAutoscalerAdapter: request_resources
    record_capacity(request)          # rayfin.controller.autoscale_ray: forecast vs actual gauges

    plan = plan_drain(nodes, {pool: plan.forecast_gpus for pool, plan in request.pools.items()},
                      DrainParams(), now)                    # which nodes to drain / release
    core.set_draining(islands on plan.draining nodes)       # the scheduler places nothing there
"""
from rayfin.autoscale.config import (
    AutoscalingSettings,
    DeskAutoscaling,
    ForecastSettings,
    PoolAutoscaling,
    parse_autoscaling,
)
from rayfin.autoscale.drain import (
    DrainAction,
    DrainParams,
    DrainPlan,
    DrainReason,
    NodeLoad,
    NodeVerdict,
    ReleaseAccount,
    account,
    plan_drain,
)
from rayfin.autoscale.planner import (
    AutoscaleState,
    CapacityRequest,
    DeskForecast,
    Observations,
    PoolPlan,
    step,
)
from rayfin.autoscale.replicas import ReplicaDecision, ReplicaParams, decide_replicas

__all__ = [
    "AutoscaleState", "AutoscalingSettings", "CapacityRequest", "DeskAutoscaling", "DeskForecast",
    "DrainAction", "DrainParams", "DrainPlan", "DrainReason", "NodeLoad", "NodeVerdict", "ReleaseAccount",
    "account", "plan_drain",
    "ForecastSettings", "Observations", "PoolAutoscaling", "PoolPlan", "ReplicaDecision",
    "ReplicaParams", "decide_replicas", "parse_autoscaling", "step",
]
