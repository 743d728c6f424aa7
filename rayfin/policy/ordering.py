"""In what order a cycle tries pending jobs of the same priority: a sort key per job.

    SUBMISSION           submission order (Kueue's StrictFIFO / BestEffortFIFO)
    ATTAINED_SERVICE     discretised 2D-LAS (Tiresias, NSDI'19): queue 0 while a job's attained
                         service (GPUs x seconds run) is below `las_threshold_gpu_s`, queue 1
                         after; submission order inside a queue. Needs no duration knowledge.
    PREDICTED_REMAINING  shortest predicted remaining time first, with aging:

                             key = R / (1 + wait / aging_s),   R = predicted remaining seconds

                         lowest first, so a short job jumps the queue at once and a long one
                         climbs as it waits: its key halves after aging_s, and tends to 0, so
                         no job starves. aging_s -> infinity is plain SRPT (the SJF oracle's
                         order, aging_s = 0 here meaning "no aging", when the hint carries the
                         true duration); aging_s -> 0 orders by R / wait, the response ratio of
                         HRRN. With no prediction (no history at all) R falls back to
                         max(attained, floor): least attained service first.

Lower keys go first (a pair: the key, then a tie-break); the sort is stable, so equal keys keep submission order.

Deadlines (issue 18): inside each priority, jobs whose hint carries a `deadline_s` go before the
others, earliest deadline first (rayfin.market.deadline.market_order's EDF; the fair-share step
takes each desk's jobs in this order, so it is EDF inside the desk's share), then the rank above.
Without deadlines in the hints the order is exactly the rank's.
"""
from __future__ import annotations

from enum import Enum
from typing import Mapping, Sequence

import numpy as np

from rayfin.policy.hints import NO_HINT, JobHint
from rayfin.policy.model import PendingJob


class JobRank(Enum):
    SUBMISSION = "submission"
    ATTAINED_SERVICE = "attained_service"
    PREDICTED_REMAINING = "predicted_remaining"


def las_queue(attained_gpu_s: float, threshold_gpu_s: float) -> int:
    return 0 if attained_gpu_s < threshold_gpu_s else 1


def rank_key(rank: JobRank, job: PendingJob, hint: JobHint | None, now: float, *, aging_s: float = 3600.0,
             las_threshold_gpu_s: float = 3600.0, floor_s: float = 60.0) -> tuple[float, float]:
    """Sort key of `job` (lower first) under `rank`; see the module docstring."""
    if rank is JobRank.SUBMISSION:
        return (0.0, 0.0)
    hint = hint or NO_HINT
    if rank is JobRank.ATTAINED_SERVICE:
        return (float(las_queue(hint.attained_s * job.gpus, las_threshold_gpu_s)), 0.0)
    left = hint.remaining_s(floor_s)
    if left is None:
        left = max(hint.attained_s, floor_s)
    if aging_s <= 0:
        return (left, 0.0)
    wait = max(0.0, now - job.submitted_at)
    return (left / (1.0 + wait / aging_s), left)


def order(rank: JobRank, jobs: Sequence[PendingJob], hints: Mapping[str, JobHint], now: float, *,
          aging_s: float = 3600.0, las_threshold_gpu_s: float = 3600.0, floor_s: float = 60.0,
          las_levels_gpu_s: float | None = None, no_levels: frozenset[str] = frozenset()) -> list[PendingJob]:
    """`jobs` sorted by priority (highest first), then by `rank_key` (lowest first); stable, so
    ties keep the given order. `las_levels_gpu_s` (PREDICTED_REMAINING, with least attained
    service inside desks): jobs that have run that many GPU-seconds (LAS queue 1, e.g. a job
    requeued after a long run) go after those that have not, inside each priority, so the GPUs a
    job was preempted for go to the job it was preempted for; not for the jobs of the desks in
    `no_levels` (desks that keep out of least attained service). The same keys as `rank_key`, with the same float arithmetic, but
    computed as arrays and sorted by one `np.lexsort` (stable): a queue of 10,000 jobs is ordered
    in a few milliseconds instead of the ten or more that a per-job key function takes."""
    n = len(jobs)
    prio = -np.fromiter((j.priority for j in jobs), dtype=np.int64, count=n)
    get = hints.get
    hs = [get(j.job_id) or NO_HINT for j in jobs]
    edf = _deadline_keys(hs) if n >= 2 else None
    if rank is JobRank.SUBMISSION or n < 2:
        idx = np.argsort(prio, kind="stable") if edf is None else np.lexsort((edf[1], edf[0], prio))
        return _take(jobs, idx)
    if rank is JobRank.ATTAINED_SERVICE:
        attained = np.fromiter((h.attained_s for h in hs), dtype=np.float64, count=n)
        gpus = np.fromiter((j.gpus for j in jobs), dtype=np.float64, count=n)
        first = (attained * gpus >= las_threshold_gpu_s).astype(np.float64)   # las_queue
        second = np.zeros(n)
    else:
        attained = np.fromiter((h.attained_s for h in hs), dtype=np.float64, count=n)
        known = np.fromiter((h.predicted_s is not None for h in hs), dtype=np.bool_, count=n)
        predicted = np.fromiter((h.predicted_s or 0.0 for h in hs), dtype=np.float64, count=n)
        left = predicted - attained
        left = np.where(known, np.maximum(floor_s, np.where(left > 0, left, attained)),   # JobHint.remaining_s
                        np.maximum(attained, floor_s))                                    # no prediction
        if aging_s <= 0:
            first, second = left, np.zeros(n)
        else:
            submitted = np.fromiter((j.submitted_at for j in jobs), dtype=np.float64, count=n)
            wait = np.maximum(0.0, now - submitted)
            first, second = left / (1.0 + wait / aging_s), left
    keys: tuple[np.ndarray, ...] = (second, first)
    if las_levels_gpu_s is not None and rank is JobRank.PREDICTED_REMAINING:
        gpus = np.fromiter((j.gpus for j in jobs), dtype=np.float64, count=n)
        level = (attained * gpus >= las_levels_gpu_s).astype(np.int64)   # las_queue
        if no_levels:
            level[np.fromiter((j.desk in no_levels for j in jobs), dtype=np.bool_, count=n)] = 0
        if edf is None:   # (priority, level) as one key: one pass of the sort fewer
            return _take(jobs, np.lexsort(keys + (prio * 2 + level,)))
        keys += (level,)
    return _take(jobs, np.lexsort(keys + ((prio,) if edf is None else (edf[1], edf[0], prio))))


def _take(jobs: Sequence[PendingJob], idx: np.ndarray) -> list[PendingJob]:
    return [jobs[i] for i in idx.tolist()]


def _deadline_keys(hs: Sequence[JobHint]) -> tuple[np.ndarray, np.ndarray] | None:
    """(0 for a deadline job else 1, its deadline else 0) per job's hint; None when no job has one."""
    dl = [h.deadline_s for h in hs]
    if dl.count(None) == len(dl):
        return None
    has = np.fromiter((0.0 if d is not None else 1.0 for d in dl), dtype=np.float64, count=len(dl))
    when = np.fromiter((d if d is not None else 0.0 for d in dl), dtype=np.float64, count=len(dl))
    return has, when
