"""Gateway request telemetry: one span and one counter increment per HTTP request.

Use around a serving route (serve_apps/deployments.py):

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

import json
import time
from typing import Any, Callable

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from rayfin.telemetry.metrics import BufferedCounters, MetricsSink, ray_metrics, reason_code
from rayfin.telemetry.tracing import TRACER_NAME, provider_set_up

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


_TRACER: Any = None           # this process's tracer: a ProxyTracer, so it follows a provider set later
_COUNTS: BufferedCounters | None = None


def _default_tracer() -> Any:
    global _TRACER
    if _TRACER is None:
        _TRACER = trace.get_tracer(TRACER_NAME)
    return _TRACER


def serving_metrics() -> MetricsSink:
    """Ray metrics, with the per-request counter summed in-process and recorded once a second
    (a Ray metric record costs more than the rest of the span together, measured in a replica)."""
    global _COUNTS
    if _COUNTS is None:
        _COUNTS = BufferedCounters(ray_metrics())
    return _COUNTS


def count_edge_refusal(model: str, refusal: Any) -> None:
    """An edge refusal (serve_apps/edge.py) counted like the gate's: rayfin_serve_requests,
    outcome refused, reason its limit (requests_per_s), so dashboards see one figure wherever a
    request was refused. Through `serving_metrics` (summed, recorded once a second): this is a
    flood's path. Never raises: metrics must not fail a refusal."""
    try:
        serving_metrics().inc("rayfin_serve_requests", 1, {"desk": refusal.desk, "model": model,
                                                           "outcome": "refused", "reason": refusal.limit.value})
    except Exception:  # noqa: BLE001
        pass


class _NoSpan:
    """What a span context manager gives when tracing is not set up: the invalid span."""

    def __enter__(self) -> Any:
        return trace.INVALID_SPAN

    def __exit__(self, *exc: Any) -> None:
        return None


_NO_SPAN = _NoSpan()


class request_span:
    """Trace and count one gateway request; see the module docstring. A context manager:

        with request_span(model) as req: ...; req.finish(response)
    """

    __slots__ = ("_model", "_desk", "_sink", "_clock", "_span_cm", "_req", "_t0")

    def __init__(self, model: str, *, desk: str | None = None, metrics: MetricsSink | None = None,
                 tracer_provider: Any = None, clock: Callable[[], float] = time.perf_counter,
                 **attributes: Any) -> None:
        self._model, self._desk, self._clock = model, desk, clock
        self._sink = metrics if metrics is not None else serving_metrics()
        if tracer_provider is None and not provider_set_up():
            # No tracing set up in this process (no SDK provider): every span would be a no-op.
            self._span_cm = _NO_SPAN
            return
        tracer = tracer_provider.get_tracer(TRACER_NAME) if tracer_provider is not None else _default_tracer()
        self._span_cm = tracer.start_as_current_span(
            "rayfin.serve.request", kind=SpanKind.SERVER, attributes={"rayfin.model": model, **attributes},
            record_exception=True, set_status_on_exception=True)

    def __enter__(self) -> ServeRequest:
        self._t0 = self._clock()
        span = self._span_cm.__enter__()
        self._req = ServeRequest(span, self._model)
        if self._desk:
            self._req.desk = self._desk
        return self._req

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        req = self._req
        if exc_type is not None:
            req.outcome, req.reason, req.status = "error", "exception", 500
        try:
            elapsed = self._clock() - self._t0
            if self._span_cm is not _NO_SPAN:          # tracing set up: a real span to annotate
                span = req.span
                span.set_attributes({"rayfin.desk": req.desk, "rayfin.model": req.model,
                                     "rayfin.serve.outcome": req.outcome, "rayfin.serve.reason": req.reason,
                                     "http.response.status_code": req.status})
                if req.outcome == "error":
                    span.set_status(Status(StatusCode.ERROR, req.reason))
            try:
                self._sink.inc("rayfin_serve_requests", 1, {"desk": req.desk, "model": req.model,
                                                            "outcome": req.outcome, "reason": req.reason})
                if req.outcome == "accepted":
                    self._sink.observe("rayfin_serve_request_seconds", elapsed, {"desk": req.desk, "model": req.model})
            except Exception:  # noqa: BLE001 - metrics must never fail a request
                pass
        finally:
            self._span_cm.__exit__(exc_type, exc, tb)   # records the exception, ends the span


__all__ = ["count_edge_refusal", "request_span", "serving_metrics", "ServeRequest"]
