"""rayfin observability: Ray metrics, OpenTelemetry traces, Grafana and KubeRay generators.

    recorder.TelemetryRecorder   the controller's Recorder (metrics + one trace per job)
    metrics.METRICS              every metric rayfin exports (names, kinds, tags)
    tracing                      exporter set-up, Ray's tracing startup hook, job_context
    serving.request_span         gateway request span + counters
    config.TelemetryConfig       the `telemetry:` config section
    grafana                      generator of configs/grafana/ (KubeRay manifests: rayfin.kuberay)

Importing this package does not import Ray.
"""
from rayfin.telemetry.config import TelemetryConfig, parse_telemetry, telemetry_config
from rayfin.telemetry.metrics import METRICS, MemoryMetrics, MetricSpec, RayMetrics, reason_code

__all__ = ["TelemetryConfig", "parse_telemetry", "telemetry_config", "METRICS", "MemoryMetrics", "MetricSpec",
           "RayMetrics", "reason_code"]
