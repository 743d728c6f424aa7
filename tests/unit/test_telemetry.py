"""TelemetryRecorder driven by the real ControllerCore on FakeBackend: metrics into MemoryMetrics,
spans into an in-memory exporter. No Ray; the clock is injected, so durations are exact."""
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from rayfin.controller.backend import FakeBackend
from rayfin.controller.core import ControllerCore
from rayfin.controller.ledger import SqliteLedger
from rayfin.errors import QuotaExceeded
from rayfin.telemetry import tracing
from rayfin.telemetry.config import TelemetryConfig
from rayfin.telemetry.metrics import METRICS, MemoryMetrics
from rayfin.telemetry.recorder import TelemetryRecorder
from tests.support.builders import Clock, config

TOK = {d: f"{d}-demo-token" for d in ("equities", "fx", "risk", "admin")}


def spec(gpus=1, **kw):
    return {"kind": "callable", "payload": b"x", "gpus": gpus, **kw}


class Env:
    def __init__(self, tmp_path, **cfg_patch):
        self.clock = Clock()
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.metrics = MemoryMetrics()
        cfg = config(**cfg_patch)
        # publish every cycle (interval 0) so gauges are checkable after one cycle
        cfg = cfg.model_copy(update={"telemetry": TelemetryConfig(metrics_publish_interval_s=0)})
        self.recorder = TelemetryRecorder(cfg, metrics=self.metrics, tracer_provider=provider, clock=self.clock)
        ids = iter(range(1000))
        self.backend = FakeBackend()
        self.core = ControllerCore(cfg, SqliteLedger(tmp_path / "ledger.db"), self.backend, clock=self.clock,
                                   new_id=lambda d: f"{d}-{next(ids):08x}", recorder=self.recorder)

    def run(self, n=1, dt=0.5):
        for _ in range(n):
            self.clock.advance(dt)
            self.core.cycle()

    def spans(self, job_id=None):
        out = list(self.exporter.get_finished_spans())
        if job_id is not None:
            out = [s for s in out if s.attributes.get("rayfin.job_id") == job_id
                   or (s.parent is not None and any(r.context.span_id == s.parent.span_id
                                                    and r.attributes.get("rayfin.job_id") == job_id for r in out))]
        return out

    def by_name(self, job_id):
        return {s.name: s for s in self.spans(job_id)}


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def test_job_life_is_one_trace_with_reasons(env):
    job = env.core.submit(TOK["fx"], "fx", spec(2))["job_id"]
    env.run()                                    # t=1000.5 admitted
    env.run()                                    # t=1001.0 group ready -> runner started
    env.run()                                    # t=1001.5 RUNNING observed
    env.clock.advance(3.0)
    env.backend.finish(job, result=b"42")
    env.run()                                    # t=1005.0 SUCCEEDED
    spans = env.by_name(job)
    assert {"rayfin.job", "rayfin.job.queue", "rayfin.job.admit", "rayfin.job.place", "rayfin.job.run",
            "rayfin.job.finish"} <= set(spans)
    root = spans["rayfin.job"]
    assert len({s.context.trace_id for s in spans.values()}) == 1          # one trace per job
    assert all(s.parent.span_id == root.context.span_id for n, s in spans.items() if n != "rayfin.job")
    assert root.attributes["rayfin.desk"] == "fx" and root.attributes["rayfin.priority"] == "normal"
    assert root.attributes["rayfin.state"] == "SUCCEEDED" and root.status.status_code == StatusCode.OK
    admit = spans["rayfin.job.admit"]
    assert admit.attributes["rayfin.decision.verdict"] == "admit"
    assert any("within nominal quota" in r for r in admit.attributes["rayfin.decision.reasons"])
    assert len(admit.attributes["rayfin.placement"]) == 1
    # the root spans submit (t=1000) to finish (t=1005): 5 s, in the injected clock
    assert (root.end_time - root.start_time) == pytest.approx(5e9)
    assert spans["rayfin.job.queue"].end_time == admit.start_time
    m = env.metrics
    assert m.get("rayfin_jobs_submitted", desk="fx", priority="normal") == 1
    assert m.get("rayfin_admissions", desk="fx", borrowing="no") == 1
    assert m.get("rayfin_jobs_finished", desk="fx", state="SUCCEEDED") == 1
    assert m.get("rayfin_job_wait_seconds", desk="fx") == [0.5]
    started = env.core.status(TOK["fx"], job)["started_at"]
    assert m.get("rayfin_job_duration_seconds", desk="fx", state="SUCCEEDED") == [pytest.approx(1005.0 - started)]
    assert env.recorder.traces == {} and env.recorder.errors == 0


def test_preemption_span_and_metrics_carry_the_reason(tmp_path):
    env = Env(tmp_path)
    big = env.core.submit(TOK["equities"], "equities", spec(8, priority="batch", workers="per_gpu"))["job_id"]
    env.run(3)
    assert env.core.status(TOK["equities"], big)["state"] == "RUNNING"
    assert env.metrics.get("rayfin_admissions", desk="equities", borrowing="yes") == 1
    assert env.metrics.get("rayfin_gpus_borrowed", desk="equities") == 4.0
    assert env.metrics.get("rayfin_gpus_lent", desk="fx") == 4.0
    fx = env.core.submit(TOK["fx"], "fx", spec(4))["job_id"]
    env.run()                                    # reclaim decided; equities job gets 1 s grace
    assert env.metrics.get("rayfin_preemptions_planned", desk="equities", reason="reclaim") == 1
    env.run(3, dt=1.0)                           # grace over -> preempted; fx admitted
    assert env.core.status(TOK["equities"], big)["state"] == "PREEMPTED"
    assert env.metrics.get("rayfin_preemptions", desk="equities", reason="reclaim") == 1
    assert env.metrics.get("rayfin_jobs_finished", desk="equities", state="PREEMPTED") == 1
    spans = env.by_name(big)
    pre = spans["rayfin.job.preempt"]
    assert "reclaimed" in pre.attributes["rayfin.reason"] and pre.attributes["rayfin.preempt.beneficiary"] == fx
    assert pre.end_time - pre.start_time >= 1e9                             # the grace period
    root = spans["rayfin.job"]
    assert root.status.status_code == StatusCode.ERROR and root.attributes["rayfin.state"] == "PREEMPTED"
    assert [e.name for e in root.events][-2:] == ["preemption_planned", "preempted"]
    assert spans["rayfin.job.run"].attributes["rayfin.outcome"] == "preempted"
    # the beneficiary waited with the reclaim as its reason, then was admitted
    fx_queue = next(s for s in env.spans() if s.name == "rayfin.job.queue"
                    and s.parent.span_id == env.recorder.traces[fx].root.get_span_context().span_id)
    (wait,) = [e for e in fx_queue.events if e.name == "wait"]
    assert "preempted job" in wait.attributes["rayfin.decision.reason"] and wait.attributes["rayfin.victims"] == (big,)
    assert env.metrics.get("rayfin_admissions", desk="fx", borrowing="no") == 1


def test_requeue_on_lost_runner_opens_a_new_queue_span(tmp_path):
    env = Env(tmp_path)
    job = env.core.submit(TOK["fx"], "fx", spec(1, retries=1))["job_id"]
    env.run(3)
    env.backend.lose(job, "node n0 lost")
    env.run()                                    # lost -> requeued -> admitted again, in one cycle
    assert env.core.status(TOK["fx"], job)["attempts"] == 1
    assert env.metrics.get("rayfin_jobs_requeued", desk="fx") == 1
    runs = [s for s in env.spans() if s.name == "rayfin.job.run"]
    assert runs and runs[0].attributes["rayfin.outcome"] == "requeued"
    assert "lost" in runs[0].attributes["rayfin.reason"]
    env.run(3)
    env.backend.finish(job)
    env.run()
    names = [s.name for s in env.spans(job)]
    assert names.count("rayfin.job.queue") == 2 and names.count("rayfin.job.run") == 2
    assert names.count("rayfin.job") == 1


def test_refused_submission_is_counted_and_traced(env):
    with pytest.raises(QuotaExceeded):
        env.core.submit(TOK["fx"], "fx", spec(5))          # fx: nominal 4 + borrowing 0
    assert env.metrics.get("rayfin_refusals", desk="fx", reason="never_fits") == 1
    (span,) = [s for s in env.spans() if s.name == "rayfin.submit.refused"]
    assert span.attributes["rayfin.desk"] == "fx" and span.status.status_code == StatusCode.ERROR


def test_waiting_job_records_wait_reason_once_per_change(env):
    env.core.submit(TOK["fx"], "fx", spec(4))
    b = env.core.submit(TOK["fx"], "fx", spec(1))["job_id"]
    env.run(4)
    queue = env.recorder.traces[b].queue
    waits = [e for e in queue.events if e.name == "wait"]
    assert len(waits) == 1 and "fx" in waits[0].attributes["rayfin.decision.reason"]
    assert env.metrics.get("rayfin_queue_depth", desk="fx") == 1
    assert env.metrics.get("rayfin_queue_oldest_wait_seconds", desk="fx") == pytest.approx(2.0)


def test_cycle_publishes_desk_pool_and_cycle_metrics(env):
    env.core.submit(TOK["risk"], "risk", spec(3))
    env.run(2)
    m = env.metrics
    assert m.get("rayfin_gpus_nominal", desk="risk") == 8 and m.get("rayfin_gpus_in_use", desk="risk") == 3
    assert m.get("rayfin_gpus_max", desk="equities") == 8 and m.get("rayfin_gpus_max", desk="risk") == 8
    assert m.get("rayfin_pool_gpus_capacity", pool="risk") == 8 and m.get("rayfin_pool_gpus_free", pool="risk") == 5
    assert m.get("rayfin_pool_gpus_free", pool="general") == 8
    assert len(m.get("rayfin_controller_cycle_ms", step="total")) == 2
    assert set(dict(k)["step"] for k in m.series("rayfin_controller_cycle_ms")) == {
        "observe", "snapshot", "decide", "audit", "act", "total"}
    assert m.get("rayfin_controller_cycles") == 2


def test_gauges_are_throttled_to_the_publish_interval(tmp_path):
    env = Env(tmp_path)
    now = [0.0]
    env.recorder.monotonic = lambda: now[0]
    env.recorder.settings = env.recorder.settings.model_copy(update={"metrics_publish_interval_s": 5.0})
    env.run()
    env.core.submit(TOK["risk"], "risk", spec(3))
    now[0] = 1.0
    env.run(2)
    assert env.metrics.get("rayfin_gpus_in_use", desk="risk") == 0     # not re-published yet
    now[0] = 6.0
    env.run()
    assert env.metrics.get("rayfin_gpus_in_use", desk="risk") == 3


def test_a_broken_sink_never_breaks_the_controller(tmp_path):
    env = Env(tmp_path)

    class Broken:
        def set(self, *a, **k):
            raise RuntimeError("metrics down")
        inc = observe = set

    env.recorder.metrics = Broken()
    job = env.core.submit(TOK["fx"], "fx", spec(1))["job_id"]
    env.run(3)
    assert env.core.status(TOK["fx"], job)["state"] == "RUNNING"
    assert env.recorder.errors > 0


def test_job_context_makes_the_job_root_span_current(env):
    job = env.core.submit(TOK["fx"], "fx", spec(1))["job_id"]
    root = env.recorder.traces[job].root
    with tracing.job_context(job):
        assert trace.get_current_span().get_span_context().span_id == root.get_span_context().span_id
    assert tracing.job_trace_id(job) == format(root.get_span_context().trace_id, "032x")
    with tracing.job_context("no-such-job"):
        assert not trace.get_current_span().get_span_context().is_valid


def test_every_recorded_metric_is_declared_with_its_tags(env):
    # MemoryMetrics rejects undeclared names and wrong tag sets, so a full life exercises the registry
    env.core.submit(TOK["equities"], "equities", spec(8, priority="batch", workers="per_gpu"))
    env.run(3)
    env.core.submit(TOK["fx"], "fx", spec(4))
    env.run(4, dt=1.0)
    assert env.recorder.errors == 0
    recorded = {n for n, _ in env.metrics.values}
    assert recorded <= set(METRICS)
    for name, tags in env.metrics.values:
        assert set(dict(tags)) == set(METRICS[name].tags)
