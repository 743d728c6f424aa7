"""The gateway: a FastAPI ingress that authenticates desks, applies their quotas, calls models.

    POST /v1/models/{model}:predict   Authorization: Bearer <desk token>, JSON body
    GET  /v1/models                   what the calling desk may use
    GET  /healthz                     liveness (no credential)

Checks run cheapest first, and a request refused by quota never has its body parsed:
401 credential -> 404 model -> 403 access -> 413 declared size -> 429 quota -> 413 actual size
-> 422 body -> model call. Client mistakes are always 4xx; 5xx only means a model is down.
"""

import asyncio
import logging
import math
import time
from typing import Any

from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect
from fastapi.responses import JSONResponse, Response
from pydantic_core import to_json
from pydantic import ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError

from rayfin.telemetry.serving import request_span
from serve_apps.access import AccessPolicy, ModelEntry
from serve_apps.edge_asgi import bearer_of, desk_of, header_value
from serve_apps.gate import QuotaGate, replicas_of as spec_replicas
from serve_apps.quota import Limit, QuotaSpec, Refusal
from serve_apps.schemas import REQUEST_SCHEMAS, rows_of

log = logging.getLogger(__name__)

app = FastAPI(title="rayfin gateway", docs_url=None, redoc_url=None, openapi_url=None)


def _error(status: int, error: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, **extra}, status_code=status, headers=headers)


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "body"


class PredictionResponse(Response):
    """A 200 with a prediction: the JSON Starlette's JSONResponse would send (compact, UTF-8, same
    keys, values and headers; a tiny float may be spelled `1e-7` where `json.dumps` writes
    `1e-07`), rendered by pydantic-core (about a seventh of `json.dumps`'s time) with the headers
    built directly. Every admitted request ends here. Only finite predictions reach it
    (`_call_model` answers 422 otherwise)."""

    media_type = "application/json"

    def __init__(self, content: dict, *headers: tuple[bytes, bytes]) -> None:
        self.status_code = 200
        self.background = None
        self.body = to_json(content)
        self.raw_headers = [(b"content-length", str(len(self.body)).encode()),
                            (b"content-type", b"application/json"), *headers]


def _refused(refusal: Refusal) -> JSONResponse:
    return JSONResponse(refusal.body(), status_code=429, headers={"Retry-After": refusal.retry_after_header()})


class GatewayCore:
    """Everything the gateway does, independent of how it is hosted (Serve replica or a test)."""

    def __init__(self, spec: dict, *, call_broker, call_model, replica_id: str, permits_local: bool = False) -> None:
        self.policy = AccessPolicy.from_dict(spec["access"])
        self.max_body_bytes = int(spec["max_body_bytes"])
        self._call_model_fn = call_model  # async (model name, rows) -> result dict
        self.gate = QuotaGate({d: QuotaSpec(**q) for d, q in spec["quotas"].items()},
                              replicas=spec["replicas"], replica_id=replica_id, call_broker=call_broker,
                              sync_interval_s=float(spec.get("sync_interval_s", 0.25)),
                              local_fraction=float(spec.get("local_fraction", 0.0)),
                              permits_local=permits_local)
        self._background: asyncio.Task | None = None
        self._gateway_header = (b"x-rayfin-gateway", replica_id.encode("latin-1"))

    def _ensure_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(self.gate.run_background())

    def authenticate(self, request: Request) -> str | None:
        known, desk = desk_of(request.scope)   # the edge middleware of this process did already
        if known:
            return desk
        return self.policy.authenticate(bearer_of(request.scope.get("headers")))

    async def predict(self, model_name: str, request: Request, span=None) -> JSONResponse:
        response = await self._predict(model_name, request, span)
        # Which gateway replica answered: operators (and tests) see the budget is shared.
        if isinstance(response, dict):      # the common case: the header goes in with the response
            return PredictionResponse(response, self._gateway_header)
        response.raw_headers.append(self._gateway_header)
        return response

    def _check_access(self, model_name: str, request: Request, span=None):
        """401, then 404, then 403, in that order for every predict path. Returns
        (refusal, None, None) or (None, desk, model)."""
        desk = self.authenticate(request)
        if span is not None and desk is not None:
            span.desk = desk
        if desk is None:
            return _error(401, "unauthorized", "missing or unknown desk credential; send "
                          "`Authorization: Bearer <desk token>`", headers={"WWW-Authenticate": "Bearer"}), None, None
        model = self.policy.model(model_name)
        if model is None:
            return _error(404, "unknown_model", f"no model {model_name!r}; GET /v1/models lists yours"), None, None
        if not self.policy.may_call(desk, model):
            return _error(403, "forbidden", f"desk {desk!r} may not call model {model_name!r}; it is private "
                          f"to desk {model.owner!r} (ask for it to be added to your desk's `models`)"), None, None
        return None, desk, model

    async def _predict(self, model_name: str, request: Request, span=None) -> JSONResponse | dict:
        self._ensure_background()
        refused, desk, model = self._check_access(model_name, request, span)
        if refused is not None:
            return refused
        declared = header_value(request.scope.get("headers"), b"content-length")   # no Headers object
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return self._too_large(int(declared))
        refusal = await self.gate.acquire(desk)
        if refusal is not None:
            return _refused(refusal)
        gpu_seconds = 0.0
        try:
            body = await self._read_body(request)
            if body is None:
                return self._too_large(None)
            try:
                parsed = REQUEST_SCHEMAS[model.kind].model_validate_json(body)
            except ValidationError as exc:
                return _error(422, "invalid_body", "request body does not match the model's schema",
                              detail=[{"field": _field_path(e["loc"]), "message": e["msg"]}
                                      for e in exc.errors(include_url=False)])
            response, gpu_seconds = await self._call_model(model, desk, rows_of(parsed))
            return response
        finally:
            self.gate.release(desk, gpu_seconds)

    def route_only(self, model_name: str, request: Request, span=None) -> JSONResponse:
        """Gated layout: predictions are served by each model's own application, so a predict
        request reaching the gateway is for an unknown model (404), or for a model whose
        application is not serving its route right now (503). Same checks, same order."""
        refused, _, _ = self._check_access(model_name, request, span)
        if refused is not None:
            return refused
        return _error(503, "model_unavailable", f"model {model_name!r} is not serving right now",
                      headers={"Retry-After": "1"})

    async def _call_model(self, model: ModelEntry, desk: str,
                          rows: list[list[float]]) -> tuple[JSONResponse | dict, float]:
        try:
            result = await self._call_model_fn(model.name, rows)
        except BackPressureError as exc:
            retry = float(getattr(exc, "retry_after_s", None) or 1.0)
            refusal = Refusal(desk, Limit.MODEL_CAPACITY, retry,
                              f"model {model.name!r} is at capacity (queue full); retry after {retry:g}s")
            return _refused(refusal), 0.0
        except Exception as exc:  # noqa: BLE001 - a model failure is ours, not the client's
            log.exception("model %s failed", model.name)
            return _error(503, "model_unavailable", f"model {model.name!r} failed: {type(exc).__name__}",
                          headers={"Retry-After": "1"}), 0.0
        if not all(math.isfinite(v) for v in result.get("predictions", ())):
            # Valid-looking input the model cannot price (e.g. float32 under/overflow): the
            # client's data is outside the model's domain; never a 500 with a NaN in JSON.
            return _error(422, "outside_model_domain",
                          f"model {model.name!r} has no finite answer for these inputs; "
                          "check units and magnitudes"), float(result.get("gpu_seconds", 0.0))
        result["desk"] = desk
        return result, float(result.get("gpu_seconds", 0.0))

    async def _read_body(self, request: Request) -> bytes | None:
        chunks, size = [], 0
        while True:            # ASGI messages straight off `receive` (no stream generator per request)
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()      # as Starlette's request.stream(): no answer to a client gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, size: int | None) -> JSONResponse:
        got = f"{size} bytes" if size is not None else "more"
        return _error(413, "body_too_large", f"request body is {got}; the limit is {self.max_body_bytes} bytes "
                      "(send fewer inputs per request)", limit_bytes=self.max_body_bytes)

    def list_models(self, request: Request) -> JSONResponse | dict:
        desk = self.authenticate(request)
        if desk is None:
            return _error(401, "unauthorized", "missing or unknown desk credential",
                          headers={"WWW-Authenticate": "Bearer"})
        return {"desk": desk, "models": [{"name": m.name, "kind": m.kind, "owner": m.owner, "public": m.public}
                                         for m in self.policy.callable_models(desk)]}


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Gateway:
    def __init__(self, spec: dict, broker) -> None:
        self._broker = broker
        self._handles: dict[str, Any] = {}
        self._apps = dict(spec["model_apps"])
        self._batch_hop = bool(spec.get("batch_hop", False))
        # "gated": each model's own application serves its predict route (serve_apps.gated);
        # "hop": this gateway admits and forwards to the model application (the old layout).
        self._gated = spec.get("layout", "hop") == "gated"
        ctx = serve.get_replica_context()
        self.core = GatewayCore(spec, call_broker=self._call_broker, call_model=self._call_model,
                                replica_id=ctx.replica_id.unique_id)
        # The background sync loop starts with the first request, on the loop requests run on.

    async def _call_broker(self, requests):
        return await self._broker.lease.remote(list(requests))

    async def _call_model(self, model: str, rows: list[list[float]]) -> dict:
        if not self._batch_hop:
            return await self._handle(model).predict.remote(rows)
        outcome = await self._forward((model, rows))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    # Off by default (spec "batch_hop"): requests admitted at the same moment go to the model in
    # one handle call, so the hop is paid once per batch. Faster in short runs, but it left
    # requests stalled for seconds under CPU starvation on a 2-core machine; see docs/serving.md.
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0, max_concurrent_batches=4)
    async def _forward(self, items: list[tuple[str, list[list[float]]]]) -> list:
        by_model: dict[str, list[int]] = {}
        for i, (model, _) in enumerate(items):
            by_model.setdefault(model, []).append(i)
        out: list = [None] * len(items)

        async def one(model: str, idx: list[int]) -> None:
            try:
                results = await self._handle(model).predict_many.remote([items[i][1] for i in idx])
            except BaseException as exc:  # noqa: BLE001 - handed back to each caller
                results = [exc] * len(idx)
            for i, r in zip(idx, results):
                out[i] = r

        await asyncio.gather(*[one(m, idx) for m, idx in by_model.items()])
        return out

    def _handle(self, model: str):
        handle = self._handles.get(model)
        if handle is None:
            handle = serve.get_deployment_handle(model, app_name=self._apps[model])
            self._handles[model] = handle
        return handle

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "time": time.time()}

    @app.get("/v1/models")
    async def models(self, request: Request):
        return self.core.list_models(request)

    @app.post("/v1/models/{model}:predict")
    async def predict(self, model: str, request: Request):
        with request_span(model) as span:
            if self._gated:
                response = self.core.route_only(model, request, span)
            else:
                response = await self.core.predict(model, request, span=span)
            desk = span.desk if span.desk != "unknown" else None
            if response.status_code == 200:
                span.finish(status=200, desk=desk)
            else:
                span.finish(response, desk=desk)
            return response

    @app.get("/v1/quota")
    async def quota(self, request: Request):
        """The calling desk's view of its quota and this replica's lease (for operators and tests)."""
        desk = self.core.authenticate(request)
        if desk is None:
            return _error(401, "unauthorized", "missing or unknown desk credential")
        if self._gated:  # admission happens in the model replicas: show the broker's central view
            snapshot = await self._broker.snapshot.remote()
            return {"desk": desk, "broker": snapshot.get(desk), "quota": vars(self.core.gate.leases[desk].spec),
                    "admitting_replicas": spec_replicas(self.core.gate.replicas, desk)}
        lease = self.core.gate.leases[desk]
        now = time.monotonic()
        return {"desk": desk, "replica": self.core.gate.replica_id, "tokens": lease.tokens(now),
                "permits": lease.permits, "in_flight": lease.in_use,
                "gpu_seconds_used": lease.gpu_used_known + lease.gpu_unreported,
                "broker_calls": self.core.gate.broker_calls,
                "broker_errors": self.core.gate.broker_errors, "refusals": dict(self.core.gate.refusals), "quota": vars(lease.spec)}
