"""OpenTelemetry set-up for rayfin, and Ray's tracing startup hook.

    exporter  console   spans printed to stdout (the worker's log file under Ray)
              otlp      spans sent over OTLP/HTTP to `otlp_endpoint` (a collector, Tempo, Jaeger)
              none      nothing is set up; spans are no-ops

Ray's hook: `ray.init(_tracing_startup_hook=HOOK)` on the cluster's first start (or
`ray start --head --tracing-startup-hook=rayfin.telemetry.tracing:setup_tracing`) makes every
Ray worker call `setup_tracing()` when it connects, and makes Ray propagate the caller's
trace context into every task and actor call. The hook takes no arguments, so the settings
travel as the standard `OTEL_*` environment variables (`tracing_env`), which workers inherit.

A job's Ray work joins the job's trace when it is launched inside `job_context(job_id)`: the
recorder registers each job's root span here, and the Ray backend wraps its launch calls.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator

from opentelemetry import context as otel_context
from opentelemetry import trace

from rayfin.telemetry.config import TelemetryConfig

log = logging.getLogger("rayfin.telemetry")
HOOK = "rayfin.telemetry.tracing:setup_tracing"
TRACER_NAME = "rayfin"

_lock = threading.Lock()
_installed: tuple[TelemetryConfig, Any] | None = None       # (settings, provider) this process installed
_job_spans: dict[str, trace.Span] = {}                       # job id -> root span (for job_context)


def build_provider(cfg: TelemetryConfig, *, processors: tuple[Any, ...] = ()) -> Any:
    """A TracerProvider exporting as `cfg` says, plus any extra span processors (tests)."""
    # lazy: the SDK is needed only where tracing is on; the serving path imports this module
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}),
                              sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
    if cfg.exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif cfg.exporter == "otlp":
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(cfg)))
    for p in processors:
        provider.add_span_processor(p)
    return provider


def _otlp_exporter(cfg: TelemetryConfig) -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:  # pragma: no cover - the package is a dependency
        raise RuntimeError("telemetry.exporter is 'otlp' but opentelemetry-exporter-otlp-proto-http is not "
                           "installed; to fix: pip install opentelemetry-exporter-otlp-proto-http") from exc
    return OTLPSpanExporter(endpoint=cfg.otlp_endpoint)


_SET_UP: list = [False, float("-inf")]   # [an SDK tracer provider is set in this process, checked at]


def provider_set_up(clock: Callable[[], float] = time.monotonic) -> bool:
    """Whether this process has a real (SDK) tracer provider, checked at most once a second:
    `trace.get_tracer_provider()` reads the environment on every call, and the serving path asks
    on every request. `install` makes the next call check again; a provider set by other code
    counts from the next check on (within a second)."""
    now = clock()
    if now - _SET_UP[1] >= 1.0 or now < _SET_UP[1]:
        _SET_UP[0] = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        _SET_UP[1] = now
    return _SET_UP[0]


def recheck_provider() -> None:
    """Make the next `provider_set_up` look again (after a provider was set or replaced)."""
    _SET_UP[1] = float("-inf")


def install(cfg: TelemetryConfig) -> Any:
    """Set this process's global tracer provider from `cfg`, once. Returns the provider, or None
    when the exporter is `none` (OpenTelemetry's no-op tracer is then used)."""
    global _installed
    with _lock:
        if _installed is not None:
            if _installed[0] != cfg:
                log.info("tracing already set up in this process (%s); ignoring %s", _installed[0], cfg)
            return _installed[1]
        provider = None if cfg.exporter == "none" else build_provider(cfg)
        if provider is not None:
            trace.set_tracer_provider(provider)
            recheck_provider()
        _installed = (cfg, provider)
        return provider


def tracer(settings: TelemetryConfig | None = None, provider: Any = None) -> trace.Tracer:
    """rayfin's tracer: from `provider` if given (tests), else the process's, set up from `settings`."""
    if provider is not None:
        return provider.get_tracer(TRACER_NAME)
    if settings is not None:
        install(settings)
    return trace.get_tracer(TRACER_NAME)


def setup_tracing() -> None:
    """Ray's tracing startup hook: runs in every Ray worker (and driver) as it connects."""
    try:
        install(TelemetryConfig.from_env(dict(os.environ)))
    except Exception:  # noqa: BLE001 - a tracing problem must never stop a worker from starting
        log.exception("rayfin tracing hook failed; this worker runs without tracing")


def tracing_env(settings: TelemetryConfig) -> dict[str, str]:
    """Environment variables to export before the cluster (and so its workers) starts."""
    return settings.env()


def ray_hook(settings: TelemetryConfig) -> str | None:
    """The hook string to pass to Ray, or None when tracing is off."""
    return HOOK if settings.ray_tracing and settings.exporter != "none" else None


# ---------------------------------------------------------------------------------- job context
def register_job_span(job_id: str, span: trace.Span | None) -> None:
    with _lock:
        if span is None:
            _job_spans.pop(job_id, None)
        else:
            _job_spans[job_id] = span


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Make the job's root span current, so Ray calls made inside (placement group, runner actor,
    its `start`) carry the job's trace context into the workers."""
    span = _job_spans.get(job_id)
    if span is None:
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)


def job_trace_id(job_id: str) -> str | None:
    """The job's trace id as 32 hex digits (for logs and `rayfin explain`), if it is traced here."""
    span = _job_spans.get(job_id)
    if span is None or not span.get_span_context().is_valid:
        return None
    return format(span.get_span_context().trace_id, "032x")


__all__ = ["HOOK", "build_provider", "install", "tracer", "setup_tracing", "tracing_env", "ray_hook",
           "job_context", "register_job_span", "job_trace_id"]
