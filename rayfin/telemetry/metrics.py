"""Every metric rayfin exports, declared once, and the sinks that record them.

Names here are Ray metric names; Ray's Prometheus endpoint prefixes them with `ray_`, and a
Counter appears as `ray_<name>_total` (histograms as `_bucket`, `_sum`, `_count`). The Grafana
dashboard (configs/grafana/) is generated from `METRICS` and a test checks it queries nothing
else. Tags are bounded: desks, pools, states and reason codes (rayfin.reasons), never job ids.

`RayMetrics` records through `ray.util.metrics` (the controller actor, the gateway replicas);
`MemoryMetrics` keeps values in a dict for unit tests that run without Ray.
"""
from __future__ import annotations

import atexit
import re
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, Mapping, Protocol

Kind = Literal["gauge", "counter", "histogram"]

SECONDS_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600)
CYCLE_MS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000)
REQUEST_S_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    description: str
    tags: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    def prometheus_names(self) -> tuple[str, ...]:
        """The series names this metric has on Ray's Prometheus endpoint."""
        base = "ray_" + self.name
        if self.kind == "counter":
            return (base + "_total", base)  # Ray also exports counters as a gauge, for compatibility
        if self.kind == "histogram":
            return (base + "_bucket", base + "_sum", base + "_count")
        return (base,)


def _g(name: str, desc: str, *tags: str) -> MetricSpec:
    return MetricSpec(name, "gauge", desc, tags)


def _c(name: str, desc: str, *tags: str) -> MetricSpec:
    return MetricSpec(name, "counter", desc, tags)


def _h(name: str, desc: str, buckets: tuple[float, ...], *tags: str) -> MetricSpec:
    return MetricSpec(name, "histogram", desc, tags, buckets)


METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    # desk pools, re-published from the controller's usage table
    _g("rayfin_gpus_nominal", "GPUs guaranteed to the desk (nominal quota).", "desk"),
    _g("rayfin_gpus_max", "Most GPUs the desk may hold (nominal + borrowing limit; -1 = no limit).", "desk"),
    _g("rayfin_gpus_in_use", "GPUs the desk holds now (batch jobs and serving replicas).", "desk"),
    _g("rayfin_gpus_serving", "GPUs of the desk's Serve deployments.", "desk"),
    _g("rayfin_gpus_borrowed", "GPUs the desk holds above its nominal quota.", "desk"),
    _g("rayfin_gpus_lent", "Unused nominal GPUs of the desk that other desks are borrowing.", "desk"),
    _g("rayfin_queue_depth", "Jobs of the desk waiting for GPUs.", "desk"),
    _g("rayfin_queue_gpus", "GPUs asked for by the desk's waiting jobs.", "desk"),
    _g("rayfin_queue_oldest_wait_seconds", "How long the desk's oldest waiting job has waited.", "desk"),
    _g("rayfin_jobs_running", "Batch jobs of the desk admitted or running.", "desk"),
    # cluster
    _g("rayfin_pool_gpus_capacity", "GPUs of the pool's islands that are up.", "pool"),
    _g("rayfin_pool_gpus_free", "Free GPUs of the pool.", "pool"),
    _g("rayfin_pool_gpus_unavailable", "GPUs of the pool on lost or cordoned nodes.", "pool"),
    _g("rayfin_quota_window", "1 for the market quota window whose quotas are in force, 0 for the others seen.",
       "window"),
    # job life
    _c("rayfin_jobs_submitted", "Jobs accepted into a desk's queue.", "desk", "priority"),
    _c("rayfin_admissions", "Jobs admitted (GPUs reserved).", "desk", "borrowing"),
    _c("rayfin_refusals", "Jobs refused, by reason code.", "desk", "reason"),
    _c("rayfin_preemptions", "Jobs preempted (grace over, GPUs taken back), by reason code.", "desk", "reason"),
    _c("rayfin_preemption_lost_gpu_seconds", "GPU-seconds of work a preemption threw away: the victim's GPUs x "
       "seconds since its last checkpoint (JobContext.report_checkpoint, or a new file seen in its checkpoint_dir), "
       "or since its start.",
       "desk", "reason"),
    _c("rayfin_preemptions_planned", "Preemptions decided (grace period started), by reason code.", "desk", "reason"),
    _c("rayfin_jobs_requeued", "Jobs sent back to the queue (preempted or lost with retries left).", "desk"),
    _c("rayfin_jobs_finished", "Jobs that reached a terminal state, by state.", "desk", "state"),
    _c("rayfin_deadline_at_risk", "Deadline jobs that became at risk (ETA after the deadline), at submit or "
       "later; once per transition.", "desk"),
    _c("rayfin_deadline_escalations", "Deadline jobs whose slack ran out (scheduled as critical from then on).",
       "desk"),
    _h("rayfin_job_wait_seconds", "Time from submission to admission.", SECONDS_BUCKETS, "desk"),
    _h("rayfin_job_duration_seconds", "Run time of finished jobs (start to end), by final state.",
       SECONDS_BUCKETS, "desk", "state"),
    # controller
    _h("rayfin_controller_cycle_ms", "Controller cycle time by step (observe, snapshot, decide, act, total).",
       CYCLE_MS_BUCKETS, "step"),
    _c("rayfin_controller_cycles", "Controller cycles run."),
    # serving gateway (recorded by rayfin.telemetry.serving)
    _c("rayfin_serve_requests", "Gateway requests by outcome (accepted, refused, error) and reason code.",
       "desk", "model", "outcome", "reason"),
    _c("rayfin_serve_edge_requests", "Predict requests the HAProxy edge (serve.edge: haproxy) passed on or "
       "refused, per desk, read from HAProxy's table every few seconds (refusals there reach no replica).",
       "desk", "outcome"),
    _h("rayfin_serve_request_seconds", "Gateway request latency of accepted requests.", REQUEST_S_BUCKETS,
       "desk", "model"),
)}


# ---------------------------------------------------------------------------------- reason codes
_CODE = re.compile(r"[a-z][a-z0-9_]{0,31}")


def reason_code(code: "Enum | str | None") -> str:
    """The metric tag value of a reason code: a `rayfin.reasons.ReasonCode` (or another enum of
    codes, e.g. the gateway's limits) as its value, a string that is already a short code as it
    is, anything else as "other". Prose is never read for a code: the decision carries one."""
    value = code.value if isinstance(code, Enum) else (code or "")
    return value if isinstance(value, str) and _CODE.fullmatch(value) else "other"


# ---------------------------------------------------------------------------------- sinks
class MetricsSink(Protocol):
    def set(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None: ...
    def inc(self, name: str, value: float = 1.0, tags: Mapping[str, str] | None = None) -> None: ...
    def observe(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None: ...


def _check(name: str, kind: Kind, tags: Mapping[str, str] | None) -> tuple[MetricSpec, dict[str, str]]:
    spec = METRICS.get(name)
    if spec is None:
        raise KeyError(f"metric {name!r} is not declared in rayfin.telemetry.metrics.METRICS")
    if spec.kind != kind:
        raise TypeError(f"metric {name!r} is a {spec.kind}, not a {kind}")
    tags = {k: str(v) for k, v in (tags or {}).items()}
    if set(tags) != set(spec.tags):
        raise ValueError(f"metric {name!r} takes tags {spec.tags}; got {tuple(sorted(tags))}")
    return spec, tags


class MemoryMetrics:
    """Values in a dict, keyed by (name, sorted tag items). For tests."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}

    @staticmethod
    def _key(name: str, tags: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted(tags.items()))

    def set(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        _, t = _check(name, "gauge", tags)
        self.values[self._key(name, t)] = float(value)

    def inc(self, name: str, value: float = 1.0, tags: Mapping[str, str] | None = None) -> None:
        _, t = _check(name, "counter", tags)
        k = self._key(name, t)
        self.values[k] = self.values.get(k, 0.0) + float(value)

    def observe(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        _, t = _check(name, "histogram", tags)
        self.values.setdefault(self._key(name, t), []).append(float(value))

    def get(self, name: str, **tags: str) -> Any:
        return self.values.get(self._key(name, {k: str(v) for k, v in tags.items()}))

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], Any]:
        return {t: v for (n, t), v in self.values.items() if n == name}


class RayMetrics:
    """Records through `ray.util.metrics`; the metric objects are made on first use."""

    def __init__(self) -> None:
        self._objs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _obj(self, spec: MetricSpec) -> Any:
        obj = self._objs.get(spec.name)
        if obj is None:
            # Imported on first use: MemoryMetrics users (unit tests, the CLI) never load Ray.
            from ray.util import metrics as m

            with self._lock:
                obj = self._objs.get(spec.name)
                if obj is None:
                    if spec.kind == "gauge":
                        obj = m.Gauge(spec.name, description=spec.description, tag_keys=spec.tags)
                    elif spec.kind == "counter":
                        obj = m.Counter(spec.name, description=spec.description, tag_keys=spec.tags)
                    else:
                        obj = m.Histogram(spec.name, description=spec.description, boundaries=list(spec.buckets),
                                          tag_keys=spec.tags)
                    self._objs[spec.name] = obj
        return obj

    def set(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        spec, t = _check(name, "gauge", tags)
        self._obj(spec).set(float(value), tags=t)

    def inc(self, name: str, value: float = 1.0, tags: Mapping[str, str] | None = None) -> None:
        spec, t = _check(name, "counter", tags)
        if value > 0:
            self._obj(spec).inc(float(value), tags=t)

    def observe(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        spec, t = _check(name, "histogram", tags)
        self._obj(spec).observe(float(value), tags=t)


class BufferedCounters:
    """Counter increments summed per series and handed to `sink` every `interval_s` by a daemon
    thread (and by `flush`); gauges and histograms pass straight through. For counters bumped on
    every request: one record per series per interval instead of one per request. Counts reach
    the sink up to `interval_s` late; a process that exits normally flushes at exit, and one
    killed in between loses what it had not flushed.
    Names and tags are checked when counted, as by the other sinks."""

    def __init__(self, sink: MetricsSink, interval_s: float = 1.0) -> None:
        self._sink = sink
        self.interval_s = interval_s
        self._pending: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def set(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        self._sink.set(name, value, tags)

    def observe(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        self._sink.observe(name, value, tags)

    def inc(self, name: str, value: float = 1.0, tags: Mapping[str, str] | None = None) -> None:
        key = (name, tuple(sorted((tags or {}).items())))
        with self._lock:
            if key not in self._pending:
                _check(name, "counter", tags)          # a new series: same errors as the sink's
            self._pending[key] = self._pending.get(key, 0.0) + float(value)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rayfin-metrics-flush", daemon=True)
                self._thread.start()
                atexit.register(self._flush_quietly)   # a process stopped normally hands in its last counts

    def flush(self) -> None:
        with self._lock:
            pending = {k: v for k, v in self._pending.items() if v}
            self._pending = {k: 0.0 for k in self._pending}     # known series: no re-check
        for (name, tags), value in pending.items():
            self._sink.inc(name, value, dict(tags))

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - a metrics backend hiccup must not end the thread or the exit
            pass

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            self._flush_quietly()


_DEFAULT: RayMetrics | None = None


def ray_metrics() -> RayMetrics:
    """One RayMetrics per process (Ray metric objects are per-process anyway)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = RayMetrics()
    return _DEFAULT


def prometheus_names(specs: Mapping[str, MetricSpec] | None = None) -> set[str]:
    """Every series name rayfin's metrics have on Ray's Prometheus endpoint."""
    return {n for s in (specs or METRICS).values() for n in s.prometheus_names()}
