"""Admission of a predict request: the one place a desk's 429 is decided. No Ray, no Serve.

    401 credential -> 404 model -> 403 access -> 413 declared size -> 429 quota
    -> 413 actual size -> 422 body -> the model

Checks run cheapest first, so a request refused by quota never has its body parsed; client
mistakes are always 4xx, and 5xx only means the model failed. `Admission` runs them in every
model replica (serve_apps/deployments.py hosts it); the quota step is `QuotaGate.acquire`, over
the arithmetic of serve_apps/quota.py. The edges in front (serve_apps/edge.py in the replica's
or proxy's HTTP server, serve_apps/haproxy_edge.py in HAProxy) may refuse a flooding desk
earlier, never admit beyond this.

One budget, many replicas: each admitting replica leases tokens from the one `LocalBroker` (in
Serve, the `QuotaBroker` deployment) and holds a local share of its own, so the hot path (a
desk with tokens and permits in hand) makes no remote call at all; a replica talks to the broker
at most once at a time per desk, and not at all for a desk the broker just said is empty until
its next token. The broker call is injected (`call_broker(requests) -> grants`), so unit tests
run the gate against a `LocalBroker` in the same event loop.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Mapping, Sequence

from pydantic import ValidationError
from pydantic_core import to_json
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from rayfin.config import RayfinConfig
from serve_apps.access import AccessPolicy, ModelEntry, bearer_of, header_value
from serve_apps.edge_asgi import desk_of
from serve_apps.haproxy_edge import DeskRate, desk_rates
from serve_apps.quota import (DeskBudget, Grant, LeaseRequest, LocalLease, QuotaSpec, Refusal, Shortage,
                              decide_grant)
from serve_apps.schemas import REQUEST_SCHEMAS, rows_of

log = logging.getLogger(__name__)

BrokerCall = Callable[[Sequence[LeaseRequest]], Awaitable[Sequence[Grant]]]


# --------------------------------------------------------------------------------------------
# Settings: built once from the config where the stack is deployed, shipped to every replica


@dataclass(frozen=True)
class AdmissionSettings:
    """What every admitting replica, the broker and the "/" gateway are built from (no secrets
    beyond the token hashes). `replicas[desk]` is R for that desk: the replicas that can admit
    its requests (those of the models it may call); each holds 1/R of the desk's local share."""

    access: AccessPolicy
    quotas: Mapping[str, QuotaSpec]
    replicas: Mapping[str, int]
    max_body_bytes: int
    broker_app: str
    sync_interval_s: float = 0.25
    local_fraction: float = 0.0
    lease_ttl_s: float = 1.0
    holder_ttl_s: float = 5.0
    # HAProxy ingress: each replica sheds floods in the middleware of its own HTTP server.
    edge_in_replica: bool = False
    # `serve.edge: haproxy`: the HAProxy edge's rates (credential hash -> rate), which the
    # broker pushes to the running HAProxy whenever it is built with them.
    haproxy_edge: Mapping[str, DeskRate] | None = None
    # `serve.edge_runtime`: where that HAProxy's runtime API and map file are, when it is not on
    # the broker's node (KubeRay: the head pod's sidecar); None: Serve's HAProxies on this node.
    edge_admin: str | None = None
    edge_map: str | None = None
    # credential hash -> desk, to name the HAProxy edge's counters in metrics
    edge_desks: Mapping[str, str] | None = None
    # `serve.replica_niceness`: the CPU niceness the serving replicas set for themselves (priority.py)
    replica_niceness: int | None = None

    @classmethod
    def from_config(cls, config: RayfinConfig, broker_app: str) -> "AdmissionSettings":
        """From a `RayfinConfig`; `broker_app` is the Serve application holding the broker."""
        sc = config.serve
        return cls(
            access=AccessPolicy.from_config(config),
            quotas={d.name: QuotaSpec.from_config(d.serving) for d in config.desks},
            replicas=admitting_replicas(config),
            max_body_bytes=sc.max_body_bytes,
            broker_app=broker_app,
            sync_interval_s=sc.quota_sync_interval_s,
            local_fraction=sc.quota_local_share,
            lease_ttl_s=sc.lease_ttl_s,
            # A replica silent this long has its permits taken back by the broker.
            holder_ttl_s=max(5.0, 10 * sc.quota_sync_interval_s),
            edge_in_replica=sc.edge_shedding and sc.ingress == "haproxy",
            haproxy_edge=desk_rates(config) if sc.edge == "haproxy" else None,
            edge_desks=({d.credential_sha256: d.name for d in config.desks if getattr(d, "credential_sha256", None)}
                        if sc.edge == "haproxy" else None),
            edge_admin=sc.edge_runtime.admin if sc.edge_runtime else None,
            edge_map=sc.edge_runtime.map_path if sc.edge_runtime else None,
            replica_niceness=sc.replica_niceness,
        )


def admitting_replicas(config: RayfinConfig) -> dict[str, int]:
    """Per desk, the replicas that can admit its requests: those of the models it may call."""
    policy = AccessPolicy.from_config(config)
    by_name = {m.name: m for m in config.serve.models}
    return {d.name: max(1, sum(by_name[e.name].num_replicas for e in policy.callable_models(d.name)))
            for d in config.desks}


def replicas_of(replicas: int | Mapping[str, int], desk: str) -> int:
    """R for one desk: a single count for every desk, or a count per desk (the replicas that
    can admit that desk's requests: those of the models it may call)."""
    if isinstance(replicas, Mapping):
        return max(1, int(replicas.get(desk, 1)))
    return max(1, int(replicas))


class LocalBroker:
    """The broker's state and logic: the `QuotaBroker` Serve deployment wraps one of these.
    It holds only the central part of each quota; the rest is split over the replicas' own
    buckets.

    It also adds up the requests the replicas admitted per desk (each lease request carries its
    replica's monotonic count): `request_counts()` is what the controller's capacity loop turns
    into each desk's request rate (rayfin/controller/capacity.py)."""

    def __init__(self, specs: Mapping[str, QuotaSpec], *, replicas: int | Mapping[str, int] = 1,
                 local_fraction: float = 0.0, token_ttl_s: float = 1.0, holder_ttl_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.counting_since = wall()          # wall time: the counts below start from zero here
        self._admitted: dict[str, dict[str, int]] = {d: {} for d in specs}   # desk -> replica -> count
        self.token_ttl_s, self.holder_ttl_s = token_ttl_s, holder_ttl_s
        now = clock()
        self.budgets = {d: DeskBudget.new(d, s, now, replicas=replicas_of(replicas, d), local_fraction=local_fraction)
                        for d, s in specs.items()}

    @classmethod
    def from_settings(cls, settings: AdmissionSettings, clock: Callable[[], float] = time.monotonic) -> "LocalBroker":
        return cls(settings.quotas, replicas=settings.replicas, local_fraction=settings.local_fraction,
                   token_ttl_s=settings.lease_ttl_s, holder_ttl_s=settings.holder_ttl_s, clock=clock)

    def lease(self, requests: Sequence[LeaseRequest]) -> list[Grant]:
        now = self._clock()
        out = []
        for req in requests:
            seen = self._admitted.setdefault(req.desk, {})
            if req.admitted > seen.get(req.replica, 0):   # max: a late or repeated report cannot go back
                seen[req.replica] = req.admitted
            budget = self.budgets[req.desk]
            grant, self.budgets[req.desk] = decide_grant(budget, req, now, token_ttl_s=self.token_ttl_s,
                                                         holder_ttl_s=self.holder_ttl_s)
            out.append(grant)
        return out

    async def alease(self, requests: Sequence[LeaseRequest]) -> list[Grant]:
        return self.lease(requests)

    def request_counts(self) -> dict:
        """Requests admitted per desk since `since` (wall time), all replicas, every configured desk
        (0 when none): monotonic while this broker lives; a new broker starts again from zero.
        A replica's admissions arrive with its next lease call (at most about a second late)."""
        return {"since": self.counting_since,
                "counts": {d: sum(by_replica.values()) for d, by_replica in self._admitted.items()}}

    def snapshot(self) -> dict:
        now = self._clock()
        return {d: {"tokens": round(b.bucket.refill(now).level, 3), "permits_held": b.permits_held(),
                    "gpu_used": round(b.gpu_used, 6)} for d, b in self.budgets.items()}


class QuotaGate:
    """The quota step of admission, for one replica.

    `await acquire(desk)` returns None (admitted: call `release` when done) or a `Refusal`.
    """

    broker_timeout_s = 0.5  # a slower broker reply counts as a failed one (local share used)
    max_wait_s = 3.0  # longest a request waits for tokens the broker keeps giving to others

    def __init__(self, specs: Mapping[str, QuotaSpec], *, replicas: int | Mapping[str, int], replica_id: str,
                 call_broker: BrokerCall, clock: Callable[[], float] = time.monotonic, sync_interval_s: float = 0.25,
                 local_fraction: float = 0.0, permits_local: bool = False) -> None:
        self.replica_id = replica_id
        self.replicas = replicas
        self._call = call_broker
        self._clock = clock
        self.sync_interval_s = sync_interval_s
        now = clock()
        # Each lease has its own bucket (local_fraction of the quota / R): while the broker is
        # slow or down, that share is what the replica admits, and the total still holds.
        self.leases = {d: LocalLease(d, s, replicas_of(replicas, d), now, local_fraction, permits_local)
                       for d, s in specs.items()}
        self._syncing: dict[str, asyncio.Task] = {}
        self._waiters: dict[str, int] = defaultdict(int)
        self.broker_calls = 0
        self.refusals: dict[str, int] = defaultdict(int)
        self.broker_errors = 0
        # Requests admitted per desk (monotonic), sent with every lease request; `_reported` is
        # what the broker has acknowledged, so an idle pass reports the last few too.
        self.admitted: dict[str, int] = defaultdict(int)
        self._reported: dict[str, int] = defaultdict(int)

    # -- hot path ---------------------------------------------------------------------------------
    async def acquire(self, desk: str) -> Refusal | None:
        lease = self.leases[desk]
        now = self._clock()
        refusal = lease.gpu_refusal(now)
        if refusal is not None:
            lease.note_refused(now)
            self.refusals["gpu"] += 1
            return refusal
        deadline = now + self.max_wait_s
        while True:
            short = lease.shortage(now)
            if short is Shortage.NONE:
                lease.admit(now)
                self.admitted[desk] += 1
                if lease.wants_prefetch(now) and desk not in self._syncing:
                    self._start_sync(desk, Shortage.NONE, prefetch=True)
                return None
            if short is Shortage.PERMITS and lease.permits_local:  # ours are all in use: no one to ask
                self.refusals["permits:local"] += 1
                break
            if lease.blocked(short, now):
                self.refusals[f"{short.value}:blocked"] += 1
                break
            if now >= deadline:  # the broker keeps granting, but others take it first
                self.refusals[f"{short.value}:timeout"] += 1
                break
            self._waiters[desk] += 1
            try:
                await self._sync(desk, short)
            finally:
                self._waiters[desk] -= 1
            now = self._clock()
        lease.note_refused(now)
        return lease.refusal(short, now)

    def release(self, desk: str, gpu_seconds: float = 0.0) -> None:
        self.leases[desk].release(gpu_seconds)

    # -- broker calls ------------------------------------------------------------------------------
    async def _sync(self, desk: str, short: Shortage, idle: bool = False) -> None:
        task = self._syncing.get(desk)
        if task is None:
            task = self._start_sync(desk, short, idle)
        await asyncio.shield(task)

    def _start_sync(self, desk: str, short: Shortage, idle: bool = False, prefetch: bool = False) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._do_sync(desk, short, idle, prefetch))
        self._syncing[desk] = task
        task.add_done_callback(lambda _t, d=desk: self._syncing.pop(d, None))
        return task

    async def _do_sync(self, desk: str, short: Shortage, idle: bool, prefetch: bool) -> None:
        lease = self.leases[desk]
        req = lease.request(self.replica_id, self._clock(), short=short, waiters=self._waiters[desk], idle=idle,
                            prefetch=prefetch)
        req = replace(req, admitted=self.admitted[desk])
        self.broker_calls += 1
        call = asyncio.ensure_future(self._call([req]))
        # asyncio.wait, not wait_for: a timed-out call is left to finish (its grant still counts
        # when it lands) instead of blocking here until its cancellation completes.
        done, _ = await asyncio.wait({call}, timeout=self.broker_timeout_s)
        if call in done and call.exception() is None:
            lease.apply(req, call.result()[0], self._clock())
            self._reported[desk] = max(self._reported[desk], req.admitted)
            return
        self.broker_errors += 1
        if call in done:
            log.warning("quota broker failed (%s); desk %s uses this replica's own share", call.exception(), desk)
        else:
            call.add_done_callback(lambda f, r=req: self._late(r, f))
        lease.apply(req, self._fallback_grant(req), self._clock())

    def _late(self, req: LeaseRequest, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.leases[req.desk].apply(req, fut.result()[0], self._clock())
            self._reported[req.desk] = max(self._reported[req.desk], req.admitted)

    def _fallback_grant(self, req: LeaseRequest) -> Grant:
        """No tokens from the broker (the local bucket is the fallback); permits up to 1/R."""
        now = self._clock()
        lease = self.leases[req.desk]
        permits = min(req.permits_target, max(1, lease.spec.max_in_flight // replicas_of(self.replicas, req.desk)))
        return Grant(desk=req.desk, tokens=0, token_ttl_s=1.0, permits_held=permits,
                     gpu_used=lease.gpu_used_known, gpu_window_end=now + max(0.0, lease.gpu_window_end - now),
                     retry_after_s=self.broker_timeout_s, now=now)

    async def sync_idle(self, force: bool = False) -> int:
        """One background pass: give back idle permits and report GPU use. Returns syncs made.

        `force` syncs every desk (start-up warm-up: it also learns GPU use so far).
        """
        now = self._clock()
        todo = [d for d, lease in self.leases.items()
                if d not in self._syncing and (force or lease.needs_sync(now, self.sync_interval_s * 4)
                                               or self._unreported(d, lease, now))]
        for desk in todo:
            idle = self.leases[desk].observed_rate(now) * self.sync_interval_s * 4 < 0.5
            await self._sync(desk, Shortage.NONE, idle=idle)
        return len(todo)

    def _unreported(self, desk: str, lease: LocalLease, now: float, heartbeat_s: float = 1.0) -> bool:
        """Admissions the broker has not heard of, and no sync for a heartbeat: report them."""
        return self.admitted[desk] > self._reported[desk] and now - lease.last_sync >= heartbeat_s

    async def run_background(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval_s)
            try:
                await self.sync_idle()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("quota background sync failed")


# --------------------------------------------------------------------------------------------
# The request: checks in order, answers as JSON


def error_response(status: int, error: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, **extra}, status_code=status, headers=headers)


def refused_response(refusal: Refusal) -> JSONResponse:
    return JSONResponse(refusal.body(), status_code=429, headers={"Retry-After": refusal.retry_after_header()})


def unauthorized(message: str = "missing or unknown desk credential") -> JSONResponse:
    return error_response(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "body"


class PredictionResponse(Response):
    """A 200 with a prediction: the JSON Starlette's JSONResponse would send (compact, UTF-8, same
    keys, values and headers; a tiny float may be spelled `1e-7` where `json.dumps` writes
    `1e-07`), rendered by pydantic-core with the headers built directly, because every admitted
    request ends here. Only finite predictions reach it (`_call_model` answers 422 otherwise)."""

    media_type = "application/json"

    def __init__(self, content: dict, *headers: tuple[bytes, bytes]) -> None:
        self.status_code = 200
        self.background = None
        self.body = to_json(content)
        self.raw_headers = [(b"content-length", str(len(self.body)).encode()),
                            (b"content-type", b"application/json"), *headers]


ModelCall = Callable[[str, list[list[float]]], Awaitable[dict]]


class Admission:
    """Every check of a predict request, independent of how it is hosted (a Serve replica or a
    test). In-flight permits are this replica's own (`permits_local`): an admitted request never
    waits on the broker for a permit."""

    def __init__(self, settings: AdmissionSettings, *, replica_id: str, call_broker: BrokerCall,
                 call_model: ModelCall) -> None:
        self.settings = settings
        self.policy = settings.access
        self.max_body_bytes = settings.max_body_bytes
        self._call_model_fn = call_model
        self.gate = QuotaGate(settings.quotas, replicas=settings.replicas, replica_id=replica_id,
                              call_broker=call_broker, sync_interval_s=settings.sync_interval_s,
                              local_fraction=settings.local_fraction, permits_local=True)
        self._background: asyncio.Task | None = None
        # Which replica answered: operators (and tests) see the budget is shared.
        self._replica_header = (b"x-rayfin-gateway", replica_id.encode("latin-1"))

    def _ensure_background(self) -> None:
        # Started with the first request, on the loop requests run on.
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(self.gate.run_background())

    def authenticate(self, request: Request) -> str | None:
        known, desk = desk_of(request.scope)   # the edge middleware of this process did already
        if known:
            return desk
        return self.policy.authenticate(bearer_of(request.scope.get("headers")))

    async def predict(self, model_name: str, request: Request, span: Any = None) -> Response:
        response = await self._predict(model_name, request, span)
        if isinstance(response, dict):      # the common case: the header goes in with the response
            return PredictionResponse(response, self._replica_header)
        response.raw_headers.append(self._replica_header)
        return response

    def check_access(self, model_name: str, request: Request,
                     span: Any = None) -> tuple[JSONResponse | None, str | None, ModelEntry | None]:
        """401, then 404, then 403, in that order for every predict path. Returns
        (refusal, None, None) or (None, desk, model)."""
        desk = self.authenticate(request)
        if span is not None and desk is not None:
            span.desk = desk
        if desk is None:
            return unauthorized("missing or unknown desk credential; send `Authorization: Bearer <desk token>`"), \
                None, None
        model = self.policy.model(model_name)
        if model is None:
            return error_response(404, "unknown_model", f"no model {model_name!r}; GET /v1/models lists yours"), \
                None, None
        if not self.policy.may_call(desk, model):
            return error_response(403, "forbidden", f"desk {desk!r} may not call model {model_name!r}; it is "
                                  f"private to desk {model.owner!r} (ask for it to be added to your desk's "
                                  "`models`)"), None, None
        return None, desk, model

    async def _predict(self, model_name: str, request: Request, span: Any = None) -> JSONResponse | dict:
        self._ensure_background()
        refused, desk, model = self.check_access(model_name, request, span)
        if refused is not None:
            return refused
        assert desk is not None and model is not None
        declared = header_value(request.scope.get("headers"), b"content-length")   # no Headers object
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return self._too_large(int(declared))
        refusal = await self.gate.acquire(desk)
        if refusal is not None:
            return refused_response(refusal)
        gpu_seconds = 0.0
        try:
            body = await self._read_body(request)
            if body is None:
                return self._too_large(None)
            try:
                parsed = REQUEST_SCHEMAS[model.kind].model_validate_json(body)
            except ValidationError as exc:
                return error_response(422, "invalid_body", "request body does not match the model's schema",
                                      detail=[{"field": _field_path(e["loc"]), "message": e["msg"]}
                                              for e in exc.errors(include_url=False)])
            response, gpu_seconds = await self._call_model(model, desk, rows_of(parsed))
            return response
        finally:
            self.gate.release(desk, gpu_seconds)

    def route_only(self, model_name: str, request: Request, span: Any = None) -> JSONResponse:
        """The "/" gateway's answer to a predict request: predictions are served by each model's
        own application, so one reaching the gateway is for an unknown model (404), or for a
        model whose application is not serving its route right now (503). Same checks, same
        order as `predict`."""
        refused, _, _ = self.check_access(model_name, request, span)
        if refused is not None:
            return refused
        return error_response(503, "model_unavailable", f"model {model_name!r} is not serving right now",
                              headers={"Retry-After": "1"})

    async def _call_model(self, model: ModelEntry, desk: str,
                          rows: list[list[float]]) -> tuple[JSONResponse | dict, float]:
        try:
            result = await self._call_model_fn(model.name, rows)
        except Exception as exc:  # noqa: BLE001 - a model failure is ours, not the client's
            log.exception("model %s failed", model.name)
            return error_response(503, "model_unavailable", f"model {model.name!r} failed: {type(exc).__name__}",
                                  headers={"Retry-After": "1"}), 0.0
        if not all(math.isfinite(v) for v in result.get("predictions", ())):
            # Valid-looking input the model cannot price (e.g. float32 under/overflow): the
            # client's data is outside the model's domain; never a 500 with a NaN in JSON.
            return error_response(422, "outside_model_domain",
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
        return error_response(413, "body_too_large", f"request body is {got}; the limit is {self.max_body_bytes} "
                              "bytes (send fewer inputs per request)", limit_bytes=self.max_body_bytes)

    def list_models(self, request: Request) -> JSONResponse | dict:
        desk = self.authenticate(request)
        if desk is None:
            return unauthorized()
        return {"desk": desk, "models": [{"name": m.name, "kind": m.kind, "owner": m.owner, "public": m.public}
                                         for m in self.policy.callable_models(desk)]}
