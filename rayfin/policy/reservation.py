"""A head-of-line reservation for a large gang that has waited long (EASY backfill, Slurm's
backfill scheduler; Kueue's StrictFIFO is the blunt form: nothing passes the head).

Under greedy backfill a gang of several nodes starts only when that many GPUs are free at once,
and a queue that keeps putting short small jobs first keeps taking the GPUs it waits for. Once a
pending job of at least `reserve_min_gpus` GPUs has waited more than `reserve_after_s` and more
than `reserve_wait_factor` times its predicted runtime, the cycle reserves for it (one job per
cycle, the highest priority, then the largest wait over predicted runtime):

- its *start* (shadow time): walking the running jobs by predicted end (`JobHint`; a job being
  preempted ends at its deadline), the first instant at which the GPUs free now plus those freed
  by then, on islands in its pools, hold the job;
- its *islands*: the islands those GPUs are on, less islands free now whose GPUs the job will
  not need (EASY's "extra" nodes: free now plus freed by the start, beyond the job's size).

Any other job may still use a reserved island if it is predicted to finish by the start (so it
cannot delay the reservation, if the predictions hold); a job with no prediction, or a longer
one, is placed on the other islands only, or waits (`ReasonCode.RESERVATION`). Nothing is kept
between cycles: each cycle recomputes the reservation from the snapshot, so it is released as
soon as the job is placed (or stops qualifying). Work within its desk's nominal quota is never
held back (a guarantee outranks a reservation): the reservation binds jobs that borrow, and
every job when quotas are off. No reservation is made for a job its desk's quota would not admit
at the start (its own jobs ending by then count as gone; the other desks lend what they lend
now): holding GPUs idle would not bring it nearer.

Pure: no Ray, no clock; `now` comes from the snapshot.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from placement.topology import Layout
from rayfin.policy.hints import NO_HINT, JobHint
from rayfin.policy.model import PendingJob, RunningJob


@dataclass(frozen=True)
class Reservation:
    job_id: str
    gpus: int
    start_s: float                 # predicted time at which enough GPUs are free for the job
    islands: frozenset[int]        # island indexes (Layout order) held for it
    since_s: float = 0.0           # when the job was submitted


def qualifies(job: PendingJob, hint: JobHint | None, now: float, *, min_gpus: int, wait_factor: float,
              after_s: float, floor_s: float = 60.0) -> float | None:
    """How overdue `job` is (wait over predicted runtime, higher first), or None when it does not
    qualify for a reservation: fewer than `min_gpus` GPUs, or waited no more than `after_s` or
    `wait_factor` times its predicted runtime (no prediction: `floor_s`)."""
    if job.gpus < min_gpus:
        return None
    wait = now - job.submitted_at
    run_s = runtime(job, hint, floor_s)
    if wait <= after_s or wait <= wait_factor * run_s:
        return None
    return wait / run_s


def runtime(job: PendingJob, hint: JobHint | None, floor_s: float = 60.0) -> float:
    """Predicted runtime of a pending job (no prediction: `floor_s`)."""
    return max(floor_s, (hint or NO_HINT).predicted_s or 0.0)


def candidates(pending: Iterable[PendingJob], hints: Mapping[str, JobHint], now: float, *, min_gpus: int,
               wait_factor: float, after_s: float, floor_s: float = 60.0) -> list[PendingJob]:
    """Jobs that qualify, best first: highest priority, then most overdue, then submitted first."""
    scored = []
    for job in pending:
        if job.gpus < min_gpus:
            continue
        s = qualifies(job, hints.get(job.job_id), now, min_gpus=min_gpus, wait_factor=wait_factor,
                      after_s=after_s, floor_s=floor_s)
        if s is not None:
            scored.append((-int(job.priority), -s, job.submitted_at, job.job_id, job))
    scored.sort(key=lambda x: x[:4])
    return [x[-1] for x in scored]


def predicted_end(v: RunningJob, hints: Mapping[str, JobHint], now: float, floor_s: float = 60.0) -> float:
    """When a running job is expected to free its GPUs: its preemption deadline if one is set,
    else now + predicted remaining (no prediction: as long again as it has run, least-attained
    service's guess for a heavy tail)."""
    if v.preempt_deadline is not None:
        return v.preempt_deadline
    h = hints.get(v.job_id) or NO_HINT
    left = h.remaining_s(floor_s)
    if left is None:
        left = max(floor_s, h.attained_s, now - v.started_at)
    return now + left


def plan(job: PendingJob, now: float, layout: Layout, free: npt.NDArray[np.float64],
         running: Sequence[RunningJob], hints: Mapping[str, JobHint], pool_mask: npt.NDArray[np.bool_] | None,
         floor_s: float = 60.0) -> Reservation | None:
    """The reservation for `job`: its start and islands, or None if, by the predictions, the
    GPUs it needs never come free in its pools (serving reservations, unavailable GPUs)."""
    whole_free = np.floor(np.asarray(free, dtype=np.float64) + 1e-9).astype(np.int64)
    at = layout.index.get
    events: list[tuple[float, int, int]] = []   # (time, -GPUs, island): GPUs that are or come free
    for i in np.flatnonzero(whole_free > 0).tolist():
        if pool_mask is None or pool_mask[i]:
            events.append((now, -int(whole_free[i]), i))
    for v in running:
        if not v.preemptible and v.preempt_deadline is None:
            continue   # serving reservations: not coming free
        end = None
        for isl, g in v.placement:
            k = at(isl)
            if k is None or (pool_mask is not None and not pool_mask[k]) or int(g) <= 0:
                continue
            if end is None:
                end = max(now, predicted_end(v, hints, now, floor_s))
            events.append((end, -int(g), k))
    events.sort()
    have, held = 0, set()
    for t, neg, k in events:
        have -= neg
        held.add(k)
        if have >= job.gpus:
            # EASY's "extra" GPUs: more than the job needs by its start; islands free now whose
            # GPUs fit in the surplus stay open to everyone (smallest first)
            extra = have - job.gpus
            for _, g, i in sorted((int(whole_free[i]), int(whole_free[i]), i) for i in held if whole_free[i] > 0):
                if g > extra:
                    break
                held.discard(i)
                extra -= g
            return Reservation(job.job_id, job.gpus, t, frozenset(held), job.submitted_at)
    return None


def may_use_reserved(job: PendingJob, resv: Reservation, hint: JobHint | None, now: float,
                     floor_s: float = 60.0) -> bool:
    """True for the holder and for a job predicted to finish by the reservation's start."""
    if job.job_id == resv.job_id:
        return True
    if hint is None or hint.predicted_s is None:
        return False
    left = hint.remaining_s(floor_s)
    return left is not None and now + left <= resv.start_s


def open_free(free: npt.NDArray[np.float64], resv: Reservation) -> npt.NDArray[np.float64]:
    """The free map with the reserved islands emptied: what jobs that may not use them see."""
    out = free.copy()
    out[list(resv.islands)] = 0.0
    return out


__all__ = ["Reservation", "runtime", "qualifies", "candidates", "predicted_end", "plan", "may_use_reserved", "open_free"]
