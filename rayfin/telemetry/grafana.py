"""The Grafana dashboard over rayfin's metrics, generated so it can only query what rayfin exports.

    python -m rayfin.telemetry.grafana > configs/grafana/rayfin-dashboard.json

Import it in Grafana (Dashboards > New > Import) and pick the Prometheus data source that scrapes
Ray's metrics endpoint (`metrics:` line of `rayfin up`). Variables: `datasource`, `desk` (multi).
Forecast panels read the autoscaler's gauges (rayfin/controller/autoscale_ray.py).
"""
from __future__ import annotations

import json
import sys
from typing import Any

UID = "rayfin-overview"
DS = {"type": "prometheus", "uid": "${datasource}"}
D = '{desk=~"$desk"}'
RATE = "$__rate_interval"


class _Layout:
    """Places panels on Grafana's 24-column grid, left to right, top to bottom."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = 0
        self.row_h = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self.y += self.row_h
        self.x, self.row_h = 0, 0
        self.panels.append({"type": "row", "title": title, "id": self._id(), "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def add(self, title: str, targets: list[tuple[str, str]], *, unit: str = "short", w: int = 8, h: int = 8,
            kind: str = "timeseries", description: str = "", stack: bool = False, **extra: Any) -> None:
        if self.x + w > 24:
            self.y += self.row_h
            self.x, self.row_h = 0, 0
        panel: dict[str, Any] = {
            "type": kind, "title": title, "id": self._id(), "datasource": DS, "description": description,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
                        for i, (expr, legend) in enumerate(targets)],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi"}} if kind == "timeseries" else {},
        }
        if stack:
            panel["fieldConfig"]["defaults"]["custom"] = {"stacking": {"mode": "normal"}, "fillOpacity": 30}
        panel.update(extra)
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def _q(metric: str, by: str = "desk", sel: str = D) -> str:
    return f"sum by ({by}) ({metric}{sel})"


def _rate(metric: str, by: str = "desk", sel: str = D) -> str:
    return f"sum by ({by}) (rate({metric}{sel}[{RATE}]))"


def _quantile(q: float, metric: str, by: str = "desk", sel: str = D) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}{sel}[{RATE}])))"


def build() -> dict[str, Any]:
    L = _Layout()
    L.row("Desk pools")
    L.add("GPUs in use / nominal: $desk", [(_q("ray_rayfin_gpus_in_use", "desk", '{desk="$desk"}'), "in use"),
                                           (_q("ray_rayfin_gpus_nominal", "desk", '{desk="$desk"}'), "nominal"),
                                           (_q("ray_rayfin_gpus_borrowed", "desk", '{desk="$desk"}'), "borrowed")],
          kind="bargauge", w=6, h=5, repeat="desk", repeatDirection="h", maxPerRow=4,
          description="One panel per desk: GPUs held now against the desk's guaranteed (nominal) quota.")
    L.add("GPUs in use vs nominal", [(_q("ray_rayfin_gpus_in_use"), "{{desk}} in use"),
                                     (_q("ray_rayfin_gpus_nominal"), "{{desk}} nominal")], w=12,
          description="Dashed lines are nominal quotas; in use above nominal is borrowed.")
    L.add("Borrowed and lent GPUs", [(_q("ray_rayfin_gpus_borrowed"), "{{desk}} borrowed"),
                                     (_q("ray_rayfin_gpus_lent"), "{{desk}} lent")], w=12)
    L.add("Serving GPUs", [(_q("ray_rayfin_gpus_serving"), "{{desk}}")], stack=True)
    L.add("Pool GPUs", [(_q("ray_rayfin_pool_gpus_capacity", "pool", ""), "{{pool}} capacity"),
                        (_q("ray_rayfin_pool_gpus_free", "pool", ""), "{{pool}} free"),
                        (_q("ray_rayfin_pool_gpus_unavailable", "pool", ""), "{{pool}} lost")])
    L.add("Batch jobs running", [(_q("ray_rayfin_jobs_running"), "{{desk}}")], stack=True)

    L.row("Queues")
    L.add("Queue depth", [(_q("ray_rayfin_queue_depth"), "{{desk}} jobs"),
                          (_q("ray_rayfin_queue_gpus"), "{{desk}} GPUs asked")])
    L.add("Oldest wait", [(_q("ray_rayfin_queue_oldest_wait_seconds"), "{{desk}}")], unit="s")
    L.add("Wait to admission p50 / p95", [(_quantile(0.5, "ray_rayfin_job_wait_seconds_bucket"), "{{desk}} p50"),
                                          (_quantile(0.95, "ray_rayfin_job_wait_seconds_bucket"), "{{desk}} p95")],
          unit="s")

    L.row("Decisions")
    L.add("Submissions and admissions /s", [(_rate("ray_rayfin_jobs_submitted_total"), "{{desk}} submitted"),
                                            (_rate("ray_rayfin_admissions_total"), "{{desk}} admitted"),
                                            (_rate("ray_rayfin_admissions_total", "desk", '{desk=~"$desk",'
                                                   'borrowing="yes"}'), "{{desk}} admitted borrowing")],
          unit="reqps")
    L.add("Refusals /s by reason", [(_rate("ray_rayfin_refusals_total", "desk, reason"), "{{desk}} {{reason}}")],
          unit="reqps")
    L.add("Preemptions /s by reason", [(_rate("ray_rayfin_preemptions_total", "desk, reason"),
                                        "{{desk}} {{reason}}"),
                                       (_rate("ray_rayfin_jobs_requeued_total"), "{{desk}} requeued")],
          unit="reqps")
    L.add("Jobs finished /s by state", [(_rate("ray_rayfin_jobs_finished_total", "desk, state"),
                                         "{{desk}} {{state}}")], unit="reqps")
    L.add("Job duration p50 / p95", [
        (_quantile(0.5, "ray_rayfin_job_duration_seconds_bucket", "desk", '{desk=~"$desk",state="SUCCEEDED"}'),
         "{{desk}} p50"),
        (_quantile(0.95, "ray_rayfin_job_duration_seconds_bucket", "desk", '{desk=~"$desk",state="SUCCEEDED"}'),
         "{{desk}} p95")], unit="s")
    # GPU-seconds thrown away per second: the GPUs' worth of work preemptions are wasting
    L.add("Work lost to preemption (GPUs' worth)", [
        (_rate("ray_rayfin_preemption_lost_gpu_seconds_total", "desk, reason"), "{{desk}} {{reason}}")])

    L.row("Serving")
    L.add("Requests /s accepted and refused", [
        (_rate("ray_rayfin_serve_requests_total", "desk, outcome"), "{{desk}} {{outcome}}")], unit="reqps")
    L.add("Refused requests /s by reason", [
        (_rate("ray_rayfin_serve_requests_total", "desk, reason", '{desk=~"$desk",outcome!="accepted"}'),
         "{{desk}} {{reason}}")], unit="reqps")
    L.add("Gateway latency p50 / p99", [
        (_quantile(0.5, "ray_rayfin_serve_request_seconds_bucket", "desk"), "{{desk}} p50"),
        (_quantile(0.99, "ray_rayfin_serve_request_seconds_bucket", "desk"), "{{desk}} p99")], unit="s")

    L.row("Forecast vs actual")
    L.add("Request rate: actual vs forecast", [(_q("ray_rayfin_desk_request_rate"), "{{desk}} actual"),
                                               (_q("ray_rayfin_desk_request_rate_forecast"), "{{desk}} forecast")],
          unit="reqps", w=12)
    L.add("Pool GPU demand: actual, forecast, provisioned", [
        (_q("ray_rayfin_pool_demand_gpus", "pool", ""), "{{pool}} actual"),
        (_q("ray_rayfin_pool_demand_gpus_forecast", "pool", ""), "{{pool}} forecast"),
        (_q("ray_rayfin_pool_provisioned_gpus", "pool", ""), "{{pool}} provisioned")], w=12)

    L.row("Controller")
    L.add("Cycle time p50 / p99 by step", [
        (_quantile(0.5, "ray_rayfin_controller_cycle_ms_bucket", "step", ""), "{{step}} p50"),
        (_quantile(0.99, "ray_rayfin_controller_cycle_ms_bucket", "step", ""), "{{step}} p99")], unit="ms", w=12)
    L.add("Cycles /s", [(f"sum(rate(ray_rayfin_controller_cycles_total[{RATE}]))", "cycles/s")], unit="reqps", w=12)

    return {
        "uid": UID, "title": "rayfin: desks, queues, decisions, serving", "tags": ["rayfin", "ray", "gpu"],
        "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"}, "timezone": "browser",
        "annotations": {"list": []},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1},
            {"name": "desk", "label": "Desk", "type": "query", "datasource": DS,
             "query": {"query": "label_values(ray_rayfin_gpus_nominal, desk)", "refId": "desk"},
             "definition": "label_values(ray_rayfin_gpus_nominal, desk)", "multi": True, "includeAll": True,
             "allValue": ".*", "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
             "refresh": 2, "sort": 1, "hide": 0},
        ]},
        "panels": L.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
