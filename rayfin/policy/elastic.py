"""Elastic gangs: when a running gang grows into idle GPUs and when it gives them back.

A job may declare `workers=(min, max)`. Its admission holds the base, `min` workers, under its
desk's quota and priority like any gang (policy.scheduler). Workers above the base run on GPUs
no one else wants, and the snapshot shows them as a separate running job `<id>+x` of the lowest
priority (BATCH), preemptible: reclaim and priority preemption take them before any base
work, and they never count toward a guarantee.

Two decisions, both pure functions of a `ClusterSnapshot` and the gangs, used alike by the
live controller (rayfin.controller.cycle) and the simulator (rayfin.sim.engine):

- `shrinks`: while any job waits, every gang above its base gives its extra workers back: a
  PREEMPT of `<id>+x` with the usual grace, so the job sees its new world size at a checkpoint
  boundary (it restarts from its checkpoint at `min` workers) and no work is lost.
- `grows`: when no job waits, a gang at its base grows into idle GPUs of its desk's pools, by
  whole workers, within its desk's quota ceiling: to the size with the best measured speed-up
  over its base (`speedup`, at least `min_gain`), or, with no scaling curve (the live
  controller: the job's `max` says how far it scales), to the largest size that fits. Each
  gang grows at most once per stay at its base: every resize is a restart from the checkpoint.

A growth or shrink is a decision with a reason code (ELASTIC_GROW, ELASTIC_SHRINK) like any
other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from placement.gang import FreeIndex
from rayfin.policy.model import ClusterSnapshot, Decision, Placement, Verdict
from rayfin.policy.quota import attribute_lenders, check_quota
from rayfin.reasons import ReasonCode

EXTRA_SUFFIX = "+x"

Speedup = Callable[[str, int, int], float]   # (job id, base workers, k workers) -> speed at k / speed at base


def extra_id(job_id: str) -> str:
    """The id under which a gang's workers above its base appear in the snapshot."""
    return job_id + EXTRA_SUFFIX


def base_of(job_id: str) -> str | None:
    """The gang an extra-workers id belongs to; None for any other id."""
    return job_id[: -len(EXTRA_SUFFIX)] if job_id.endswith(EXTRA_SUFFIX) else None


@dataclass(frozen=True)
class ElasticGang:
    """A running (or admitted) elastic job, as the elastic decisions see it."""

    job_id: str
    desk: str
    workers: int            # world size now: base plus extra
    min_workers: int        # the base: what its admission holds
    max_workers: int
    unit: int = 1           # GPUs per worker
    resizing: bool = False  # a resize or a preemption is under way: leave it alone

    def __post_init__(self) -> None:
        if not 1 <= self.min_workers <= self.workers <= self.max_workers:
            raise ValueError(f"elastic gang {self.job_id}: need 1 <= min_workers <= workers <= max_workers; got "
                             f"{self.min_workers} <= {self.workers} <= {self.max_workers}")
        if self.unit < 1:
            raise ValueError(f"elastic gang {self.job_id}: unit must be >= 1 GPU per worker; got {self.unit}")


@dataclass(frozen=True)
class Grow:
    """Grow `job_id` to `workers`, adding the GPUs of `placement` (its new workers) to its own."""

    job_id: str
    desk: str
    workers: int
    placement: Placement
    speedup: float | None           # measured speed at `workers` over the base; None: no curve
    reasons: tuple[str, ...]
    code: ReasonCode = ReasonCode.ELASTIC_GROW
    borrowed: float = 0.0           # of the new GPUs, how many are above the desk's nominal
    lenders: tuple[tuple[str, float], ...] = ()    # who lends those (quota.attribute_lenders)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def shrinks(snap: ClusterSnapshot, gangs: Iterable[ElasticGang], grace_s: float) -> tuple[Decision, ...]:
    """While any job waits, PREEMPT each gang's extra workers (`<id>+x`) not already on their
    way out, with `grace_s` to reach a checkpoint. Nothing while no job waits."""
    if not snap.pending:
        return ()
    running = {r.job_id: r for r in snap.running if r.job_id.endswith(EXTRA_SUFFIX)}
    waiting = len(snap.pending)
    deadline = snap.now + grace_s
    out = []
    for g in gangs:
        x = running.get(extra_id(g.job_id))
        if x is None or x.preempt_deadline is not None:
            continue
        out.append(Decision(x.job_id, g.desk, Verdict.PREEMPT,
                            (f"elastic shrink: {waiting} job(s) wait, so job {g.job_id} gives back its "
                             f"{g.workers - g.min_workers} worker(s) above its base of {g.min_workers} "
                             f"({x.gpus:g} GPUs); it restarts from its checkpoint at {g.min_workers}",
                             f"grace {grace_s:g}s, until t={deadline:g}"),
                            deadline=deadline, code=ReasonCode.ELASTIC_SHRINK))
    return tuple(out)


def grows(snap: ClusterSnapshot, gangs: Sequence[ElasticGang], speedup: Speedup | None = None,
          min_gain: float = 1.05) -> tuple[Grow, ...]:
    """When no job waits: for each gang at its base (in the given order), the size to grow to
    and where its new workers go (best fit in its desk's pools, whole workers per island), or
    nothing. See the module doc."""
    if snap.pending or not gangs:
        return ()
    lay = snap.topology.layout
    free = snap.free()
    index = FreeIndex(lay, [free[i] for i in lay.island_ids])
    if index.total <= 0:
        return ()
    usage = snap.usage()
    capacity = float(sum(lay.capacity)) - float(sum(snap.unavailable.values()))
    out: list[Grow] = []
    for g in gangs:
        if g.resizing or g.workers != g.min_workers or g.max_workers <= g.min_workers:
            continue
        desk = snap.desks.get(g.desk)
        if desk is None:
            continue
        top = min(g.max_workers, g.min_workers + index.total // g.unit)
        sizes = _sizes(g, top, speedup, min_gain)
        for k, gain in sizes:
            extra = (k - g.min_workers) * g.unit
            q = check_quota(desk, extra, snap.desks, usage, capacity)
            if not q.fits:
                continue
            got = index.in_units(g.unit).best_fit(extra, desk.pools)
            if got is None:
                continue
            pix, level = got
            lenders = attribute_lenders(g.desk, q.borrowed, snap.desks, usage, capacity,
                                        {lay.island_pool[i] for i, _ in pix}) if q.borrowed > 1e-9 else ()
            index.take(pix)
            usage[g.desk] = usage.get(g.desk, 0.0) + extra
            why = (f"elastic grow: no job waits and {extra + index.total} GPUs are idle; job {g.job_id} grows from "
                   f"{g.min_workers} to {k} workers (+{extra} GPUs, {q.reason})")
            how = (f"measured speed-up {gain:.2f}x over its base" if gain is not None
                   else f"it declared up to {g.max_workers} workers")
            out.append(Grow(g.job_id, g.desk, k, index.to_placement(pix), gain,
                            (why, how, f"the new workers are the first taken back when work waits "
                                       f"(lowest priority, {level.name.lower()})"),
                            borrowed=q.borrowed, lenders=lenders))
            break
        if index.total <= 0:
            break
    return tuple(out)


def _sizes(g: ElasticGang, top: int, speedup: Speedup | None, min_gain: float) -> list[tuple[int, float | None]]:
    """The sizes to try, best first: with a curve, only the one of the highest speed-up (at
    least `min_gain`; ties to the smaller); without, every size from `top` down."""
    if top <= g.min_workers:
        return []
    if speedup is None:
        return [(k, None) for k in range(top, g.min_workers, -1)]
    best, gain = 0, min_gain
    for k in range(g.min_workers + 1, top + 1):
        s = speedup(g.job_id, g.min_workers, k)
        if s > gain:
            best, gain = k, s
    return [(best, gain)] if best else []


__all__ = ["ElasticGang", "Grow", "shrinks", "grows", "extra_id", "base_of", "EXTRA_SUFFIX", "Speedup"]
