"""The `autoscaling:` section of the rayfin config: its model lives with its feature.

`RayfinConfig.autoscaling` is an `AutoscalingSettings`, validated once when the config is
loaded (errors carry `autoscaling.<field>` paths); `parse_autoscaling(data)` validates the
section on its own (a benchmark, a test). An empty section is valid: forecasting on, no pool
gets capacity ahead of demand until it is listed under `pools:` (every pool still gets its
demand forecast and metrics).

    autoscaling:
      quantile: 0.9              # provision for the P90 of forecast demand
      release_after_s: 300       # forecast must stay lower this long before capacity is released
      forecast: {bin_s: 60, season_s: 86400, week_seasons: 7}
      pools:
        risk: {lead_time_s: 180, max_gpus: 32, bundle: {GPU: 1, rayfin_pool_risk: 1}}
      desks:
        fx: {pool: general, gpus_per_request_per_s: 0.05}
"""
from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from rayfin.config_base import ConfigModel, parse_section
from rayfin.forecast import ForecastParams

POOL_RESOURCE_PREFIX = "rayfin_pool_"


class ForecastSettings(ConfigModel):
    bin_s: float = Field(60.0, gt=0, le=86_400, description="forecast resolution")
    season_s: float = Field(86_400.0, gt=0, description="daily seasonality")
    week_seasons: int = Field(7, ge=0, le=31, description="seasons per week; 0 disables day-of-week")
    offset: float = Field(1.0, gt=0, description="log(x + offset): about the smallest load that matters")
    alpha: float = Field(0.02, ge=0, le=1)
    gamma: float = Field(0.15, ge=0, le=1)
    kernel_bins: int = Field(3, ge=0, le=1000)

    @model_validator(mode="after")
    def _season_holds_bins(self) -> "ForecastSettings":
        if self.season_s < self.bin_s:
            raise ValueError(f"season_s ({self.season_s:g}) must be >= bin_s ({self.bin_s:g})")
        return self

    def params(self, **overrides: Any) -> ForecastParams:
        return ForecastParams(**{**self.model_dump(), **overrides})


class PoolAutoscaling(ConfigModel):
    """Capacity ahead of demand for one desk pool (the pool's GPUs, as Ray resources)."""

    lead_time_s: float = Field(180.0, ge=0, le=86_400, description="time a node of this pool takes to start")
    min_gpus: float = Field(0.0, ge=0, description="always request at least this much")
    max_gpus: float | None = Field(None, gt=0, description="never request more; null = no cap")
    headroom: float = Field(0.0, ge=0, le=10, description="extra fraction on top of the forecast")
    slack: float = Field(0.2, ge=0, lt=1, description="fraction of a bundle not worth requesting")
    bundle: dict[str, float] | None = Field(
        None, description="resources of one GPU's bundle; default {GPU: 1, rayfin_pool_<pool>: 1}")

    @model_validator(mode="after")
    def _bundle_has_gpu(self) -> "PoolAutoscaling":
        if self.bundle is not None and self.bundle.get("GPU", 0) <= 0:
            raise ValueError("bundle must contain GPU > 0 (the bundle stands for GPUs of the pool)")
        if self.max_gpus is not None and self.max_gpus < self.min_gpus:
            raise ValueError(f"max_gpus ({self.max_gpus:g}) must be >= min_gpus ({self.min_gpus:g})")
        return self

    def bundle_for(self, pool: str) -> dict[str, float]:
        return dict(self.bundle) if self.bundle else {"GPU": 1.0, f"{POOL_RESOURCE_PREFIX}{pool}": 1.0}


class DeskAutoscaling(ConfigModel):
    """How a desk's serving load turns into GPUs of a pool (0: forecast and export only)."""

    pool: str | None = None
    gpus_per_request_per_s: float = Field(0.0, ge=0, description="GPUs one request/s keeps busy")


class AutoscalingSettings(ConfigModel):
    enabled: bool = True
    quantile: float = Field(0.9, gt=0, lt=1, description="forecast quantile to provision for")
    release_after_s: float = Field(300.0, ge=0, le=86_400,
                                   description="forecast must stay lower this long before capacity is released")
    forecast: ForecastSettings = ForecastSettings()
    pools: dict[str, PoolAutoscaling] = Field(default_factory=dict)
    desks: dict[str, DeskAutoscaling] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _desks_name_pools(self) -> "AutoscalingSettings":
        for name, desk in self.desks.items():
            if desk.gpus_per_request_per_s > 0 and desk.pool is None:
                raise ValueError(f"desks.{name}.pool is required when gpus_per_request_per_s > 0")
        return self


def parse_autoscaling(data: AutoscalingSettings | dict[str, Any] | None,
                      source: str = "autoscaling") -> AutoscalingSettings:
    """The `autoscaling:` section validated on its own; a model passes through unchanged."""
    return parse_section(AutoscalingSettings, data, section=source, source=source)
