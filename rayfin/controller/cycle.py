"""One controller cycle, in named steps:

    observe   fold what the backend saw since last cycle into job states (groups reserved,
              runners started, done or lost, nodes down, admissions that never started)
    snapshot  a frozen ClusterSnapshot of desks, running work, serving and the queue
    decide    rayfin.policy.schedule(snapshot) -> CycleDecision (pure)
    act       reserve groups, ask victims to stop, record waits, refuse
    record    metrics and step timings (the ledger was written by each transition)
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from rayfin import collector
from rayfin.controller import deadlines, market_clock, resize
from rayfin.controller.backend import LaunchSpec, Observation
from rayfin.controller.records import JobRecord
from rayfin.controller.state import (PLACED, ControllerState, at_base, at_stake_since, duration_key, started_info,
                                     unpreempted)
from rayfin.policy import (ClusterSnapshot, CommProfile, CycleDecision, JobState, PendingJob, Priority, RunningJob,
                           schedule)
from rayfin.market.deadline import guard_deadline_class
from rayfin.policy.hints import JobHint
from rayfin.reasons import ReasonCode

log = logging.getLogger("rayfin.controller")
_RAN_ON = ("node_id", "island", "gpu_ids", "cuda_visible_devices", "pid")
_RANK = ("rank", "island", "node_id", "cuda_visible_devices", "pid")
CHECKPOINT_JITTER_S = 1.0   # a reported checkpoint time that moved less than this is the same checkpoint


@dataclass
class CycleReport:
    timings_ms: dict[str, float] = field(default_factory=dict)
    admitted: int = 0
    preempted: int = 0
    finished: int = 0
    resized: int = 0


def run_cycle(s: ControllerState, usage_table: Any) -> CycleReport:
    """One cycle under the state's lock; `usage_table` renders the desk table for the recorder."""
    report = CycleReport()
    with s.lock:
        t0 = time.perf_counter()
        live = {j.key: j.job_id for j in s.active.values() if j.state is not JobState.PENDING}
        report.finished = observe(s, s.backend.observe(list(live)), live)
        s.audit_impostors()
        market_clock.apply(s)
        deadlines.review(s)      # slack, escalation and ETA of deadline jobs (their events)
        t1 = time.perf_counter()
        snap = snapshot(s)
        t2 = time.perf_counter()
        with collector.paused():      # a collection inside decide would set its p99
            decision = schedule(snap, s.policy)
        t3 = time.perf_counter()
        market_clock.record_decisions(s, snap, decision)
        t3a = time.perf_counter()
        report.admitted, report.preempted = act(s, decision)
        gangs = resize.gangs(s)
        if gangs:      # on what act left (who waits now); the elastic decisions read no hints
            report.resized = resize.step(s, gangs, snapshot(s, hints_too=False))
        t4 = time.perf_counter()
        report.timings_ms = {"observe": (t1 - t0) * 1e3, "snapshot": (t2 - t1) * 1e3,
                             "decide": (t3 - t2) * 1e3, "audit": (t3a - t3) * 1e3, "act": (t4 - t3a) * 1e3}
        s.recorder.cycle(report, usage_table(), snap)
    return report


# ---------------------------------------------------------------- observe
def observe(s: ControllerState, obs: Observation, live: dict[str, str]) -> int:
    """Fold what the backend saw into job states; returns how many jobs left their GPUs."""
    now = s.clock()
    s.cordoned = {i: until for i, until in s.cordoned.items() if until > now}
    s.unavailable = dict(obs.unavailable)
    for island in s.cordoned:
        s.unavailable.setdefault(island, float(s.topology.island(island).gpus))
    for key in obs.ready:
        job = s.active.get(live.get(key, ""))
        if job is not None and job.state is JobState.ADMITTED and job.preempt_deadline is None:
            try:
                s.backend.start(launch_spec(s, job, key))
                s.launched.add(key)
            except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the cycle
                log.warning("start %s failed: %s", key, exc)
                s.lost(job, f"runner could not be started: {type(exc).__name__}: {str(exc)[:200]}",
                       ReasonCode.RUNNER_NOT_STARTED)
    finished = 0
    for key, st in obs.statuses.items():
        job = s.active.get(live.get(key, ""))
        if job is not None and job.key == key:
            finished += _runner_status(s, job, st, now)
    for job in list(s.active.values()):
        if job.state in PLACED:
            finished += _overdue(s, job, now)
    return finished


def _runner_status(s: ControllerState, job: JobRecord, st: Any, now: float) -> int:
    if st.logs:
        s.ledger.append_logs(job.job_id, st.logs, now, s.config.controller.max_log_bytes)
    if st.checkpoint_age_s is not None and job.started_at:
        # when its last checkpoint was, on the controller's clock (the runner reports an age, so
        # no two clocks are compared); it sets the work a preemption would lose (hints, victims)
        at = now - float(st.checkpoint_age_s)
        if abs(at - float(job.info.get("checkpoint_at", -1e18))) > CHECKPOINT_JITTER_S:
            job = job.copy(info={**job.info, "checkpoint_at": at})
            s.active[job.job_id] = job
    # A stop asked for (a preemption's or a resize's grace) that the job never saw: it ended by
    # itself, its work done, and is finished, not run again.
    finished_anyway = st.state == "SUCCEEDED" and st.stopped is False and (
        job.preempt_deadline is not None or job.resize_deadline is not None)
    if finished_anyway:
        if resize.growing(job):   # it ran at its base to the end: the new workers never started
            job = job.copy(placement=job.base_placement, **at_base(job))
        job = job.copy(**unpreempted(), resize_to=0,
                       resize_deadline=None, resize_reason="", resize_for=None)
        s.active[job.job_id] = job
    if st.state == "SUCCEEDED" and len(st.results) > 1 and job.preempt_deadline is None \
            and job.resize_deadline is None:
        # only a run that ended the job: one stopped for a preemption or a resize runs again
        s.ledger.put_results(job.job_id, st.results)
    if st.state == "RUNNING" and job.state is JobState.ADMITTED:
        job = job.copy(state=JobState.RUNNING, started_at=now, reason="running", reason_code=ReasonCode.RUNNING,
                       info={**started_info(job), **ran_on(st.info)})
        s.save(job, "started", f"running on {where(job)}")
        s.recorder.state_changed(job, JobState.ADMITTED.value)
    elif st.state == "RUNNING" and abs(job.progress - st.progress) > 1e-6:
        s.active[job.job_id] = job.copy(progress=st.progress)
    elif st.state in ("SUCCEEDED", "FAILED") and job.preempt_deadline is not None:
        # It stopped because it was asked to (grace period): it was preempted, and what it
        # returned (e.g. a checkpoint path) is kept.
        s.preempt_now(job.copy(result=st.result, error=st.error))
        return 1
    elif st.state in ("SUCCEEDED", "FAILED") and job.resize_deadline is not None:
        # An elastic gang stopped for a resize: it starts again at its new size, from its checkpoint.
        s.resize_now(job.copy(result=st.result, error=st.error))
        return 1
    elif st.state in ("SUCCEEDED", "FAILED"):
        s.release(job)
        job = job.copy(result=st.result, error=st.error, progress=st.progress)
        if st.state == "SUCCEEDED":
            s.finish(job, JobState.SUCCEEDED, "finished", ReasonCode.FINISHED)
        else:
            why = "job raised: " + st.error.splitlines()[0][:300] if st.error else "failed"
            s.finish(job, JobState.FAILED, why, ReasonCode.JOB_RAISED)
        return 1
    elif st.state == "LOST":
        for island, _ in resize.running_on(job):    # not a growth's new islands: it never ran there
            s.cordoned[island] = now + s.cordon_s
            # at once, so this cycle's snapshot does not place the requeued job straight back
            s.unavailable.setdefault(island, float(s.topology.island(island).gpus))
        s.lost(job, st.error or "runner lost", ReasonCode.RUNNER_LOST)
        return 1
    return 0


def _overdue(s: ControllerState, job: JobRecord, now: float) -> int:
    """A placed job on a lost island, admitted too long ago without starting, or past its grace."""
    lost = [i for i, _ in resize.running_on(job) if i in s.unavailable]
    if lost:
        s.lost(job, f"node of island(s) {', '.join(lost)} lost", ReasonCode.NODE_LOST)
        return 1
    if resize.growing(job) and any(i in s.unavailable for i, _ in job.extra):
        resize.abandon_growth(s, job)     # only the new workers' island went: back to its base
        return 0
    admitted = job.admitted_at if job.admitted_at is not None else now
    if job.state is JobState.ADMITTED and now - admitted > s.admit_timeout_s:
        s.lost(job, f"not started within {s.admit_timeout_s:g}s of admission", ReasonCode.ADMIT_TIMEOUT)
        return 1
    if job.preempt_deadline is not None and now >= job.preempt_deadline:
        if not resize.started(s, job):
            s.preempt_unstarted(job, job.preempt_reason or job.reason, job.reason_code)   # (after a restart)
        else:
            s.preempt_now(job)
        return 1
    if job.resize_deadline is not None and now >= job.resize_deadline and job.preempt_deadline is None:
        s.resize_now(job)   # (a preemption of the whole gang under way goes first: it ends in a requeue)
        return 1
    return 0


def ran_on(info: dict[str, Any]) -> dict[str, Any]:
    """What the job record keeps of a runner's start reply: rank 0's devices and the rank layout."""
    out = {k: info[k] for k in _RAN_ON if k in info}
    workers = info.get("workers") or []
    if workers:
        out["ranks"] = [{k: w.get(k) for k in _RANK} for w in workers]
    return out


def where(job: JobRecord) -> str:
    placed = ", ".join(f"{i} x{g:g}" for i, g in job.placement)
    ranks = job.info.get("ranks") or []
    if len(ranks) > 1:
        return f"{len(ranks)} workers on {placed}"
    gpus = job.info.get("cuda_visible_devices")
    return placed + (f" (CUDA_VISIBLE_DEVICES={gpus})" if gpus else "")


def launch_spec(s: ControllerState, job: JobRecord, key: str) -> LaunchSpec:
    c = s.config.controller
    return LaunchSpec(job.job_id, job.desk, job.kind.value, job.payload, job.placement, c.max_result_bytes, key=key,
                      priority=Priority(job.priority).label, unit=job.unit, dist_backend=job.dist_backend,
                      checkpoint_dir=os.path.join(c.checkpoint_root, job.desk, job.job_id),
                      attempt=job.attempts, max_log_bytes=c.max_log_bytes, comm=job.comm)


# ---------------------------------------------------------------- snapshot
def snapshot(s: ControllerState, hints_too: bool = True) -> ClusterSnapshot:
    running: list[RunningJob] = []
    pending: list[PendingJob] = []
    for job in s.active.values():
        if job.state is JobState.PENDING:
            pending.append(PendingJob(job.job_id, job.desk, int(job.gpus), deadlines.priority_of(job),
                                      job.submitted_at, CommProfile(job.comm), job.unit))
        else:
            placed = RunningJob(job.job_id, job.desk, job.gpus, job.placement, deadlines.priority_of(job),
                                # admitted, not started: since its admission (not a LAS victim yet)
                                job.started_at or job.admitted_at or job.submitted_at,
                                preemptible=True, preempt_deadline=job.preempt_deadline,
                                preempted_for=job.preempted_for)
            running.extend(resize.split(job, placed) if job.extra else (placed,))
    for res in s.serving.values():
        # A serving deployment holds its GPUs like running work that is never preempted.
        running.append(RunningJob(f"serve-{res.model}", res.desk, res.gpus, res.placement, Priority.CRITICAL,
                                  res.reserved_at, preemptible=False))
    pending.sort(key=lambda p: (p.submitted_at, p.job_id))
    if s.config.deadlines.guard_deadline_class:
        running = list(_guarded(s, running))
    unavailable = s.not_placeable()
    for island in s.draining:
        # The whole island counts as unavailable to the policy, so neither placement nor a
        # preemption plan frees room there; the jobs on it stay in `running`.
        unavailable[island] = float(s.topology.island(island).gpus)
    now = s.clock()
    return ClusterSnapshot(now=now, topology=s.topology, desks=s.desks, running=tuple(running),
                           pending=tuple(pending), unavailable=unavailable,
                           hints=hints(s, now) if hints_too else {})


def _guarded(s: ControllerState, running: list[RunningJob]) -> tuple[RunningJob, ...]:
    """Escalated deadline jobs do not priority-preempt their desk's as-urgent deadline work."""
    escalated = [(j.desk, j.deadline, Priority.CRITICAL) for j in s.active.values()
                 if j.state is JobState.PENDING and j.escalated and j.deadline is not None]
    if not escalated:
        return tuple(running)
    due = {j.job_id: j.deadline for j in s.active.values() if j.state is not JobState.PENDING and j.deadline is not None}
    return guard_deadline_class(running, escalated, due)


def hints(s: ControllerState, now: float) -> dict[str, JobHint]:
    """Predicted runtimes, attained service and checkpoint age, for the duration-aware order."""
    out = {}
    for job in s.active.values():
        # The submitter's expected runtime, where given, before the predictor's.
        p = None if job.expected_runtime_s is not None else s.durations.predict(s.duration_state, duration_key(job))
        predicted = job.expected_runtime_s if job.expected_runtime_s is not None else (p.seconds if p else None)
        ran = float(job.info.get("attained_s", 0.0)) + (now - job.started_at if job.started_at else 0.0)
        since, _ = at_stake_since(job)   # None without a reported checkpoint: the policy counts from the start
        age = now - since if since is not None and job.info.get("checkpoint_at") is not None else None
        # deadline_s: EDF inside the desk (policy.ordering)
        # restartable: least-attained-service preemption takes only jobs a preemption requeues
        out[job.job_id] = JobHint(predicted, ran, age, job.deadline, job.attempts < job.max_retries)
    return out


# ---------------------------------------------------------------- act
def act(s: ControllerState, decision: CycleDecision) -> tuple[int, int]:
    now = s.clock()
    for d in decision.admits:
        job = s.active.get(d.job_id)
        if job is None or job.state is not JobState.PENDING:
            continue
        # Each reservation gets a new generation, so its group and runner names never collide
        # with those of an earlier attempt that Ray is still tearing down.
        job = job.copy(generation=job.generation + 1)
        try:
            s.backend.reserve(job.key, job.desk, d.placement, unit=job.unit)
        except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the cycle
            log.warning("reserve %s failed: %s", job.job_id, exc)
            s.save(job.copy(reason=f"placement group not created: {type(exc).__name__}: {str(exc)[:200]}",
                            reason_code=ReasonCode.RESERVE_FAILED), "reserve_failed", str(exc)[:300])
            continue
        job = job.copy(state=JobState.ADMITTED, placement=tuple(d.placement), reason=d.reason, reason_code=d.code,
                       borrowed=d.borrowed, lenders=d.lenders, admitted_at=now)
        s.save(job, "admitted", d.reason)
        s.last_decision[job.job_id] = d
        s.recorder.decided(d)
    for d in decision.preempts:
        if resize.preempts_extra(s, d):     # an elastic gang's extra workers: a shrink
            continue
        job = s.active.get(d.job_id)
        if job is None or job.preempt_deadline is not None:
            continue
        if not resize.started(s, job):
            # no runner yet: nothing to stop gracefully, and one must not be started for it
            s.last_decision[job.job_id] = d
            s.recorder.decided(d)
            s.preempt_unstarted(job, d.reason, d.code)
            continue
        deadline = d.deadline if d.deadline is not None else now + s.policy.preemption_grace_s
        job = job.copy(preempt_deadline=deadline, reason="being preempted: " + d.reason, reason_code=d.code,
                       preempt_reason=d.reason, preempted_for=d.beneficiary)
        # the ledger first: a controller that dies in between must not find, after its restart,
        # a job that stopped at a checkpoint when asked and take that for its end (SUCCEEDED)
        s.save(job, "preemption_planned", d.reason)
        s.backend.request_stop(job.key)
        s.last_decision[job.job_id] = d
        s.recorder.decided(d)
    for d in decision.waits:
        job = s.active.get(d.job_id)
        prev = s.last_decision.get(d.job_id)
        s.last_decision[d.job_id] = d
        if job is not None and (prev is None or prev.reasons != d.reasons):
            s.save(job.copy(reason=d.reason, reason_code=d.code), "queued", d.reason)
            s.recorder.decided(d)
    for d in decision.refusals:
        job = s.active.get(d.job_id)
        if job is not None:
            s.last_decision[d.job_id] = d
            s.finish(job, JobState.FAILED, "refused: " + d.reason, d.code)
            s.recorder.decided(d)
    return len(decision.admits), len(decision.preempts)


__all__ = ["CycleReport", "run_cycle", "observe", "snapshot", "act", "hints", "launch_spec", "where", "ran_on"]
