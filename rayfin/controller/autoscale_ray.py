"""The capacity planner's two seams to Ray, beside the controller that drives them: the request
to Ray's cluster autoscaler, and the forecast gauges. The planner itself (rayfin.autoscale)
stays pure and imports no Ray; the controller actor (actor.py) hands these to its
`CapacityLoop`.

`RayAutoscalerAdapter.apply(request)` passes `request.bundles()` to
`ray.autoscaler.sdk.request_resources` when they differ from what was last sent (Ray keeps
only the latest request, cluster-wide, so all pools go in one call); `release()` clears it
with `request_resources(bundles=[])`. Tests inject `request_fn`; Ray's exceptions become
`AutoscalerUnavailable`.

Gauges (Prometheus names get Ray's `ray_` prefix), made on first use, from inside a Ray worker
or driver (the controller loop):

    rayfin_desk_request_rate{desk}            actual request rate (requests/s)
    rayfin_desk_request_rate_forecast{desk}   quantile forecast over the lead time
    rayfin_pool_demand_gpus{pool}             actual GPU demand (+ mapped serving load)
    rayfin_pool_demand_gpus_forecast{pool}    quantile forecast over the lead time
    rayfin_pool_provisioned_gpus{pool}        GPUs requested from Ray's autoscaler
    rayfin_pool_nodes_draining{pool}, rayfin_pool_node_hours_released{pool},
    rayfin_pool_energy_saved_kwh{pool}        drain and what it gave back (record_drain)

`read_desk_request_counts()` is the loop's third seam, to Ray Serve: the quota broker's
admitted-request counters per desk (serve_apps' `QuotaBroker.desk_request_counts`), from the
gateway application as `rayfin up` names it or as the RayService does; None where neither runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ray.autoscaler.sdk import request_resources
from ray.util.metrics import Gauge

from rayfin.autoscale.drain import DrainPlan, ReleaseAccount
from rayfin.autoscale.planner import CapacityRequest
from rayfin.controller.capacity import DeskCounts
from rayfin.errors import RayfinError

RequestFn = Callable[..., None]


class AutoscalerUnavailable(RayfinError):
    """request_resources failed; the previous request (if any) still stands in Ray."""

    fields = ("bundles", "reason")

    def __init__(self, message: str | None = None, *, bundles: int = 0, reason: str = ""):
        super().__init__(message or (f"could not send {bundles} bundle(s) to Ray's autoscaler: {reason}; "
                                     "to fix: check that Ray is initialised and the cluster was started with "
                                     "an autoscaling config (capacity ahead of demand needs one)"),
                         bundles=bundles, reason=reason)


@dataclass(frozen=True)
class ApplyResult:
    sent: bool                     # False: same bundles as last time, nothing sent
    bundles: int
    gpus: dict[str, float]


class RayAutoscalerAdapter:
    def __init__(self, request_fn: RequestFn | None = None) -> None:
        self._request_fn: RequestFn = request_fn or request_resources
        self._last: list[dict[str, float]] | None = None

    def _send(self, bundles: list[dict[str, float]]) -> None:
        try:
            self._request_fn(bundles=bundles)
        except Exception as exc:  # noqa: BLE001 - Ray raises several types; map them at the seam
            raise AutoscalerUnavailable(bundles=len(bundles), reason=f"{type(exc).__name__}: {exc}") from exc
        self._last = bundles

    def apply(self, request: CapacityRequest) -> ApplyResult:
        bundles = request.bundles()
        if bundles == self._last:
            return ApplyResult(False, len(bundles), request.gpus)
        self._send(bundles)
        return ApplyResult(True, len(bundles), request.gpus)

    def release(self) -> None:
        """Withdraw every request (e.g. at controller shutdown)."""
        self._send([])


# ---- forecast vs actual as Ray metrics --------------------------------------------------------

_GAUGES: dict[str, Any] = {}


def _gauge(name: str, description: str, tag: str) -> Any:
    g = _GAUGES.get(name)
    if g is None:
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


def record_capacity(request: CapacityRequest) -> None:
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


def record_drain(plan: DrainPlan, account: ReleaseAccount) -> None:
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


__all__ = ["AutoscalerUnavailable", "ApplyResult", "RayAutoscalerAdapter", "read_desk_request_counts", "record_capacity",
           "record_desk_forecasts", "record_drain"]


# The gateway application that holds the quota broker: as serve_apps.deploy (`rayfin up`) and as
# rayfin.kuberay's RayService name it. Strings, not imports: serve_apps is a layer above this one.
BROKER_APPS = ("rayfin-gateway", "gateway")
BROKER_DEPLOYMENT = "QuotaBroker"


_broker_handles: dict[str, Any] = {}


def _broker_handle(app: str) -> Any:
    """One handle per gateway application, kept across bins. Its router runs on Serve's own loop
    thread: the controller's cycle thread has no event loop, and with
    RAY_SERVE_THROUGHPUT_OPTIMIZED (serve_apps/ingress.py) a handle would otherwise need one."""
    from ray import serve

    handle = _broker_handles.get(app)
    if handle is None:
        handle = serve.get_deployment_handle(BROKER_DEPLOYMENT, app_name=app)
        if not handle.is_initialized:
            handle._init(_run_router_in_separate_loop=True)
        _broker_handles[app] = handle
    return handle


def read_desk_request_counts(timeout_s: float = 2.0) -> DeskCounts | None:
    """The broker's admitted-request counts per desk; None when Serve or the gateway is not up.
    Raises what Serve raises for a broker that does not answer (the loop logs it, rates empty)."""
    from ray import serve

    try:
        apps = serve.status().applications
    except Exception:  # noqa: BLE001 - no Serve instance on this cluster: no serving, no rates
        return None
    for name in BROKER_APPS:
        app = apps.get(name)
        if app is None or BROKER_DEPLOYMENT not in app.deployments:
            continue
        try:
            raw = _broker_handle(name).desk_request_counts.remote().result(timeout_s=timeout_s)
        except Exception:
            _broker_handles.pop(name, None)      # a fresh handle next bin (the app may be redeployed)
            raise
        return DeskCounts(since=float(raw["since"]), counts={str(d): int(n) for d, n in raw["counts"].items()})
    return None
