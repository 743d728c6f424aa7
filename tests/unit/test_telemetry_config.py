"""The `telemetry:` section, reason codes, tracing set-up and gateway request telemetry (no Ray)."""
import json

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rayfin.errors import ConfigError
from rayfin.reasons import ReasonCode
from rayfin.telemetry import tracing
from rayfin.telemetry.config import TelemetryConfig, parse_telemetry, telemetry_config
from rayfin.telemetry.metrics import METRICS, MemoryMetrics, reason_code
from rayfin.telemetry.serving import request_span
from tests.support.builders import config


@pytest.mark.parametrize("data, expected", [
    (None, TelemetryConfig()),
    ({}, TelemetryConfig(exporter="none")),
    ({"exporter": "console"}, TelemetryConfig(exporter="console")),
    ({"exporter": "otlp", "otlp_endpoint": "http://c:4318/v1/traces", "service_name": "rf"},
     TelemetryConfig(exporter="otlp", otlp_endpoint="http://c:4318/v1/traces", service_name="rf")),
])
def test_parse_valid(data, expected):
    assert parse_telemetry(data) == expected


@pytest.mark.parametrize("data, path, words", [
    ({"exporter": "jaeger"}, "telemetry.exporter", "one of"),
    ({"exporter": "otlp"}, "telemetry", "otlp_endpoint"),
    ({"otlp_endpoint": "collector:4318"}, "telemetry", "http"),
    ({"sample_ratio": 2}, "telemetry.sample_ratio", "<= 1"),
    ({"exportr": "console"}, "telemetry.exportr", "unknown field"),
    ([1, 2], "telemetry", "mapping"),
])
def test_parse_errors_name_the_field(data, path, words):
    with pytest.raises(ConfigError) as err:
        parse_telemetry(data)
    assert err.value.path == path and words in str(err.value)


def test_from_a_rayfin_config_and_back_through_the_environment():
    cfg = config().model_copy(update={"telemetry": parse_telemetry({
        "exporter": "otlp", "otlp_endpoint": "http://c:4318/v1/traces", "sample_ratio": 0.5})})
    t = telemetry_config(cfg)
    env = tracing.tracing_env(cfg.telemetry)
    assert env["OTEL_TRACES_EXPORTER"] == "otlp" and env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == t.otlp_endpoint
    back = TelemetryConfig.from_env(env)
    assert (back.exporter, back.otlp_endpoint, back.sample_ratio) == ("otlp", t.otlp_endpoint, 0.5)
    assert tracing.ray_hook(cfg.telemetry) == "rayfin.telemetry.tracing:setup_tracing"
    assert tracing.ray_hook(config().telemetry) is None                                   # exporter none: no hook
    assert TelemetryConfig.from_env({"OTEL_TRACES_EXPORTER": "jaeger"}).exporter == "none"


def test_providers_export_as_configured():
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    p = tracing.build_provider(TelemetryConfig(exporter="otlp", otlp_endpoint="http://127.0.0.1:17999/v1/traces"))
    exporters = [sp.span_exporter for sp in p._active_span_processor._span_processors]
    assert any(isinstance(e, OTLPSpanExporter) for e in exporters)
    p.shutdown()
    p = tracing.build_provider(TelemetryConfig(exporter="none"))
    assert p._active_span_processor._span_processors == ()


# Reasons are codes chosen by whoever decided (issue 19): the tag is the code, never read from prose.
@pytest.mark.parametrize("reason, code", [
    (ReasonCode.RECLAIM, "reclaim"),
    (ReasonCode.PRIORITY, "priority"),
    (ReasonCode.OVER_CEILING, "over_ceiling"),
    (ReasonCode.POOL_TOO_SMALL, "pool_too_small"),
    ("never_fits", "never_fits"),
    ("requests_per_s", "requests_per_s"),
    ("something nobody planned for, in a long sentence", "other"),
])
def test_reason_codes_are_short_and_bounded(reason, code):
    assert reason_code(reason) == code


class _Resp:
    def __init__(self, status, body):
        self.status_code, self.body = status, json.dumps(body).encode()


def _traced():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, provider, MemoryMetrics()


def test_request_span_accepted_refused_and_unknown():
    exporter, provider, m = _traced()
    t = iter([0.0, 0.004, 1.0, 1.001, 2.0, 2.001])
    kw = dict(metrics=m, tracer_provider=provider, clock=lambda: next(t))
    with request_span("option-pricer", **kw) as req:
        req.finish({"desk": "fx", "prices": [1.0]})
    with request_span("option-pricer", **kw) as req:
        req.finish(_Resp(429, {"error": "quota_exceeded", "desk": "fx", "limit": "requests_per_s"}))
    with request_span("nope", **kw) as req:
        req.finish(_Resp(404, {"error": "unknown_model"}))
    assert m.get("rayfin_serve_requests", desk="fx", model="option-pricer", outcome="accepted", reason="ok") == 1
    assert m.get("rayfin_serve_requests", desk="fx", model="option-pricer", outcome="refused",
                 reason="requests_per_s") == 1
    assert m.get("rayfin_serve_requests", desk="unknown", model="unknown", outcome="refused",
                 reason="unknown_model") == 1
    assert m.get("rayfin_serve_request_seconds", desk="fx", model="option-pricer") == [pytest.approx(0.004)]
    spans = exporter.get_finished_spans()
    assert [s.attributes["rayfin.serve.outcome"] for s in spans] == ["accepted", "refused", "refused"]
    assert spans[1].attributes["http.response.status_code"] == 429


def test_request_span_records_an_exception_as_error():
    exporter, provider, m = _traced()
    with pytest.raises(ValueError):
        with request_span("option-pricer", desk="fx", metrics=m, tracer_provider=provider):
            raise ValueError("boom")
    assert m.get("rayfin_serve_requests", desk="fx", model="option-pricer", outcome="error", reason="exception") == 1
    assert exporter.get_finished_spans()[0].status.status_code.name == "ERROR"


def test_metric_registry_is_consistent():
    for name, spec in METRICS.items():
        assert name.startswith("rayfin_") and name == spec.name
        assert not name.endswith("_total"), "Ray adds _total to counters itself"
        assert spec.kind != "histogram" or list(spec.buckets) == sorted(spec.buckets)
        assert "job_id" not in spec.tags, "job ids are unbounded: put them in traces, not tags"


def test_buffered_counters_sum_per_series_and_pass_the_rest_through():
    from rayfin.telemetry.metrics import BufferedCounters

    m = MemoryMetrics()
    b = BufferedCounters(m, interval_s=3600)      # no flush by the thread during the test
    tags = {"desk": "fx", "model": "option-pricer", "outcome": "accepted", "reason": "ok"}
    for _ in range(5):
        b.inc("rayfin_serve_requests", 1, tags)
    b.inc("rayfin_serve_requests", 1, {**tags, "outcome": "refused", "reason": "requests_per_s"})
    b.observe("rayfin_serve_request_seconds", 0.01, {"desk": "fx", "model": "option-pricer"})
    assert m.get("rayfin_serve_requests", **tags) is None                       # not yet recorded
    assert m.get("rayfin_serve_request_seconds", desk="fx", model="option-pricer") == [0.01]  # at once
    b.flush()
    assert m.get("rayfin_serve_requests", **tags) == 5                         # one record of 5
    assert m.get("rayfin_serve_requests", **{**tags, "outcome": "refused", "reason": "requests_per_s"}) == 1
    b.flush()                                                                  # nothing new: nothing added
    assert m.get("rayfin_serve_requests", **tags) == 5
    with pytest.raises(ValueError):                  # a wrong series fails when counted, not later
        b.inc("rayfin_serve_requests", 1, {"desk": "fx"})


def test_buffered_counters_flush_on_their_own():
    import time

    from rayfin.telemetry.metrics import BufferedCounters

    m = MemoryMetrics()
    b = BufferedCounters(m, interval_s=0.05)
    tags = {"desk": "fx", "model": "option-pricer", "outcome": "accepted", "reason": "ok"}
    b.inc("rayfin_serve_requests", 2, tags)
    deadline = time.monotonic() + 5
    while m.get("rayfin_serve_requests", **tags) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert m.get("rayfin_serve_requests", **tags) == 2


def test_request_span_without_tracing_set_up_still_counts(monkeypatch):
    """No SDK tracer provider in the process: no span is made (it would be a no-op), and the
    request is still counted and timed."""
    from opentelemetry import trace

    from rayfin.telemetry import tracing

    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    tracing.recheck_provider()                      # the answer is kept for a second: ask again now
    m = MemoryMetrics()
    with request_span("option-pricer", metrics=m) as req:
        assert req.span is trace.INVALID_SPAN
        req.finish(status=200, desk="fx")
    assert m.get("rayfin_serve_requests", desk="fx", model="option-pricer", outcome="accepted", reason="ok") == 1
    assert len(m.get("rayfin_serve_request_seconds", desk="fx", model="option-pricer")) == 1


def test_the_tracer_provider_check_is_kept_a_second_and_redone_on_request(monkeypatch):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from rayfin.telemetry import tracing

    now = [100.0]
    provider = [trace.ProxyTracerProvider()]
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider[0])
    tracing.recheck_provider()
    assert tracing.provider_set_up(lambda: now[0]) is False
    provider[0] = TracerProvider()
    now[0] += 0.5
    assert tracing.provider_set_up(lambda: now[0]) is False      # kept for a second
    now[0] += 0.6
    assert tracing.provider_set_up(lambda: now[0]) is True       # looked again
    provider[0] = trace.ProxyTracerProvider()
    tracing.recheck_provider()                                   # what install() does after setting one
    assert tracing.provider_set_up(lambda: now[0]) is False
