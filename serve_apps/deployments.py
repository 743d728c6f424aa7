"""The Serve deployments of the serving stack: thin shells around admission (serve_apps/admission.py).

    GatedModel   one per model application, route "/v1/models/<name>:predict": the ingress
                 hands the HTTP request straight to this replica, which runs `Admission` and
                 joins the `@serve.batch` of the model (inherited from `ModelServer`), with no
                 second Serve hop.
    QuotaBroker  one replica, in the gateway application: every desk's central budget, leased
                 to the GatedModel replicas in small chunks, so it sees a few calls per second
                 per desk and replica, not one per request. Serve restarts it if it dies; a
                 fresh broker starts every desk with a full central bucket (at most one extra
                 central burst), and replicas live on their own shares while it is unreachable.
                 With `serve.edge: haproxy` it also pushes the desks' rates to the running
                 HAProxy when it starts: a redeploy with changed quotas builds a new broker, so
                 the edge follows the change without a restart (haproxy_edge.apply_rates).
    Gateway      the gateway application at "/": GET /v1/models, GET /v1/quota, GET /healthz,
                 and a predict request for a model no application serves (404, or 503 while its
                 application is down), with the same checks and status codes as GatedModel.

No `from __future__ import annotations` here: FastAPI reads the route methods' annotations
(`request: Request`) at import, and strings it cannot resolve become query parameters.
"""
import functools
import logging
import os
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from ray import serve
from starlette.requests import Request as StarletteRequest

from rayfin.config import ServeModelConfig
from rayfin.telemetry.metrics import MemoryMetrics
from rayfin.telemetry.serving import count_edge_refusal, request_span, serving_metrics
from serve_apps import edge_asgi, haproxy_edge
from serve_apps.admission import (Admission, AdmissionSettings, LocalBroker, error_response, replicas_of)
from serve_apps.edge import EdgeFilter
from serve_apps.model_server import ModelServer
from serve_apps.priority import AtNiceness
from serve_apps.quota import Grant, LeaseRequest

BROKER_DEPLOYMENT = "QuotaBroker"
log = logging.getLogger(__name__)


def predict_route(model: str) -> str:
    """The route prefix of a model's application (also its only path)."""
    return f"/v1/models/{model}:predict"


def _finish(span: Any, response: Any) -> Any:
    desk = span.desk if span.desk != "unknown" else None
    if response.status_code == 200:
        span.finish(status=200, desk=desk)      # no need to parse our own answer back
    else:
        span.finish(response, desk=desk)
    return response


@serve.deployment(ray_actor_options={"num_cpus": 0})
class GatedModel(ModelServer.func_or_class):
    def __init__(self, settings: AdmissionSettings, model: ServeModelConfig) -> None:
        super().__init__(model, niceness=settings.replica_niceness)
        self.route = predict_route(self.name)
        # The broker's handle is made here, not at the first lease: `get_deployment_handle` waits on
        # Serve's controller (`ray.get`, and the controller runs at Ray's niceness 15), which on the
        # request loop stalled every request of this replica for up to 2 s under load at its
        # first lease. Not checked against the controller: the gateway application holding the
        # broker may be deployed after this one.
        self._broker = serve.get_deployment_handle(BROKER_DEPLOYMENT, app_name=settings.broker_app,
                                                   _check_exists=False)
        ctx = serve.get_replica_context()
        self.admission = Admission(settings, replica_id=ctx.replica_id.unique_id, call_broker=self._call_broker,
                                   call_model=self._call_local)
        if settings.edge_in_replica:
            # HAProxy ingress: this replica serves HTTP itself, and Serve wraps its HTTP server in
            # rayfin's edge middleware (serve_apps/edge_asgi.py), which sheds with this filter
            # before Serve's request handling; everything it passes still meets admission.
            edge = EdgeFilter(settings.quotas, settings.access.authenticate)
            edge_asgi.register(self.route, edge, functools.partial(count_edge_refusal, self.name), where="replica")

    async def _call_broker(self, requests: list[LeaseRequest]) -> list[Grant]:
        return await self._broker.lease.remote(list(requests))

    async def _call_local(self, model: str, rows: list[list[float]]) -> dict:
        return dict(await self.predict_batch(rows))

    async def __call__(self, request: StarletteRequest) -> Any:
        with request_span(self.name) as span:
            scope = request.scope            # not request.url: that builds a URL object per request
            if scope["path"] != self.route:
                response = error_response(404, "not_found", f"no such path {scope['path']!r}")
            elif scope["method"] != "POST":
                response = error_response(405, "method_not_allowed", "use POST", headers={"Allow": "POST"})
            else:
                response = await self.admission.predict(self.name, request, span=span)
            return _finish(span, response)


def push_edge_rates(settings: AdmissionSettings,
                    call: haproxy_edge.AdminCall = haproxy_edge.admin_call) -> "haproxy_edge.EdgeUpdate | None":
    """The desks' rates to the HAProxy edge: at the address the config gives (`serve.edge_runtime`,
    KubeRay's head-pod sidecar), else to the HAProxies Serve runs on this node."""
    if settings.haproxy_edge is None:
        return None
    if settings.edge_admin and settings.edge_map:
        return haproxy_edge.apply_rates_at(settings.edge_admin, settings.edge_map, settings.haproxy_edge, call=call)
    return haproxy_edge.apply_rates_here(settings.haproxy_edge, call=call)


# How often the broker reads the HAProxy edge's counters into metrics. Serve reloads HAProxy as a
# new process when its backends change, and the new one starts with an empty table: what the old
# one counted since the last read is lost, so the reads are frequent.
EDGE_POLL_S = 2.0


def edge_sockets(settings: AdmissionSettings) -> list[str]:
    """The runtime API addresses of the HAProxy edge the broker watches: the configured one
    (`serve.edge_runtime`), else every HAProxy Serve runs on this node."""
    if settings.edge_admin:
        return [settings.edge_admin]
    base = os.environ.get(haproxy_edge.SOCKET_ENV)
    return haproxy_edge.admin_sockets(base) if base else []


def watch_edge(settings: AdmissionSettings, totals: MemoryMetrics,
               interval_s: float = EDGE_POLL_S) -> threading.Thread:
    """A daemon thread: every `interval_s`, the edge's passed and refused counts per desk into
    `rayfin_serve_edge_requests` (its refusals reach no replica, so nothing else counts them),
    on this process's metrics and on `totals` (what this broker read since it started). A read
    that fails is logged once and retried next time."""
    desks = dict(settings.edge_desks or {})
    failed: dict[str, str] = {}
    poller = haproxy_edge.EdgeCountsPoller(lambda: haproxy_edge.edge_counts(edge_sockets(settings), failed=failed))

    def run() -> None:
        failing = False
        while True:
            failed.clear()
            try:
                delta = poller.poll()
                for sink in (serving_metrics(), totals):
                    haproxy_edge.record_edge_counts(delta, desks, sink)
                if failed and not failing:
                    log.warning("HAProxy edge counters unreadable on %s", failed)
                failing = bool(failed)
            except Exception as exc:  # noqa: BLE001 - metrics must not end the broker
                if not failing:
                    log.warning("HAProxy edge counters unreadable: %s", exc)
                failing = True
            time.sleep(interval_s)

    t = threading.Thread(target=run, name="rayfin-edge-counters", daemon=True)
    t.start()
    return t


# With `serve.edge_runtime.broker_on_head` the deploy code places it on the head node (HEAD_RESOURCE).
HEAD_RESOURCE = "node:__internal_head__"


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class QuotaBroker(AtNiceness):
    def __init__(self, settings: AdmissionSettings) -> None:
        self.hold_niceness(settings.replica_niceness)      # every replica's leases go through it
        self._broker = LocalBroker.from_settings(settings)
        self.edge_update = None
        self._edge_totals = MemoryMetrics()
        if settings.haproxy_edge is not None:
            self.edge_update = push_edge_rates(settings)
            if self.edge_update is not None and not self.edge_update.ok:
                # The map file is rewritten either way (a reload reads it); admission still holds.
                log.warning("HAProxy edge not updated on %s", self.edge_update.failed)
            self._edge_watch = watch_edge(settings, self._edge_totals)

    async def lease(self, requests: list[LeaseRequest]) -> list[Grant]:
        return self._broker.lease(requests)

    async def snapshot(self) -> dict:
        return self._broker.snapshot()

    async def edge_counts(self) -> dict:
        """{desk: {"passed": n, "refused": n}}: what the HAProxy edge did for each desk since this
        broker started, as its watcher read it (every EDGE_POLL_S); {} without the edge."""
        out: dict[str, dict[str, int]] = {}
        for (_, tags), n in list(self._edge_totals.values.items()):   # one C-level copy: the watcher writes
            t = dict(tags)
            out.setdefault(t["desk"], {"passed": 0, "refused": 0})[t["outcome"]] = int(n)
        return out

    async def desk_request_counts(self) -> dict:
        """{"since": wall time, "counts": {desk: requests admitted}}: read by the controller's
        capacity loop once per forecast bin (LocalBroker.request_counts)."""
        return self._broker.request_counts()


app = FastAPI(title="rayfin gateway", docs_url=None, redoc_url=None, openapi_url=None)


async def _no_broker(requests: Any) -> list:
    raise RuntimeError("the gateway admits nothing")


async def _no_model(model: str, rows: Any) -> dict:
    raise RuntimeError("the gateway serves no model")


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Gateway(AtNiceness):
    def __init__(self, settings: AdmissionSettings, broker: Any) -> None:
        self.settings = settings
        self.hold_niceness(settings.replica_niceness)
        self._broker = broker
        # Only the access checks run here (`route_only`, `list_models`): nothing is admitted.
        ctx = serve.get_replica_context()
        self.admission = Admission(settings, replica_id=ctx.replica_id.unique_id, call_broker=_no_broker,
                                   call_model=_no_model)

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "time": time.time()}

    @app.get("/v1/models")
    async def models(self, request: Request):
        return self.admission.list_models(request)

    @app.post("/v1/models/{model}:predict")
    async def predict(self, model: str, request: Request):
        with request_span(model) as span:
            return _finish(span, self.admission.route_only(model, request, span))

    @app.get("/v1/quota")
    async def quota(self, request: Request):
        """The calling desk's quota and the broker's central view of it (for operators and tests)."""
        desk = self.admission.authenticate(request)
        if desk is None:
            return error_response(401, "unauthorized", "missing or unknown desk credential")
        snapshot = await self._broker.snapshot.remote()
        return {"desk": desk, "broker": snapshot.get(desk), "quota": vars(self.settings.quotas[desk]),
                "admitting_replicas": replicas_of(self.settings.replicas, desk)}
