"""`TelemetryRecorder`: the controller's `Recorder` that exports Ray metrics and job traces.

Metrics (rayfin.telemetry.metrics.METRICS) go through `ray.util.metrics`, so they appear on
Ray's Prometheus endpoint (prefixed `ray_`) and in the dashboard's metrics view.

Traces: one trace per job, its root span lasting from submission to the terminal state:

    rayfin.job                      submit -> SUCCEEDED | FAILED | CANCELLED | PREEMPTED
    ├── rayfin.job.queue            submit -> admit (events: each new wait reason); again per requeue
    ├── rayfin.job.admit            the admission decision: reasons, placement, borrowed GPUs
    ├── rayfin.job.place            admit -> runner started (placement group reserved, runner up)
    ├── rayfin.job.run              runner started -> finished, lost or preempted
    ├── rayfin.job.preempt          preemption decided -> GPUs taken back (the grace period)
    ├── rayfin.job.refuse           a refusal decision and its reasons
    └── rayfin.job.finish           the terminal state and its reason

Decision reasons ride as attributes (`rayfin.decision.reasons`, `rayfin.reason`). Span state is
kept per job id and dropped at the terminal state. Every method swallows its own errors: a
telemetry problem must never stop the controller's cycle.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from placement.topology import Topology
from rayfin.telemetry import tracing
from rayfin.telemetry.config import TelemetryConfig
from rayfin.telemetry.metrics import MetricsSink, ray_metrics, reason_code

log = logging.getLogger("rayfin.telemetry")
PRIORITY_LABELS = {0: "batch", 1: "normal", 2: "critical"}
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "PREEMPTED")
CYCLE_STEPS = ("observe", "snapshot", "decide", "audit", "act")


def _ns(t: float) -> int:
    return int(t * 1e9)


def _safe(fn: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(self: "TelemetryRecorder", *args: Any, **kwargs: Any) -> None:
        try:
            with self._lock:
                fn(self, *args, **kwargs)
        except Exception:  # noqa: BLE001 - see module docstring
            self.errors += 1
            if self.errors <= 5 or self.errors % 1000 == 0:
                log.exception("telemetry %s failed (%d errors so far)", fn.__name__, self.errors)
    return wrapper


@dataclass
class _JobTrace:
    root: Span
    desk: str
    submitted_at: float
    queue: Span | None = None
    place: Span | None = None
    run: Span | None = None
    preempt: Span | None = None
    wait_reasons: tuple[str, ...] = ()

    def ctx(self) -> Any:
        return trace.set_span_in_context(self.root)


class HasTelemetry(Protocol):
    """What the recorder reads of a `RayfinConfig` (this package sits below rayfin.config)."""

    @property
    def telemetry(self) -> TelemetryConfig: ...


class TelemetryRecorder:
    """Recorder for `ControllerCore`: Ray metrics + OpenTelemetry spans.

    `metrics` (default: `ray.util.metrics`), `tracer_provider` (default: the process's, set up
    from the config's `telemetry:` section) and `clock` are injectable for tests.
    """

    def __init__(self, config: HasTelemetry, *, metrics: MetricsSink | None = None, tracer_provider: Any = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings: TelemetryConfig = config.telemetry
        self.metrics = metrics if metrics is not None else ray_metrics()
        self.tracer = tracing.tracer(self.settings, tracer_provider)
        self.clock = clock
        self.monotonic = monotonic
        self.traces: dict[str, _JobTrace] = {}
        self.errors = 0
        self._last_publish: float | None = None
        self._lock = threading.RLock()
        self._pools = _pool_of_islands(getattr(config, "cluster", None))
        self._max = {d.name: (-1.0 if d.borrowing_limit is None else float(d.nominal_gpus + d.borrowing_limit))
                     for d in getattr(config, "desks", [])}
        self._windows: set[str] = set()

    # ---------------------------------------------------------------- spans
    def _span(self, name: str, jt: _JobTrace, start: float | None = None, **attrs: Any) -> Span:
        return self.tracer.start_span(name, context=jt.ctx(), start_time=_ns(self.clock() if start is None else start),
                                      attributes={k: v for k, v in attrs.items() if v is not None})

    def _instant(self, name: str, jt: _JobTrace, **attrs: Any) -> None:
        now = self.clock()
        self._span(name, jt, now, **attrs).end(end_time=_ns(now))

    @staticmethod
    def _end(span: Span | None, at: float, **attrs: Any) -> None:
        if span is not None and span.is_recording():
            span.set_attributes({k: v for k, v in attrs.items() if v is not None})
        if span is not None:
            span.end(end_time=_ns(at))

    def _trace_for(self, job_id: str, desk: str, job: Any = None) -> _JobTrace:
        """The job's trace, started late for jobs submitted before this recorder existed (recovery)."""
        jt = self.traces.get(job_id)
        if jt is None:
            submitted = float(getattr(job, "submitted_at", None) or self.clock())
            attrs = _job_attrs(job) if job is not None else {"rayfin.job_id": job_id, "rayfin.desk": desk}
            root = self.tracer.start_span("rayfin.job", start_time=_ns(submitted),
                                          attributes={**attrs, "rayfin.trace_started_late": True})
            jt = self.traces[job_id] = _JobTrace(root, desk, submitted)
            tracing.register_job_span(job_id, root)
        return jt

    # ---------------------------------------------------------------- Recorder protocol
    @_safe
    def submitted(self, job: Any) -> None:
        self.metrics.inc("rayfin_jobs_submitted", 1, {"desk": job.desk,
                                                      "priority": PRIORITY_LABELS.get(int(job.priority), "normal")})
        if job.kind == "serving":
            return
        root = self.tracer.start_span("rayfin.job", start_time=_ns(job.submitted_at), attributes=_job_attrs(job))
        root.add_event("submitted", {"rayfin.gpus": float(job.gpus)}, timestamp=_ns(job.submitted_at))
        jt = self.traces[job.job_id] = _JobTrace(root, job.desk, float(job.submitted_at))
        jt.queue = self._span("rayfin.job.queue", jt, job.submitted_at, **{"rayfin.attempt": int(job.attempts) + 1})
        tracing.register_job_span(job.job_id, root)

    @_safe
    def refused(self, desk: str, reason: str) -> None:
        """A submission refused before it was queued (it never fits the desk)."""
        self.metrics.inc("rayfin_refusals", 1, {"desk": desk, "reason": reason_code(reason)})
        now = self.clock()
        span = self.tracer.start_span("rayfin.submit.refused", start_time=_ns(now),
                                      attributes={"rayfin.desk": desk, "rayfin.reason": reason,
                                                  "rayfin.decision.verdict": "refuse"})
        span.set_status(Status(StatusCode.ERROR, reason))
        span.end(end_time=_ns(now))

    @_safe
    def decided(self, decision: Any) -> None:
        verdict = getattr(decision.verdict, "value", decision.verdict)
        reasons = tuple(str(r) for r in decision.reasons)
        attrs = {"rayfin.decision.verdict": verdict, "rayfin.decision.reasons": reasons,
                 "rayfin.decision.reason": "; ".join(reasons)}
        jt = self._trace_for(decision.job_id, decision.desk)
        now = self.clock()
        if verdict == "admit":
            borrowed = float(decision.borrowed or 0.0)
            self.metrics.inc("rayfin_admissions", 1, {"desk": decision.desk, "borrowing": "yes" if borrowed else "no"})
            self.metrics.observe("rayfin_job_wait_seconds", max(0.0, now - jt.submitted_at), {"desk": decision.desk})
            placement = [f"{i}:{g:g}" for i, g in decision.placement]
            self._end(jt.queue, now, **{"rayfin.wait_s": now - jt.submitted_at})
            jt.queue = None
            self._instant("rayfin.job.admit", jt, **attrs, **{"rayfin.placement": placement,
                                                              "rayfin.borrowed_gpus": borrowed})
            jt.place = self._span("rayfin.job.place", jt, now, **{"rayfin.placement": placement})
        elif verdict == "wait":
            if reasons != jt.wait_reasons:
                jt.wait_reasons = reasons
                target = jt.queue if jt.queue is not None else jt.root
                target.add_event("wait", {**attrs, "rayfin.victims": tuple(decision.victims)}, timestamp=_ns(now))
                target.set_attribute("rayfin.wait.reason", attrs["rayfin.decision.reason"])
        elif verdict == "preempt":
            code = reason_code(decision.code)
            self.metrics.inc("rayfin_preemptions_planned", 1, {"desk": decision.desk, "reason": code})
            jt.root.add_event("preemption_planned", attrs, timestamp=_ns(now))
            if jt.preempt is None:
                jt.preempt = self._span("rayfin.job.preempt", jt, now, **attrs, **{
                    "rayfin.preempt.reason_code": code, "rayfin.preempt.beneficiary": decision.beneficiary,
                    "rayfin.preempt.deadline": decision.deadline})
        elif verdict == "refuse":
            self.metrics.inc("rayfin_refusals", 1, {"desk": decision.desk, "reason": reason_code(decision.code)})
            self._end(jt.queue, now)
            jt.queue = None
            self._instant("rayfin.job.refuse", jt, **attrs)

    @_safe
    def state_changed(self, job: Any, old_state: str) -> None:
        if job.kind == "serving":
            return
        jt = self._trace_for(job.job_id, job.desk, job)
        now = self.clock()
        if job.state == "RUNNING":
            self._started(jt, job)
        elif job.state == "PENDING":   # requeued: preempted or lost, with retries left
            self.metrics.inc("rayfin_jobs_requeued", 1, {"desk": job.desk})
            self._end(jt.place, now)
            self._end(jt.run, now, **{"rayfin.outcome": "requeued", "rayfin.reason": job.reason})
            self._end(jt.preempt, now)
            jt.place = jt.run = jt.preempt = None
            jt.root.add_event("requeued", {"rayfin.reason": job.reason, "rayfin.attempt": int(job.attempts) + 1},
                              timestamp=_ns(now))
            jt.wait_reasons = ()
            jt.queue = self._span("rayfin.job.queue", jt, now, **{"rayfin.attempt": int(job.attempts) + 1})
        elif job.state in TERMINAL:
            self._finished(jt, job, old_state)

    @_safe
    def preempted(self, job: Any, reason: str, lost_gpu_s: float = 0.0) -> None:
        code = reason_code(job.reason_code)
        self.metrics.inc("rayfin_preemptions", 1, {"desk": job.desk, "reason": code})
        self.metrics.inc("rayfin_preemption_lost_gpu_seconds", lost_gpu_s, {"desk": job.desk, "reason": code})
        jt = self._trace_for(job.job_id, job.desk, job)
        now = self.clock()
        if jt.preempt is None:   # decided before a controller restart
            jt.preempt = self._span("rayfin.job.preempt", jt, now)
        self._end(jt.preempt, now, **{"rayfin.reason": reason, "rayfin.preempt.reason_code": code})
        jt.preempt = None
        jt.root.add_event("preempted", {"rayfin.reason": reason, "rayfin.preempt.reason_code": code},
                          timestamp=_ns(now))

    @_safe
    def deadline_changed(self, job: Any, code: Any) -> None:
        """A deadline job became at risk, or escalated (rayfin.controller.deadlines): a counter
        per transition and an event on the job's trace."""
        c = reason_code(code)
        if c == "deadline_at_risk":
            self.metrics.inc("rayfin_deadline_at_risk", 1, {"desk": job.desk})
        elif c == "deadline_escalated":
            self.metrics.inc("rayfin_deadline_escalations", 1, {"desk": job.desk})
        jt = self.traces.get(job.job_id)
        if jt is not None:
            jt.root.add_event(c, {"rayfin.deadline": float(job.deadline or 0.0), "rayfin.eta": float(job.eta or -1.0)},
                              timestamp=_ns(self.clock()))

    @_safe
    def cycle(self, report: Any, usage: dict[str, dict[str, Any]], snapshot: Any) -> None:
        timings = dict(getattr(report, "timings_ms", {}) or {})
        for step in CYCLE_STEPS:
            if step in timings:
                self.metrics.observe("rayfin_controller_cycle_ms", float(timings[step]), {"step": step})
        self.metrics.observe("rayfin_controller_cycle_ms", float(sum(timings.values())), {"step": "total"})
        self.metrics.inc("rayfin_controller_cycles", 1, {})
        self._notice_started(snapshot)
        now = self.monotonic()
        every = self.settings.metrics_publish_interval_s
        if self._last_publish is not None and now - self._last_publish < every:
            return
        self._last_publish = now
        self._publish_desks(usage)
        self._publish_pools(snapshot)

    @_safe
    def window(self, effective: str) -> None:
        """The market quota window whose quotas now apply: 1 for it, 0 for those seen before."""
        self._windows.add(effective)
        for w in sorted(self._windows):
            self.metrics.set("rayfin_quota_window", 1.0 if w == effective else 0.0, {"window": w})

    # ---------------------------------------------------------------- helpers
    def _started(self, jt: _JobTrace, job: Any) -> None:
        if jt.run is not None:
            return
        start = float(job.started_at or self.clock())
        self._end(jt.place, start)
        jt.place = None
        placement = [f"{i}:{g:g}" for i, g in (job.placement or ())]
        jt.run = self._span("rayfin.job.run", jt, start, **{
            "rayfin.placement": placement, "rayfin.attempt": int(job.attempts) + 1,
            "rayfin.cuda_visible_devices": (job.info or {}).get("cuda_visible_devices")})

    def _notice_started(self, snapshot: Any) -> None:
        """Open the run span of jobs that started since last cycle.

        The core reports ADMITTED -> RUNNING only if its `started` transition calls
        `state_changed`; without that, a running job is recognised by its start time in the snapshot.
        """
        for rj in getattr(snapshot, "running", ()):
            jt = self.traces.get(rj.job_id)
            if jt is not None and jt.place is not None and jt.run is None and rj.started_at > jt.submitted_at:
                self._end(jt.place, rj.started_at)
                jt.place = None
                jt.run = self._span("rayfin.job.run", jt, rj.started_at, **{
                    "rayfin.placement": [f"{i}:{g:g}" for i, g in rj.placement]})

    def _finished(self, jt: _JobTrace, job: Any, old_state: str) -> None:
        end = float(job.finished_at or self.clock())
        state = job.state
        self.metrics.inc("rayfin_jobs_finished", 1, {"desk": job.desk, "state": state})
        if job.started_at is not None and job.finished_at is not None:
            self.metrics.observe("rayfin_job_duration_seconds", max(0.0, job.finished_at - job.started_at),
                                 {"desk": job.desk, "state": state})
            if jt.run is None and old_state in ("RUNNING", "ADMITTED"):
                jt.run = self._span("rayfin.job.run", jt, float(job.started_at))
        self._end(jt.queue, end)
        self._end(jt.place, end)
        self._end(jt.preempt, end)
        self._end(jt.run, end, **{"rayfin.outcome": state.lower(), "rayfin.reason": job.reason})
        jt.queue = jt.place = jt.preempt = jt.run = None
        fin = self._span("rayfin.job.finish", jt, end, **{"rayfin.state": state, "rayfin.reason": job.reason,
                                                          "rayfin.error": (job.error or "")[:500] or None})
        fin.end(end_time=_ns(end))
        jt.root.set_attributes({"rayfin.state": state, "rayfin.reason": job.reason,
                                "rayfin.attempts": int(job.attempts) + 1})
        if state == "SUCCEEDED":
            jt.root.set_status(Status(StatusCode.OK))
        elif state in ("FAILED", "PREEMPTED"):
            jt.root.set_status(Status(StatusCode.ERROR, job.reason))
        jt.root.end(end_time=_ns(end))
        self.traces.pop(job.job_id, None)
        tracing.register_job_span(job.job_id, None)

    def _publish_desks(self, usage: dict[str, dict[str, Any]]) -> None:
        gauges = (("rayfin_gpus_nominal", "nominal"), ("rayfin_gpus_in_use", "in_use"),
                  ("rayfin_gpus_serving", "serving"), ("rayfin_gpus_borrowed", "borrowed"),
                  ("rayfin_gpus_lent", "lent"), ("rayfin_queue_depth", "queued"),
                  ("rayfin_queue_gpus", "queued_gpus"), ("rayfin_queue_oldest_wait_seconds", "oldest_wait_s"),
                  ("rayfin_jobs_running", "running"))
        for desk, row in usage.items():
            tags = {"desk": desk}
            for name, key in gauges:
                if key in row:
                    self.metrics.set(name, float(row[key]), tags)
            mx = row.get("max", self._max.get(desk))   # the row's: a quota window may change it
            if mx is not None:
                self.metrics.set("rayfin_gpus_max", -1.0 if mx == float("inf") else float(mx), tags)

    def _publish_pools(self, snapshot: Any) -> None:
        if snapshot is None or not self._pools:
            return
        free = snapshot.free()
        unavailable = getattr(snapshot, "unavailable", {}) or {}
        totals: dict[str, list[float]] = {}
        for island, (pool, gpus) in self._pools.items():
            row = totals.setdefault(pool, [0.0, 0.0, 0.0])
            lost = float(unavailable.get(island, 0.0))
            row[0] += gpus - lost
            row[1] += max(0.0, float(free.get(island, 0.0)))
            row[2] += lost
        for pool, (cap, fr, lost) in totals.items():
            tags = {"pool": pool}
            self.metrics.set("rayfin_pool_gpus_capacity", cap, tags)
            self.metrics.set("rayfin_pool_gpus_free", fr, tags)
            self.metrics.set("rayfin_pool_gpus_unavailable", lost, tags)


def _job_attrs(job: Any) -> dict[str, Any]:
    attrs = {"rayfin.job_id": job.job_id, "rayfin.desk": job.desk, "rayfin.job.name": job.name or None,
             "rayfin.kind": job.kind, "rayfin.gpus": float(job.gpus),
             "rayfin.priority": PRIORITY_LABELS.get(int(job.priority), str(job.priority)),
             "rayfin.comm": job.comm, "rayfin.max_retries": int(job.max_retries)}
    return {k: v for k, v in attrs.items() if v is not None}


def _pool_of_islands(cluster: Any) -> dict[str, tuple[str, float]]:
    if cluster is None:
        return {}
    return {i.id: (i.pool, float(i.gpus)) for i in Topology.from_config(cluster).islands}


__all__ = ["TelemetryRecorder"]
