"""The rayfin API as a FastAPI application, apart from Ray: routes, auth header, size limits and
error mapping. It forwards each call to a `ControllerPort` (the controller actor in production,
`serve_apps/api_app.py`; a fake in unit tests); the controller authenticates the credential and
decides, as it did for the Ray-driver SDK.

    GET  /healthz                          liveness (no credential)
    POST /v1/jobs                          submit (201)
    GET  /v1/jobs?desk=&state=&limit=      list
    GET  /v1/jobs/{id}                     status
    POST /v1/jobs/{id}/cancel              cancel
    GET  /v1/jobs/{id}/result              return value (base64 of its cloudpickle)
    GET  /v1/jobs/{id}/results             per-rank return values (gang workers)
    GET  /v1/jobs/{id}/logs?rank=&tail=    log lines (gang workers)
    GET  /v1/jobs/{id}/explain             the decision and its audit trail
    GET  /v1/usage?desk=                   desk table
    GET  /v1/pools                         GPUs per node pool
    GET  /v1/audit?desk=&since=&until=&limit=
    GET  /v1/policing                      GPU use found outside rayfin
    GET  /v1/chargeback?since=&until=&by=&desk=   GPU-hours, lent/borrowed, cost (a desk: its own)
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rayfin.api.errors import body_of, headers_of, status_of
from rayfin.api.models import (DESK_PATTERN, AuditEvent, ChargebackView, ErrorReply, ExplainView, Health, JobView, LogsView,
                               PolicingView, PoolRow, ResultsView, ResultView, State, SubmitRequest, UsageRow)
from rayfin.errors import InvalidRequest, PayloadTooLarge, RayfinError, Unauthorized

if TYPE_CHECKING:   # the API process reads the config section; the app itself does not need it
    from rayfin.config import ApiConfig

HOW_TO_AUTH = ("send 'Authorization: Bearer <token>' with the desk's or the admin's token "
               "(SDK: rayfin.connect(token=...) or $RAYFIN_TOKEN; CLI: --token or $RAYFIN_TOKEN)")
BASE64_OVERHEAD = 4 / 3
BODY_SLACK = 64 * 1024           # JSON around the payload: options, names, an entrypoint
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorReply}
                                           for code in (400, 401, 403, 404, 409, 413, 422, 429, 501, 503)}


class ControllerPort(Protocol):
    async def call(self, method: str, *args: Any) -> Any:
        """The controller's reply value, or raise the RayfinError it decided."""


@dataclass(frozen=True)
class ApiLimits:
    max_payload_bytes: int = 16 * 1024 * 1024
    max_result_bytes: int = 64 * 1024 * 1024

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_payload_bytes * BASE64_OVERHEAD) + BODY_SLACK

    @classmethod
    def from_config(cls, api: ApiConfig) -> "ApiLimits":
        return cls(api.max_payload_bytes, api.max_result_bytes)


def bearer(request: Request) -> str:
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(f"no credential: {HOW_TO_AUTH}", action=f"{request.method} {request.url.path}")
    return token


class BodyLimit:
    """Refuses a body over `limit` bytes with 413 before it is read into memory: at once when
    Content-Length says so, else while it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, PayloadTooLarge(field="body", size=int(declared), limit=self.limit))
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise PayloadTooLarge(field="body", size=seen, limit=self.limit)
            return message

        return await self.app(scope, counting, send)


async def _send_error(send: Send, err: RayfinError) -> None:
    resp = error_response(err)
    await send({"type": "http.response.start", "status": resp.status_code, "headers": resp.raw_headers})
    await send({"type": "http.response.body", "body": resp.body})


def error_response(err: RayfinError) -> JSONResponse:
    return JSONResponse(body_of(err), status_code=status_of(err), headers=headers_of(err))


def _validation_error(exc: RequestValidationError) -> tuple[RayfinError, int]:
    """The first problem as InvalidRequest naming the field; 400 for a body that is not JSON at
    all, 422 for JSON that breaks the schema."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return InvalidRequest(f"body is not valid JSON ({first.get('msg', '')})", field="body", value=None,
                              allowed="a JSON object"), 400
    ctx = first.get("ctx") or {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    # JobSpec's own refusals name the field (as the caller sent it) in their context.
    field = str(ctx.get("field") or ".".join(loc) or "body")
    value = ctx["value"] if "value" in ctx else first.get("input")
    value = value if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    if isinstance(value, str) and len(value) > 80:
        value = value[:80] + "..."
    allowed = str(ctx.get("allowed") or first.get("msg", ""))
    return InvalidRequest(f"invalid {field}: {first.get('msg', 'not allowed')}", field=field, value=value,
                          allowed=allowed), 422


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RayfinError)
    async def _rayfin(_request: Request, exc: RayfinError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        err, code = _validation_error(exc)
        return JSONResponse(body_of(err), status_code=code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return JSONResponse({"error": {"type": kind, "message": str(exc.detail), "fields": {}}},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))


def controller_spec(req: SubmitRequest, limits: ApiLimits) -> dict[str, Any]:
    """The controller's submit spec from a request FastAPI has validated as a `JobSpec`
    (`SubmitRequest`), with the API's own payload limit. `workers` and `dist_backend` go only
    when not the defaults, so a controller without gang workers (which refuses unknown fields)
    still takes a plain job."""
    if isinstance(req.payload, bytes) and len(req.payload) > limits.max_payload_bytes:
        raise PayloadTooLarge(field="payload_b64", size=len(req.payload), limit=limits.max_payload_bytes)
    spec: dict[str, Any] = {"kind": req.kind, "payload": req.payload, "gpus": req.gpus,
                            "priority": req.priority.label if req.priority is not None else None,
                            "name": req.name or ("entrypoint" if req.kind == "entrypoint" else "job"),
                            "comm": req.comm.value, "retries": req.retries, "job_id": req.job_id}
    if req.workers != 1:
        spec["workers"] = req.workers
    if req.min_workers is not None:
        spec["min_workers"] = req.min_workers
    if req.dist_backend != "auto":
        spec["dist_backend"] = req.dist_backend
    if req.deadline is not None:
        spec["deadline"] = req.deadline
    if req.expected_runtime_s is not None:
        spec["expected_runtime_s"] = req.expected_runtime_s
    return spec


def _b64(blob: bytes | None) -> str | None:
    return None if blob is None else base64.b64encode(blob).decode()


def _check_result_size(blobs: list[bytes | None], limit: int) -> None:
    size = sum(len(b) for b in blobs if b)
    if size > limit:
        raise PayloadTooLarge(f"the job's result is {size} bytes; this API returns at most {limit} "
                              "(api.max_result_bytes): return a path to stored output instead",
                              field="result", size=size, limit=limit)


JobId = Path(..., min_length=1, max_length=128)
DeskQ = Query(None, pattern=DESK_PATTERN)


def build_app(port: ControllerPort, limits: ApiLimits = ApiLimits()) -> FastAPI:
    app = FastAPI(title="rayfin API", version="1", responses=ERRORS,
                  description="Submit and watch GPU jobs of a desk; read usage, pools and the audit log. "
                              "Every call but /healthz needs `Authorization: Bearer <desk or admin token>`.")
    _install_error_handlers(app)
    _job_routes(app, port, limits)
    _view_routes(app, port)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    return app


def _job_routes(app: FastAPI, port: ControllerPort, limits: ApiLimits) -> None:
    @app.post("/v1/jobs", status_code=201, response_model=JobView)
    async def submit(body: SubmitRequest, request: Request) -> Any:
        token = bearer(request)
        return await port.call("submit", token, body.desk, controller_spec(body, limits))

    @app.get("/v1/jobs", response_model=list[JobView])
    async def jobs(request: Request, desk: str | None = DeskQ, state: list[State] | None = Query(None),
                   limit: int = Query(1000, ge=1, le=10_000)) -> Any:
        return await port.call("jobs", bearer(request), desk, state, limit)

    @app.get("/v1/jobs/{job_id}", response_model=JobView)
    async def status(request: Request, job_id: str = JobId) -> Any:
        return await port.call("status", bearer(request), job_id)

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobView)
    async def cancel(request: Request, job_id: str = JobId) -> Any:
        return await port.call("cancel", bearer(request), job_id)

    @app.get("/v1/jobs/{job_id}/result", response_model=ResultView)
    async def result(request: Request, job_id: str = JobId) -> Any:
        r = await port.call("result", bearer(request), job_id)
        _check_result_size([r.get("result")], limits.max_result_bytes)
        return {"state": r["state"], "reason": r.get("reason") or "", "error": r.get("error") or "",
                "result_b64": _b64(r.get("result")), "size": len(r.get("result") or b"")}

    @app.get("/v1/jobs/{job_id}/results", response_model=ResultsView)
    async def results(request: Request, job_id: str = JobId) -> Any:
        r = await port.call("results", bearer(request), job_id)
        blobs = list(r.get("results") or [])
        _check_result_size(blobs, limits.max_result_bytes)
        return {"state": r["state"], "reason": r.get("reason") or "", "error": r.get("error") or "",
                "results_b64": [_b64(b) for b in blobs]}

    @app.get("/v1/jobs/{job_id}/logs", response_model=LogsView)
    async def logs(request: Request, job_id: str = JobId, rank: int | None = Query(None, ge=0, le=1_000_000),
                   tail: int | None = Query(None, ge=1, le=1_000_000)) -> Any:
        return await port.call("logs", bearer(request), job_id, rank, tail)

    @app.get("/v1/jobs/{job_id}/explain", response_model=ExplainView)
    async def explain(request: Request, job_id: str = JobId) -> Any:
        return await port.call("explain", bearer(request), job_id)


def _view_routes(app: FastAPI, port: ControllerPort) -> None:
    @app.get("/healthz", response_model=Health)
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/v1/usage", response_model=dict[str, UsageRow])
    async def usage(request: Request, desk: str | None = DeskQ) -> Any:
        return await port.call("usage", bearer(request), desk)

    @app.get("/v1/pools", response_model=dict[str, PoolRow])
    async def pools(request: Request) -> Any:
        return await port.call("pools", bearer(request))

    @app.get("/v1/audit", response_model=list[AuditEvent])
    async def audit(request: Request, desk: str | None = DeskQ, since: float | None = Query(None, ge=0, le=1e11),
                    until: float | None = Query(None, ge=0, le=1e11), limit: int = Query(1000, ge=1, le=10_000)) -> Any:
        return await port.call("audit", bearer(request), desk, since, until, limit)

    @app.get("/v1/chargeback", response_model=ChargebackView)
    async def chargeback(request: Request, since: float = Query(..., ge=0, le=1e11),
                         until: float | None = Query(None, ge=0, le=1e11),
                         by: Literal["desk", "job", "model"] = Query("desk"), desk: str | None = DeskQ) -> Any:
        return await port.call("chargeback", bearer(request), since, until, by, desk)

    @app.get("/v1/policing", response_model=PolicingView)
    async def policing(request: Request) -> Any:
        return await port.call("policing", bearer(request))


__all__ = ["ApiLimits", "ControllerPort", "build_app", "bearer", "controller_spec", "HOW_TO_AUTH"]
