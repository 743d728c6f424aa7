"""The `telemetry:` section of a rayfin config: its model lives with its feature.

`RayfinConfig.telemetry` is a `TelemetryConfig`, validated once when the config is loaded;
`parse_telemetry(data)` validates the section on its own (the environment of a Ray worker, a test).

    telemetry:
      exporter: otlp                 # console | otlp | none (default none)
      otlp_endpoint: http://otel-collector:4318/v1/traces
      service_name: rayfin
      ray_tracing: true              # also trace Ray tasks/actors (Ray's tracing startup hook)
      sample_ratio: 1.0              # fraction of job traces kept
      metrics_publish_interval_s: 1  # how often desk gauges are re-published

The same settings travel to Ray workers as the standard OpenTelemetry environment variables
(`OTEL_TRACES_EXPORTER`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`), so a
collector set up for other services reads them the usual way.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rayfin.config_base import ConfigModel, parse_section

Exporter = Literal["console", "otlp", "none"]


class TelemetryConfig(ConfigModel):
    exporter: Exporter = Field("none", description="where spans go: console (stdout), otlp (a collector), none")
    otlp_endpoint: str | None = Field(
        None, min_length=1, description="OTLP/HTTP traces URL, e.g. http://otel-collector:4318/v1/traces")
    service_name: str = Field("rayfin", min_length=1, max_length=128)
    ray_tracing: bool = Field(True, description="install Ray's tracing startup hook so Ray tasks join the trace")
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    metrics_publish_interval_s: float = Field(1.0, ge=0.0, le=60.0)

    @model_validator(mode="after")
    def _endpoint_for_otlp(self) -> "TelemetryConfig":
        if self.exporter == "otlp" and not self.otlp_endpoint:
            raise ValueError("exporter 'otlp' needs otlp_endpoint (e.g. http://127.0.0.1:4318/v1/traces)")
        if self.otlp_endpoint and not self.otlp_endpoint.startswith(("http://", "https://")):
            raise ValueError(f"otlp_endpoint must be an http(s) URL; got {self.otlp_endpoint!r}")
        return self

    def env(self) -> dict[str, str]:
        """Standard OpenTelemetry environment variables carrying these settings to Ray workers."""
        out = {"OTEL_TRACES_EXPORTER": self.exporter, "OTEL_SERVICE_NAME": self.service_name,
               "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": f"{self.sample_ratio:g}"}
        if self.otlp_endpoint:
            out["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = self.otlp_endpoint
        return out

    @classmethod
    def from_env(cls, environ: dict[str, str]) -> "TelemetryConfig":
        """Rebuild from `env()` (in a Ray worker, where the hook takes no arguments)."""
        data: dict[str, Any] = {"exporter": environ.get("OTEL_TRACES_EXPORTER", "none") or "none",
                                "service_name": environ.get("OTEL_SERVICE_NAME", "rayfin") or "rayfin"}
        if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            data["otlp_endpoint"] = environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        if environ.get("OTEL_TRACES_SAMPLER_ARG"):
            data["sample_ratio"] = environ["OTEL_TRACES_SAMPLER_ARG"]
        if data["exporter"] not in ("console", "otlp", "none"):
            data["exporter"] = "none"  # e.g. "jaeger" meant for another SDK: not ours to set up
        return parse_telemetry(data, source="environment (OTEL_*)")


def parse_telemetry(data: Any, source: str = "telemetry") -> TelemetryConfig:
    """The `telemetry:` section validated on its own; errors name each field as `telemetry.<field>`."""
    return parse_section(TelemetryConfig, data, section="telemetry", source=source,
                         what=" (exporter, otlp_endpoint, service_name, ...)")


def telemetry_config(config: Any) -> TelemetryConfig:
    """The telemetry settings of a RayfinConfig, or a `telemetry:` section given alone."""
    return parse_telemetry(getattr(config, "telemetry", config))
