"""Gateway request telemetry: one span and one counter increment per HTTP request.

Use around the gateway's route (serve_apps/gateway.py, `Gateway.predict`):

    with request_span(model) as req:
        response = await self.core.predict(model, request)
        req.finish(response)
        return response

`finish` reads the outcome from what the gateway returns: a dict (2xx, accepted, its `desk`
field names the desk) or a JSONResponse whose JSON body has `error` and, for 429, `desk` and
`limit`. Tag values stay bounded: an unknown model is tagged `unknown`, an unauthenticated
caller's desk `unknown`, a refusal's reason is its `limit` (429) or `error` code.

    rayfin_serve_requests{desk, model, outcome=accepted|refused|error, reason}
    rayfin_serve_request_seconds{desk, model}          (accepted requests)
"""
from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Callable, Iterator

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from rayfin.telemetry.metrics import MetricsSink, ray_metrics, reason_code
from rayfin.telemetry.tracing import TRACER_NAME

UNKNOWN = "unknown"


class ServeRequest:
    """What the gateway tells about one request; `finish` records it."""

    def __init__(self, span: trace.Span, model: str) -> None:
        self.span = span
        self.model = model
        self.desk = UNKNOWN
        self.outcome = "accepted"
        self.reason = "ok"
        self.status = 200
        self.finished = False

    def finish(self, response: Any = None, *, status: int | None = None, desk: str | None = None,
               reason: str | None = None) -> None:
        body: dict[str, Any] = {}
        if isinstance(response, dict):
            body, code = response, 200
        else:
            code = int(getattr(response, "status_code", 200) or 200)
            raw = getattr(response, "body", None)
            if raw:
                try:
                    parsed = json.loads(raw)
                    body = parsed if isinstance(parsed, dict) else {}
                except (ValueError, TypeError):
                    body = {}
        self.status = status if status is not None else code
        self.desk = desk or str(body.get("desk") or self.desk)
        if body.get("error") == "unknown_model":
            self.model = UNKNOWN
        if self.status < 400:
            self.outcome, self.reason = "accepted", "ok"
        else:
            self.outcome = "error" if self.status >= 500 else "refused"
            self.reason = reason_code(reason or str(body.get("limit") or body.get("error") or f"http_{self.status}"))
        self.finished = True


@contextlib.contextmanager
def request_span(model: str, *, desk: str | None = None, metrics: MetricsSink | None = None,
                 tracer_provider: Any = None, clock: Callable[[], float] = time.perf_counter,
                 **attributes: Any) -> Iterator[ServeRequest]:
    """Trace and count one gateway request; see the module docstring."""
    tracer = (tracer_provider.get_tracer(TRACER_NAME) if tracer_provider is not None
              else trace.get_tracer(TRACER_NAME))
    sink = metrics if metrics is not None else ray_metrics()
    t0 = clock()
    with tracer.start_as_current_span("rayfin.serve.request", kind=SpanKind.SERVER,
                                      attributes={"rayfin.model": model, **attributes},
                                      record_exception=True, set_status_on_exception=True) as span:
        req = ServeRequest(span, model)
        if desk:
            req.desk = desk
        try:
            yield req
        except BaseException:
            req.outcome, req.reason, req.status = "error", "exception", 500
            raise
        finally:
            elapsed = clock() - t0
            span.set_attributes({"rayfin.desk": req.desk, "rayfin.model": req.model,
                                 "rayfin.serve.outcome": req.outcome, "rayfin.serve.reason": req.reason,
                                 "http.response.status_code": req.status})
            if req.outcome == "error":
                span.set_status(Status(StatusCode.ERROR, req.reason))
            tags = {"desk": req.desk, "model": req.model}
            try:
                sink.inc("rayfin_serve_requests", 1, {**tags, "outcome": req.outcome, "reason": req.reason})
                if req.outcome == "accepted":
                    sink.observe("rayfin_serve_request_seconds", elapsed, tags)
            except Exception:  # noqa: BLE001 - metrics must never fail a request
                pass


__all__ = ["request_span", "ServeRequest"]
