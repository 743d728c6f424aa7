"""Elastic gangs in the live controller: the policy core's grow and shrink decisions
(rayfin.policy.elastic), acted on.

A resize restarts the gang from its checkpoint at the new world size (each rank reads its rank
and world size from `job_context()` and reloads `checkpoint_dir`): the old runner is asked to
stop, gets the preemption grace to checkpoint, and `ControllerState.resize_now` reserves the new
size (a new generation) as soon as it has stopped. A gang admitted but not yet started is
resized at once: nothing ran. No retry is spent on a resize.

- Grow: the new workers' GPUs are the gang's from the decision on (`extra`), so nothing else is
  placed there while the old runner stops.
- Shrink: the extra workers' GPUs stay the gang's until the old runner has stopped; the snapshot
  shows them coming free (`<id>+x` with the grace's deadline), as a preemption's victims are.
"""
from __future__ import annotations

from dataclasses import replace

from rayfin.controller import market_clock
from rayfin.controller.records import JobRecord, Placement
from rayfin.controller.state import PLACED, ControllerState
from rayfin.policy import ClusterSnapshot, Decision, JobState, Priority, RunningJob
from rayfin.policy.elastic import ElasticGang, Grow, base_of, extra_id, grows, shrinks
from rayfin.reasons import ReasonCode


def gangs(s: ControllerState) -> list[ElasticGang]:
    """The placed elastic gangs, oldest admission first (the order growth is offered in)."""
    out = [j for j in s.active.values() if j.elastic and j.state in PLACED]
    out.sort(key=lambda j: (j.admitted_at or 0.0, j.job_id))
    return [ElasticGang(j.job_id, j.desk, j.workers, j.min_workers, j.max_workers, j.unit,
                        resizing=j.preempt_deadline is not None or j.resize_deadline is not None) for j in out]


def split(job: JobRecord, base: RunningJob) -> tuple[RunningJob, ...]:
    """A placed job as the snapshot's running jobs: an elastic gang above its base is its base
    plus `<id>+x`, its extra workers at the lowest priority (taken first by reclaim and priority
    preemption). Extra workers on their way out show the deadline they leave by."""
    if not job.extra:
        return (base,)
    shrinking = job.resize_deadline is not None and job.resize_to <= job.min_workers
    leaving = job.preempt_deadline if job.preempt_deadline is not None else (job.resize_deadline if shrinking else None)
    extra = RunningJob(extra_id(job.job_id), job.desk, float(sum(g for _, g in job.extra)), job.extra, Priority.BATCH,
                       base.started_at, preemptible=True, preempt_deadline=leaving,
                       preempted_for=job.preempted_for if job.preempt_deadline is not None else job.resize_for)
    return replace(base, gpus=float(job.min_workers * job.unit), placement=job.base_placement), extra


def step(s: ControllerState, elastic: list[ElasticGang], snap: ClusterSnapshot) -> int:
    """The cycle's elastic step for the placed gangs (`gangs`), after `act`, on a snapshot taken
    after it: shrink while any job waits, grow when none does. Returns the resizes started."""
    shrunk = shrinks(snap, elastic, s.policy.preemption_grace_s)
    grown = grows(snap, elastic)
    market_clock.record_elastic(s, snap, elastic, shrunk, grown)    # audited, replayable (`rayfin replay`)
    n = 0
    for d in shrunk:
        n += shrink(s, d)
    for g in grown:
        n += grow(s, g)
    return n


def preempts_extra(s: ControllerState, d: Decision) -> bool:
    """A PREEMPT of `<id>+x` (by the elastic step, reclaim or priority preemption) is a shrink:
    True when `d` was one (acted on or not)."""
    if base_of(d.job_id) is None:
        return False
    shrink(s, d)
    return True


def shrink(s: ControllerState, d: Decision) -> int:
    job = s.active.get(base_of(d.job_id) or "")
    if job is None or not job.extra or job.state not in PLACED or job.preempt_deadline is not None:
        return 0      # gone, at its base already, or the whole gang is being preempted
    d = replace(d, job_id=job.job_id)     # recorded on the job (its traces and last decision), not on `<id>+x`
    now = s.clock()
    deadline = d.deadline if d.deadline is not None else now + s.policy.preemption_grace_s
    if job.resize_deadline is not None:
        if job.resize_to <= job.min_workers:
            return 0  # already shrinking
        # a growth under way: it restarts at its base instead, and the new workers' GPUs (never
        # used: the old runner still runs at its base) go back now, as when their island is lost
        job = job.copy(workers=job.min_workers, gpus=float(job.min_workers * job.unit), placement=job.base_placement,
                       extra=(), resize_to=job.min_workers, resize_deadline=min(job.resize_deadline, deadline),
                       resize_reason=d.reason, resize_for=d.beneficiary, reason="shrinking: " + d.reason,
                       reason_code=ReasonCode.ELASTIC_SHRINK, **job.without_extra_lenders())
        s.save(job, "resize_planned", d.reason)
        s.recorder.decided(d)
        return 1
    job = job.copy(resize_to=job.min_workers, resize_reason=d.reason, resize_for=d.beneficiary)
    if not started(s, job):
        s.resize_now(job)           # not started: nothing to stop
    else:
        s.save(job.copy(resize_deadline=deadline, reason="shrinking: " + d.reason,
                        reason_code=ReasonCode.ELASTIC_SHRINK), "resize_planned", d.reason)
        s.backend.request_stop(job.key)     # after the ledger knows why (see cycle.act)
    s.last_decision[job.job_id] = d
    s.recorder.decided(d)
    return 1


def grow(s: ControllerState, g: Grow) -> int:
    job = s.active.get(g.job_id)
    if job is None or job.state not in PLACED or job.preempt_deadline is not None or job.resize_deadline is not None:
        return 0
    unit = job.unit
    job = job.copy(workers=g.workers, gpus=float(g.workers * unit), placement=merge(job.placement, g.placement),
                   extra=g.placement, resize_to=g.workers, resize_reason=g.reason,
                   borrowed=job.borrowed + g.borrowed, lenders=merge_lenders(job.lenders, g.lenders),
                   extra_lenders=g.lenders)
    if not started(s, job):
        s.resize_now(job)           # not started: it starts at the new size
    else:
        s.save(job.copy(resize_deadline=s.clock() + s.policy.preemption_grace_s, reason="growing: " + g.reason,
                        reason_code=ReasonCode.ELASTIC_GROW), "resize_planned", g.reason)
        s.backend.request_stop(job.key)     # after the ledger knows why (see cycle.act)
    return 1


def started(s: ControllerState, job: JobRecord) -> bool:
    """Whether its runner was started: running, or started in this cycle or since the last poll
    (still ADMITTED, but its code may run). A resize of a started gang stops it with grace."""
    return job.state is JobState.RUNNING or job.key in s.launched


def growing(job: JobRecord) -> bool:
    """A growth is under way: the new workers' GPUs are held, the old runner has not restarted
    (a gang not started grows at once, with no grace: never under way)."""
    return job.resize_deadline is not None and job.resize_to > job.min_workers and bool(job.extra) \
        and job.state in (JobState.ADMITTED, JobState.RUNNING)


def running_on(job: JobRecord) -> Placement:
    """The islands its runner really uses now: during a growth, not the new workers' (held for
    the restart), else its whole placement."""
    return job.base_placement if growing(job) else job.placement


def abandon_growth(s: ControllerState, job: JobRecord) -> None:
    """The island of a growth's new workers was lost before the restart: the gang restarts at its
    base instead (the old runner was already asked to stop)."""
    why = "the island of its new workers was lost before the restart: it restarts at its base"
    s.save(job.copy(workers=job.min_workers, gpus=float(job.min_workers * job.unit), placement=job.base_placement,
                    extra=(), resize_to=job.min_workers, resize_reason=why, reason="shrinking: " + why,
                    reason_code=ReasonCode.ELASTIC_SHRINK, **job.without_extra_lenders()), "resize_planned", why)


def merge_lenders(a: tuple[tuple[str, float], ...], b: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
    """Two attributions of borrowed GPUs as one: GPUs per lender summed, in first-seen order."""
    out: dict[str, float] = {}
    for d, g in (*a, *b):
        out[d] = round(out.get(d, 0.0) + g, 6)
    return tuple(out.items())


def merge(a: Placement, b: Placement) -> Placement:
    """Two placements as one: GPUs per island summed, sorted by island."""
    out: dict[str, float] = {}
    for i, g in (*a, *b):
        out[i] = out.get(i, 0.0) + g
    return tuple(sorted(out.items()))


__all__ = ["gangs", "split", "step", "preempts_extra", "shrink", "grow", "merge", "growing", "running_on",
           "abandon_growth"]
