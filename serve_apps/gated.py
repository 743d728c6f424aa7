"""A model replica that is its own gateway: auth, quota, validation and batched inference in one.

    rayfin-gated-<name>   GatedModel, route_prefix "/v1/models/<name>:predict"

Serve's ingress (HAProxy, or Serve's Python proxy; serve_apps/ingress.py) matches a route prefix
exactly or followed by '/', so every model gets its own application at its predict path and the
ingress hands the HTTP request straight to a replica that
checks the desk's credential, access and quota (`GatewayCore`, the same code and status codes
as the gateway's), parses the body and joins the `@serve.batch` of the model (inherited from
`ModelServer`), with no second Serve hop. The desk budget is still one budget: every gated
replica of every model holds a local share and leases the rest from the one `QuotaBroker` (in
the gateway application), and in-flight permits are local per replica, so an admitted request
never waits on the broker for a permit. The gateway application at "/" keeps `GET /v1/models`,
`GET /v1/quota`, `GET /healthz` and answers everything else (404 for an unknown model).
"""
from __future__ import annotations

import functools
from typing import Any

from ray import serve
from starlette.requests import Request

from rayfin.telemetry.serving import count_edge_refusal, request_span
from serve_apps import edge_asgi
from serve_apps.edge import EdgeFilter
from serve_apps.gateway import GatewayCore, _error
from serve_apps.model_server import ModelServer
from serve_apps.quota import QuotaSpec

BROKER_DEPLOYMENT = "QuotaBroker"


def predict_route(model: str) -> str:
    """The route prefix of a model's gated application (also its only path)."""
    return f"/v1/models/{model}:predict"


@serve.deployment(ray_actor_options={"num_cpus": 0})
class GatedModel(ModelServer.func_or_class):
    def __init__(self, gate_spec: dict, spec: dict) -> None:
        super().__init__(spec)
        self.route = predict_route(self.name)
        self._broker_app = gate_spec["broker_app"]
        self._broker = None
        ctx = serve.get_replica_context()
        self.core = GatewayCore(gate_spec, call_broker=self._call_broker, call_model=self._call_local,
                                replica_id=ctx.replica_id.unique_id, permits_local=True)
        if gate_spec.get("edge_in_replica"):
            # HAProxy ingress: this replica serves HTTP itself, and Serve wraps its HTTP server in
            # rayfin's edge middleware (serve_apps/edge_asgi.py), which sheds with this filter
            # before Serve's request handling; everything it passes still meets the gate above.
            edge = EdgeFilter({d: QuotaSpec(**q) for d, q in gate_spec["quotas"].items()},
                              self.core.policy.authenticate)
            edge_asgi.register(self.route, edge, functools.partial(count_edge_refusal, self.name), where="replica")

    async def _call_broker(self, requests):
        if self._broker is None:
            self._broker = serve.get_deployment_handle(BROKER_DEPLOYMENT, app_name=self._broker_app)
        return await self._broker.lease.remote(list(requests))

    async def _call_local(self, model: str, rows: list[list[float]]) -> dict:
        return dict(await self.predict_batch(rows))

    async def __call__(self, request: Request) -> Any:
        with request_span(self.name) as span:
            scope = request.scope            # not request.url: that builds a URL object per request
            if scope["path"] != self.route:
                response = _error(404, "not_found", f"no such path {scope['path']!r}")
            elif scope["method"] != "POST":
                response = _error(405, "method_not_allowed", "use POST", headers={"Allow": "POST"})
            else:
                response = await self.core.predict(self.name, request, span=span)
            desk = span.desk if span.desk != "unknown" else None
            if response.status_code == 200:
                span.finish(status=200, desk=desk)      # no need to parse our own answer back
            else:
                span.finish(response, desk=desk)
            return response

