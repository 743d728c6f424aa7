"""The controller's memory and its state transitions.

`ControllerState` holds what the controller knows between cycles (the active jobs, the serving
reservations, islands lost, cordoned, draining or held outside rayfin, the last decision per
job) and the only ways a job's state changes: `save`, `finish`, `requeue`, `lost`,
`preempt_now`. Each writes the ledger (the job row and its audit event, in one transaction)
before memory changes, so what callers are told is always durable.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from dataclasses import replace
from typing import Any, Callable

from placement.topology import Topology
from rayfin.config import RayfinConfig
from rayfin.controller import market_clock
from rayfin.controller.backend import Backend
from rayfin.controller.ledger import Ledger
from rayfin.controller.records import JobKind, JobRecord, Placement, ServingReservation
from rayfin.controller.recorder import Recorder
from rayfin.market.in_force import InForce, QuotaClock
from rayfin.market.plan import WindowName, quotas_in
from rayfin.policy import Decision, DeskQuota, JobState, SchedulerConfig
from rayfin.policy.duration import DurationPredictor, DurationState, JobKey
from rayfin.policy.settings import Policy
from rayfin.reasons import ReasonCode

log = logging.getLogger("rayfin.controller")
ACTIVE = (JobState.PENDING, JobState.ADMITTED, JobState.RUNNING)
PLACED = (JobState.ADMITTED, JobState.RUNNING)
# A job whose runner was started and then lost before it reported running is requeued free this
# many times in a row (a node may die while a gang's workers come up; the count restarts once it
# runs); after that each such loss spends a retry, so a job whose code kills its node as it starts
# cannot go round the fleet for ever.
FREE_LOST_STARTS = 3
DURATION_KEY = "duration_state"   # ledger kv: the duration predictor's state (rayfin.policy.duration)


def scheduler_config(config: RayfinConfig) -> SchedulerConfig:
    """The live controller runs the `rayfin` preset of the policy with the configured grace and
    least-attained-service switches (`scheduling:`)."""
    sc = config.scheduling
    return SchedulerConfig.preset(Policy.RAYFIN, preemption_grace_s=config.defaults.preemption_grace_s,
                                  las_within_desk=sc.least_attained_service,
                                  las_desk_threshold_gpu_s=sc.las_threshold_gpu_hours * 3600.0,
                                  las_min_run_s=sc.las_min_run_s)


class ControllerState:
    def __init__(self, config: RayfinConfig, ledger: Ledger, backend: Backend, clock: Callable[[], float],
                 recorder: Recorder) -> None:
        self.config = config
        self.ledger = ledger
        self.backend = backend
        self.clock = clock
        self.recorder = recorder
        self.topology = Topology.from_config(config.cluster)
        self.desks = {d.name: DeskQuota.from_config(d) for d in config.desks}
        self.policy = scheduler_config(config)
        self.lock = threading.RLock()
        self.active: dict[str, JobRecord] = {}
        # Runner keys started in this controller's life (a job stays ADMITTED until a poll says
        # RUNNING, but its code may run from the start on): a resize then stops it with grace.
        self.launched: set[str] = set()
        self.serving: dict[str, ServingReservation] = {}
        self.last_decision: dict[str, Decision] = {}
        # Island -> GPUs lost with their node (from the backend's last observation).
        self.unavailable: dict[str, float] = {}
        # Island -> GPUs held by work rayfin did not start (found by policing): taken, not lost,
        # so they shrink what the scheduler may place without marking rayfin's own jobs there lost.
        self.held_outside: dict[str, float] = {}
        # Islands where a runner was just lost: cordoned until Ray's failure detector has had
        # time to declare the node dead, so a requeued job is not placed straight back there.
        self.cordoned: dict[str, float] = {}
        # Islands the capacity planner is draining (rayfin.autoscale.drain): no new work is placed
        # there, work already there runs on (unlike `unavailable`, which fails it).
        self.draining: frozenset[str] = frozenset()
        self.cordon_s = config.controller.cordon_s
        # An admitted job whose group or runner never comes up (e.g. its node vanished mid-way)
        # goes back to the queue after this long; nothing ran, so no retry is spent.
        self.admit_timeout_s = config.controller.admit_timeout_s
        # desk -> state -> ended batch jobs: counted by the database once here, then kept up to
        # date by `finish`, so the per-cycle usage table never rescans the ledger.
        terminal = [s.value for s in JobState if s.terminal]
        self.finished: defaultdict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(terminal, 0))
        for desk, counts in ledger.counts(terminal, exclude_kind=JobKind.SERVING.value).items():
            self.finished[desk].update(counts)
        # Duration-aware order: runtimes of finished jobs, learnt online (see cycle.hints) and
        # kept in the ledger like the capacity planner's state, so a restart keeps the history.
        self.durations = DurationPredictor()
        self.duration_state = load_duration_state(ledger)
        # The market clock (rayfin.controller.market_clock): the quota plan on its calendar, and
        # the answer last applied to `desks`. None without a `calendar:` section.
        self.quota_clock: QuotaClock | None = market_clock.quota_clock(config)
        self.in_force: InForce | None = None
        self.calendar_warned = False
        if config.market is not None:
            # Until the first cycle applies a window, a submission over the base ceiling but
            # within a window's is not refused: every desk carries the plan's largest ceiling.
            ceil = quotas_in(config.market.quota_plan, self.desks, WindowName.INTRADAY)
            self.desks = {n: replace(q, plan_ceiling=max(ceil[n].ever_gpus, q.max_gpus))
                          if ceil[n].ever_gpus > q.max_gpus else q for n, q in self.desks.items()}
        # Deadlines (controller/deadlines.py): the quota plan's windows per desk, read once a minute.
        self.deadline_cache: dict[Any, Any] = {}
        market_clock.apply(self)

    # ---------------------------------------------------------------- transitions
    def save(self, job: JobRecord, event: str, reason: str, code: ReasonCode | None = None) -> JobRecord:
        """Write a job and its audit event; keep it in memory while it is active."""
        self.ledger.put_job(job, (event, reason, code or job.reason_code), ts=self.clock())
        if job.state.terminal:
            self.active.pop(job.job_id, None)
        else:
            self.active[job.job_id] = job
        return job

    def finish(self, job: JobRecord, state: JobState, reason: str, code: ReasonCode) -> JobRecord:
        old = job.state
        job = self.save(job.copy(state=state, reason=reason, reason_code=code, finished_at=self.clock(),
                                 preempt_deadline=None, preempt_reason="",
                                 payload=None if state is JobState.SUCCEEDED else job.payload),
                        state.value.lower(), reason)
        self.last_decision.pop(job.job_id, None)
        self._learn_duration(job)
        self.finished[job.desk][state.value] += 1
        self.recorder.state_changed(job, old.value)
        return job

    def requeue(self, job: JobRecord, why: str, code: ReasonCode) -> JobRecord:
        job = job.copy(state=JobState.PENDING, attempts=job.attempts + 1, placement=(), started_at=None,
                       info=self._attained(job), **unpreempted(),
                       reason_code=code, reason=f"requeued (attempt {job.attempts + 2} of {job.max_retries + 1}): {why}",
                       **at_base(job))
        self.recorder.state_changed(job, JobState.RUNNING.value)
        return self.save(job, "requeued", why)

    def _attained(self, job: JobRecord) -> dict[str, Any]:
        """`info` as an attempt ends and the job goes back to wait or restarts: the attempt's
        service added (it stays with the job: the least-attained-service order and its hints read
        it), and its ranks dropped (their pids and GPUs were that attempt's; policing must not
        take a process that reuses such a pid for the job before the next runner reports)."""
        ran = max(0.0, self.clock() - job.started_at) if job.started_at else 0.0
        kept = {k: v for k, v in job.info.items() if k != "ranks"}
        return {**kept, "attained_s": float(job.info.get("attained_s", 0.0)) + ran}

    def resize_now(self, job: JobRecord) -> JobRecord:
        """An elastic gang's old runner has stopped (or its grace is over): reserve the size it
        was resized to and start it again from its checkpoint. Not a retry: no attempt is spent.
        A shrink keeps the base's placement; a growth the whole of it (base and new workers)."""
        self.release(job)
        unit, to = job.unit, job.resize_to or job.workers
        placement: Placement
        extra: Placement
        if to <= job.min_workers:
            placement, extra = job.base_placement, ()
            to, code, what = job.min_workers, ReasonCode.ELASTIC_SHRINK, "shrunk"
            job = job.copy(**job.without_extra_lenders())
        else:
            placement, extra, code, what = job.placement, job.extra, ReasonCode.ELASTIC_GROW, "grown"
        old = job.state
        job = job.copy(state=JobState.ADMITTED, generation=job.generation + 1, workers=to, gpus=float(to * unit),
                       placement=placement, extra=extra, started_at=None, admitted_at=self.clock(),
                       info=self._attained(job), resize_to=0, resize_deadline=None, resize_for=None,
                       reason=f"{what} to {to} worker(s), restarting from its checkpoint: {job.resize_reason}",
                       reason_code=code, resize_reason="")
        try:
            self.backend.reserve(job.key, job.desk, placement, unit=unit)
        except Exception as exc:  # noqa: BLE001 - back to the queue at its base: nothing is lost
            log.warning("reserve %s after a resize failed: %s", job.job_id, exc)
            return self.save(job.copy(state=JobState.PENDING, placement=(), started_at=None, **at_base(job),
                                      **unpreempted(),
                                      reason=f"placement group not created after a resize: {type(exc).__name__}",
                                      reason_code=ReasonCode.RESERVE_FAILED), "requeued", str(exc)[:300])
        self.recorder.state_changed(job, old.value)
        return self.save(job, "resized", job.reason)

    def release(self, job: JobRecord) -> None:
        self.launched.discard(job.key)
        try:
            self.backend.release(job.key, job.desk)
        except Exception as exc:  # noqa: BLE001 - recovery's orphan sweep retries it
            log.warning("release %s failed: %s", job.job_id, exc)

    def lost(self, job: JobRecord, why: str, code: ReasonCode) -> None:
        """Its group or runner went away: requeue (free if it never started), else fail."""
        launched = job.key in self.launched and code is not ReasonCode.ADMIT_TIMEOUT   # (release forgets it)
        self.release(job)
        if job.state is JobState.ADMITTED:
            # Its GPUs went away before it started: nothing ran, so no retry is spent; unless its
            # runner was started and lost before it said it runs, more than FREE_LOST_STARTS times.
            # (Not an admit timeout: a gang's workers may be slow to come up, that is not the job.)
            # A loss with no runner started (an admit timeout, a node lost first) is always free.
            lost_starts = int(job.info.get("lost_starts", 0)) + (1 if launched else 0)
            if not launched or lost_starts <= FREE_LOST_STARTS:
                self.save(job.copy(state=JobState.PENDING, placement=(), reason=f"requeued before start: {why}",
                                   reason_code=code, info={**job.info, "lost_starts": lost_starts},
                                   **unpreempted(), **at_base(job)),
                          "requeued", why)
                return
            why = f"{why} (its runner was lost as it started {lost_starts} times in a row)"
            job = job.copy(info={**job.info, "lost_starts": lost_starts})
        if job.attempts < job.max_retries:
            self.requeue(job, why, code)
        else:
            self.finish(job, JobState.FAILED, f"{why} (no retries left)", code)

    def preempt_now(self, job: JobRecord) -> None:
        """Its grace period is over (or it stopped inside it): take the GPUs back."""
        stake = self.work_at_stake_s(job)
        self.release(job)
        why = job.preempt_reason or job.reason
        self.recorder.preempted(job, why, job.gpus * stake)
        _, checkpointed = at_stake_since(job)
        since = "since its last checkpoint" if checkpointed else "since its start (no checkpoint reported)"
        lost = f"{stake:.0f} s of work {since} lost"
        if job.attempts < job.max_retries:
            self.requeue(job, f"preempted: {why}; {lost}", job.reason_code)
        else:
            self.finish(job, JobState.PREEMPTED, f"{why}; {lost}", job.reason_code)

    def preempt_unstarted(self, job: JobRecord, why: str, code: ReasonCode) -> None:
        """A victim whose runner was never started (its group still coming up): nothing of it ran,
        so its GPUs go back at once, with no grace, and it is requeued free (no retry spent),
        keeping its place."""
        self.release(job)
        self.recorder.preempted(job.copy(reason_code=code), why, 0.0)
        old = job.state
        job = self.save(job.copy(state=JobState.PENDING, placement=(), reason=f"requeued before start: preempted: {why}",
                                 reason_code=code, **unpreempted(), **at_base(job)),
                        "requeued", f"preempted before its runner started: {why}")
        self.recorder.state_changed(job, old.value)

    def audit_impostors(self) -> None:
        """An audit event per actor the backend found holding a runner's name without the job's
        secret, and killed (RayBackend: the runner is created, or adopted, only once it proves)."""
        take = getattr(self.backend, "take_impostors", None)
        for e in take() if take is not None else ():
            owner = self.ledger.get_job(e["job_id"])
            self.ledger.record(self.clock(), e["job_id"], owner.desk if owner else "", "runner_impostor", "",
                               f"actor {e['actor_id']} held runner name {e['name']} in namespace {e['namespace']} "
                               f"without the job's secret ({e['why']}): killed", e, ReasonCode.IMPOSTOR)

    def work_at_stake_s(self, job: JobRecord) -> float:
        """Seconds of the job's current attempt since its last reported checkpoint (or since its
        start): what stopping it now would throw away. 0 for a job not started."""
        since, _ = at_stake_since(job)
        return 0.0 if since is None else max(0.0, self.clock() - since)

    def _learn_duration(self, job: JobRecord) -> None:
        if job.state is JobState.SUCCEEDED and job.started_at and job.finished_at:
            # its whole service: runs before a resize's restart (or a requeue) and the last one;
            # the hints and the deadline ETAs subtract the same from the prediction
            ran = float(job.info.get("attained_s", 0.0)) + max(0.0, job.finished_at - job.started_at)
            self.duration_state = self.durations.observe(self.duration_state, duration_key(job), ran)
            self.ledger.put_kv(DURATION_KEY, json.dumps(self.duration_state.to_dict()).encode())

    # ---------------------------------------------------------------- what placement may not use
    def not_placeable(self) -> dict[str, float]:
        """GPUs per island the scheduler may not place on: lost with their node, or held by work
        rayfin did not start (until policing sees them freed)."""
        out = dict(self.unavailable)
        caps = {i.id: float(i.gpus) for i in self.topology.islands}
        for island, gpus in self.held_outside.items():
            if island in caps:
                out[island] = min(caps[island], out.get(island, 0.0) + gpus)
        return out


def unpreempted() -> dict[str, Any]:
    """The changes that clear a preemption under way: a job that goes back to the queue before
    its deadline must not carry the deadline into its next admission (it would be stopped at once)."""
    return {"preempt_deadline": None, "preempt_reason": "", "preempted_for": None}


def at_base(job: JobRecord) -> dict[str, Any]:
    """The changes that put an elastic gang back at its base size with no resize under way (a
    requeued gang asks for its base again); none for a fixed gang."""
    if not job.elastic:
        return {}
    return {"workers": job.min_workers, "gpus": float(job.min_workers * job.unit), "extra": (), "resize_to": 0,
            "resize_deadline": None, "resize_reason": "", "resize_for": None, **job.without_extra_lenders()}


def load_duration_state(ledger: Ledger) -> DurationState:
    """The predictor's history as last saved, or none. A saved state that cannot be read is
    logged and dropped: predictions then start from no history (least-attained-service order),
    which must not stop the controller."""
    raw = ledger.get_kv(DURATION_KEY)
    if not raw:
        return DurationState()
    try:
        return DurationState.from_dict(json.loads(raw))
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("duration predictor state in the ledger (%s) unreadable, starting empty: %s", DURATION_KEY, exc)
        return DurationState()


def at_stake_since(job: JobRecord) -> tuple[float | None, bool]:
    """Since when the work of the job's current attempt is at stake (None: not started), and
    whether that is a checkpoint of this attempt (else its start: an earlier attempt's checkpoint
    is where this one resumed from)."""
    if not job.started_at:
        return None, False
    ckpt = job.info.get("checkpoint_at")
    if ckpt is None or float(ckpt) < job.started_at:
        return job.started_at, False
    return float(ckpt), True


def started_info(job: JobRecord) -> dict[str, Any]:
    """`info` as the job starts running: its count of lost starts (`lost`) restarts."""
    return {k: v for k, v in job.info.items() if k != "lost_starts"}


def duration_key(job: JobRecord) -> JobKey:
    """The runtime history a job adds to and is predicted from. An elastic gang's size changes
    while it runs: its key is the size it declared (max workers), so a run that ended grown or
    shrunk and the next one, queued at its base, share one history."""
    gpus = job.max_workers * job.unit if job.elastic else int(job.gpus)
    return JobKey(job.desk, job.desk, job.name, int(gpus))


__all__ = ["ControllerState", "ACTIVE", "PLACED", "DURATION_KEY", "scheduler_config", "duration_key",
           "at_stake_since", "started_info", "unpreempted",
           "load_duration_state", "at_base"]
