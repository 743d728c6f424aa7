"""One scheduling cycle: (ClusterSnapshot, SchedulerConfig) -> CycleDecision.

Pure: no Ray, no clock, no I/O. The live controller and the trace simulator call this same
function; the four benchmark policies are presets of `SchedulerConfig` (policy.settings).

The cycle, in numbered steps:
 1. index    free GPUs per island/node/rack (capacity - unavailable - running), usage per desk
             and priority. Jobs already being preempted still hold their GPUs.
 2. refuse   jobs that can never run: larger than the desk may ever hold, or than its pools.
 3. entitled jobs that fit the desk's nominal counting only its work of equal or higher
             priority, in priority then submission order: admit where they fit, else plan a
             reclaim (policy.preemption): victims get PREEMPT with a deadline (now + grace),
             the job WAITs naming its victims, and the GPUs it will use are held for it.
 4. borrow   the rest, which need GPUs above nominal. FAIR_SHARE hands idle GPUs to the desk
             with the lowest usage / weight first, re-ranked after every admission, so a heavy
             desk cannot starve a light one; FIFO takes them in priority, submission order.
             Borrowers never preempt.
 Every job is tried in turn; one that cannot start does not block the next (greedy backfill),
 except, with `reservation` on, a large job that has waited long holds the islands it will start
 on: a job predicted to end after that start may not use them (policy.reservation).
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import fields
from typing import Any, Callable

import numpy as np

from placement.gang import FreeIndex
from placement.topology import LinkLevel
from rayfin.policy.model import (ClusterSnapshot, CycleDecision, Decision, DeskQuota, PendingJob, Priority,
                                 RunningJob, Verdict)
from rayfin.policy.node_fit import node_fit
from rayfin.policy.ordering import las_queue, order
from rayfin.policy.preemption import ReclaimContext, ReclaimPlan, gpus_by_island, placed_by_index, plan_reclaim
from rayfin.policy import reservation as resv
from rayfin.reasons import ReasonCode
from rayfin.policy.quota import attribute_lenders, check_quota, why_never_fits
from rayfin.policy.settings import (PlacementStrategy, Policy, QueueOrder, QuotaMode,  # noqa: F401 (re-export)
                                    SchedulerConfig)

_EPS = 1e-9
_LEVEL_WORDS = {LinkLevel.NVLINK: "one NVLink island", LinkLevel.INTRA_NODE: "one node",
                LinkLevel.INTRA_RACK: "one rack", LinkLevel.INTER_RACK: "several racks"}


_Outcome = tuple[Verdict, tuple[str], ReasonCode]   # a decision without the job: verdict, reasons, code
_DEFER: _Outcome = (Verdict.WAIT, ("deferred to borrowing",), ReasonCode.OTHER)   # step 4 decides (by identity)


def schedule(snap: ClusterSnapshot, cfg: SchedulerConfig = SchedulerConfig()) -> CycleDecision:
    return _Cycle(snap, cfg).run()


class _Cycle:
    def __init__(self, snap: ClusterSnapshot, cfg: SchedulerConfig):
        self.snap, self.cfg = snap, cfg
        self.topo = snap.topology
        self.lay = snap.topology.layout
        lay = self.lay
        free = lay.arrays()[0].copy()
        where, amount = [], []
        for isl, g in snap.unavailable.items():
            k = lay.index.get(isl)
            if k is not None:
                where.append(k)
                amount.append(g)
        self.usage: dict[str, float] = {d: 0.0 for d in snap.desks}
        self.by_prio: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(Priority))
        at = lay.index.get
        for job in snap.running:
            for isl, g in job.placement:
                k = at(isl)
                if k is not None:
                    where.append(k)
                    amount.append(g)
            self.usage[job.desk] = self.usage.get(job.desk, 0.0) + job.gpus
            self.by_prio[job.desk][int(job.priority)] += job.gpus
        if where:
            np.subtract.at(free, where, amount)
        self.index = FreeIndex(lay, free)
        self.capacity = float(sum(lay.capacity)) - float(sum(snap.unavailable.values()))
        self.taken: set[str] = set()
        self._on_island: list[list[RunningJob]] | None = None
        self._ctx: ReclaimContext | None = None
        self._limits: dict[str, DeskQuota] = {}
        self._never_memo: dict[tuple[str, int], tuple[ReasonCode, str] | None] = {}
        self._gen = 0                                   # bumps on every admit or reclaim (see _plan)
        self._failed: dict[tuple[Any, ...], tuple[int, int]] = {}  # plan key -> (generation, fewest GPUs that failed)
        self._beneficiaries: set[str | None] | None = None
        self._lost_memo: dict[str, float] = {}
        self._las_by_desk: dict[str, list[RunningJob]] | None = None   # _las_victims
        self._las_ctx: dict[str, ReclaimContext] = {}
        self._las_swaps = 0
        self._borrow_memo: dict[tuple[Any, ...], _Outcome] = {}   # (generation, desk, GPUs, unit) -> waiting outcome
        self.admits: list[Decision] = []
        self.preempts: list[Decision] = []
        self.waits: list[Decision] = []
        self.refusals: list[Decision] = []
        self.resv: resv.Reservation | None = None
        self.open: FreeIndex | None = None   # the free GPUs outside the reservation (None: no reservation)
        self._blocked = False                # the last _admit failed only because of the reservation
        if cfg.reservation and cfg.quota is not QuotaMode.STATIC:
            self._reserve()

    # ---- the cycle --------------------------------------------------------------------------
    def run(self) -> CycleDecision:
        """Steps 2 and 3 per job in order, then step 4 for the jobs deferred to borrowing.

        Jobs of one class (desk, priority, GPUs, worker unit) are alike to steps 2 and 3 until
        the cycle's state changes, which it does only on an admission or a reclaim (the
        generation `_gen` bumps): the first job of a class in a generation is decided in full,
        and the rest of the class that waits, is refused or is deferred copies its outcome. Jobs
        GPUs are already being reclaimed for are always decided in full (their plans differ)."""
        cfg = self.cfg
        deferred: list[PendingJob] = []
        seen: dict[tuple[Any, ...], tuple[int, _Outcome]] = {}
        mine = self._beneficiary_ids()
        reserving = self.resv is not None
        for job in self._order():
            key = (job.desk, job.priority, job.gpus, job.unit, reserving and self._restricted(job))
            hit = seen.get(key)
            if hit is not None and hit[0] == self._gen and job.job_id not in mine:
                outcome: _Outcome | None = hit[1]
            else:
                gen = self._gen
                outcome = self._step(job)
                if outcome is not None and self._gen == gen:
                    seen[key] = (gen, outcome)
            if outcome is None:
                continue
            if outcome is _DEFER:
                deferred.append(job)
                continue
            verdict, why, code = outcome
            (self.refusals if verdict is Verdict.REFUSE else self.waits).append(_d(job, verdict, why, code))
        if deferred:
            if cfg.quota is QuotaMode.STATIC:
                why_static: dict[tuple[str, int], tuple[str]] = {}
                for job in deferred:
                    static_key = (job.desk, job.gpus)
                    if static_key not in why_static:
                        why_static[static_key] = (f"static partition: desk {job.desk} holds {self.usage[job.desk]:g}/"
                                           f"{self.snap.desks[job.desk].nominal:g} GPUs, +{job.gpus} would exceed it",)
                    self.waits.append(_d(job, Verdict.WAIT, why_static[static_key], ReasonCode.STATIC_PARTITION))
            elif cfg.order is QueueOrder.FAIR_SHARE:
                self._borrow_fair(deferred)
            else:
                for job in deferred:
                    self._borrow(job)
        return CycleDecision(tuple(self.admits), tuple(self.preempts), tuple(self.waits), tuple(self.refusals))

    def _step(self, job: PendingJob) -> _Outcome | None:
        """Steps 2 and 3 for one job: its outcome (refuse, wait, or defer to borrowing), or None
        when it was admitted, planned a reclaim, or decided by LAS (decisions already made)."""
        cfg = self.cfg
        desk = self.snap.desks.get(job.desk)
        if desk is None:
            return (Verdict.REFUSE, (f"unknown desk {job.desk!r}; desks are {sorted(self.snap.desks)}",),
                    ReasonCode.UNKNOWN_DESK)
        never = self._never(job, desk)
        if never:
            return Verdict.REFUSE, (never[1] + "; to fix: ask for fewer GPUs",), never[0]
        if cfg.quota is QuotaMode.NONE:
            if cfg.las_preemption:
                self._las_job(job, desk)
                return None
            return self._admit_else_why(job, desk, "no quotas", 0.0, ReasonCode.NO_QUOTAS)
        if self._entitled(job, desk):
            return self._entitled_job(job, desk)
        return _DEFER

    # ---- step 1b: order ---------------------------------------------------------------------
    def _order(self) -> list[PendingJob]:
        """Priority first, then the configured rank (policy.ordering); stable, so ties keep
        submission order."""
        cfg = self.cfg
        return order(cfg.rank, self.snap.pending, self.snap.hints, self.snap.now, aging_s=cfg.aging_s,
                     las_threshold_gpu_s=cfg.las_threshold_gpu_s,
                     las_levels_gpu_s=cfg.las_desk_threshold_gpu_s if cfg.las_within_desk else None,
                     no_levels=frozenset(d for d, q in self.snap.desks.items() if not q.las))

    # ---- step 1c: reservation ---------------------------------------------------------------
    def _reserve(self) -> None:
        """Reserve for the most overdue large job that its desk's quota lets start at the
        reservation's start (policy.reservation)."""
        cfg, snap = self.cfg, self.snap
        for job in resv.candidates(snap.pending, snap.hints, snap.now, min_gpus=cfg.reserve_min_gpus,
                                   wait_factor=cfg.reserve_wait_factor, after_s=cfg.reserve_after_s)[:4]:
            desk = snap.desks.get(job.desk)
            if desk is None or self._never(job, desk):
                continue
            mask = None if self.index.all_pools <= desk.pools else self.lay.pool_mask(desk.pools)
            r = resv.plan(job, snap.now, self.lay, self.index.free, snap.running, snap.hints, mask)
            if r is not None and cfg.reserve_horizon > 0 and \
                    r.start_s - snap.now > cfg.reserve_horizon * resv.runtime(job, snap.hints.get(job.job_id)):
                continue   # too far off: the GPUs it would hold idle would cost more than its own run
            if r is not None and cfg.quota is QuotaMode.BORROWING and not self._quota_at(job, desk, r.start_s):
                continue   # even with the GPUs free by then its desk could not take them: do not hold them idle
            if r is not None:
                self.resv = r
                self.open = FreeIndex(self.lay, resv.open_free(self.index.free, r))
                return

    def _quota_at(self, job: PendingJob, desk: DeskQuota, start_s: float) -> bool:
        """Whether the desk's quota would let the job run at `start_s`: its own running jobs
        predicted to end by then count as gone; the other desks lend what they lend now (what
        their jobs free, their own queues may take back). A job held back by quota rather than by
        free GPUs gets no reservation: holding GPUs idle would not bring its start nearer."""
        usage = dict(self.usage)
        for v in self.snap.running:
            if v.desk == job.desk and resv.predicted_end(v, self.snap.hints, self.snap.now) <= start_s:
                usage[v.desk] -= v.gpus
        if usage.get(job.desk, 0.0) + job.gpus <= desk.nominal + _EPS:
            return True
        return check_quota(desk, job.gpus, self.snap.desks, usage, self.capacity).fits

    def _restricted(self, job: PendingJob) -> bool:
        """True when `job` may not use the reserved islands and that makes a difference now (they
        hold free GPUs)."""
        r = self.resv
        if r is None or self.open is None or self.open.total == self.index.total:
            return False
        return not resv.may_use_reserved(job, r, self.snap.hints.get(job.job_id), self.snap.now)

    def _release(self) -> None:
        self.resv, self.open = None, None

    def _why_reserved(self, job: PendingJob) -> tuple[str]:
        r = self.resv
        assert r is not None
        return (f"the free GPUs that would hold it are reserved for job {r.job_id} ({r.gpus} GPUs, waiting "
                f"since t={r.since_s:g}, predicted to start by t={r.start_s:g}); "
                f"{job.job_id} is not predicted to finish by then",)

    # ---- step 2: never fits -----------------------------------------------------------------
    def _never(self, job: PendingJob, desk: DeskQuota) -> tuple[ReasonCode, str] | None:
        key = (desk.name, job.gpus)
        if key not in self._never_memo:
            self._never_memo[key] = self._never_uncached(job, desk)
        return self._never_memo[key]

    def _never_uncached(self, job: PendingJob, desk: DeskQuota) -> tuple[ReasonCode, str] | None:
        if job.gpus <= 0:
            return ReasonCode.INVALID, f"a job must ask for at least 1 GPU; asked for {job.gpus}"
        cap = self.lay.pool_capacity(desk.pools)
        limit = self._limits.get(desk.name)
        if limit is None:
            if self.cfg.quota is QuotaMode.NONE:
                limit = DeskQuota(desk.name, desk.nominal, None, desk.lending_limit, desk.weight, desk.pools)
            elif self.cfg.quota is QuotaMode.STATIC:
                limit = DeskQuota(desk.name, desk.nominal, 0.0, desk.lending_limit, desk.weight, desk.pools)
            else:
                limit = desk
            self._limits[desk.name] = limit
        return why_never_fits(limit, job.gpus, cap)

    # ---- step 3: entitled work --------------------------------------------------------------
    def _entitled(self, job: PendingJob, desk: DeskQuota) -> bool:
        """Fits nominal counting only the desk's work of equal or higher priority."""
        mine = sum(self.by_prio[job.desk][int(job.priority):])
        return mine + job.gpus <= desk.nominal + _EPS

    def _entitled_job(self, job: PendingJob, desk: DeskQuota) -> _Outcome | None:
        """Admit, else plan a reclaim (None: decided), else why the job waits. Not held back by a
        reservation: the desk's nominal share is guaranteed."""
        excess = self.usage[job.desk] + job.gpus - desk.nominal   # > 0: lower-priority own work in the way
        code = ReasonCode.WITHIN_NOMINAL
        if excess <= _EPS:
            fits, why, borrowed = True, f"within nominal quota ({self.usage[job.desk] + job.gpus:g}/{desk.nominal:g})", 0.0
        elif self.cfg.quota is QuotaMode.BORROWING:
            q = check_quota(desk, job.gpus, self.snap.desks, self.usage, self.capacity)
            fits, why, borrowed, code = q.fits, q.reason, q.borrowed, q.code
        else:
            fits, why, borrowed = False, f"desk {job.desk} is at its nominal {desk.nominal:g}", 0.0
            code = ReasonCode.STATIC_PARTITION
        if fits and self._admit(job, desk, why, borrowed, code, bound=False):   # a guarantee outranks a reservation
            return None
        if self.cfg.reclaim or self.cfg.priority_preemption:
            plan = self._plan(None, job, 0.0 if fits else excess, ("entitled", fits))
            if plan is not None:
                self._apply_plan(job, plan)
                return None
        return (Verdict.WAIT, (f"{why}; entitled, but no {job.gpus} GPUs are free in pools {sorted(desk.pools)} "
                               f"and none can be reclaimed",), ReasonCode.NO_FREE_GPUS if fits else code)

    def _reclaim_ctx(self, fresh: bool = False) -> ReclaimContext:
        """The cycle's reclaim context: one per cycle (the planner only reads it, and what it
        reads, usage, taken and the free index, are the cycle's live objects), built on first
        use; `fresh`: a new one the caller may change (LAS sets its own victim rules)."""
        if not fresh and self._ctx is not None:
            return self._ctx
        if self._on_island is None:
            self._on_island = [[] for _ in self.lay.capacity]
            for v in self.snap.running:
                for isl, _ in v.placement:
                    k = self.lay.index.get(isl)
                    if k is not None:
                        self._on_island[k].append(v)
            self._pending_ids = {j.job_id for j in self.snap.pending}
            self._placed = placed_by_index(self.lay, self.snap.running)
            self._gpus_at = gpus_by_island(self._placed)
        ctx = ReclaimContext(self.lay, self.index, self._on_island, self.usage, self.snap.desks, self.taken,
                             self._pending_ids, self.cfg.reclaim and self.cfg.quota is QuotaMode.BORROWING,
                             self.cfg.priority_preemption, self.cfg.placement is not PlacementStrategy.FIRST_FIT,
                             victim_cost=self._victim_cost(), placed=self._placed, gpus_at=self._gpus_at)
        if not fresh:
            self._ctx = ctx
        return ctx

    def _victim_cost(self) -> Callable[[RunningJob], float] | None:
        """Order of equal-priority victims (lower first): seconds of work at stake (since the last
        checkpoint) over predicted seconds still to run, so a job that checkpointed recently and
        has long to go is stopped first; None for the default (most recently started first)."""
        if not self.cfg.victims_by_lost_work or not self.snap.hints:
            return None
        hints, now = self.snap.hints, self.snap.now
        known = self._lost_memo   # it reads only the snapshot: once per running job per cycle

        def lost(v: RunningJob) -> float:   # no checkpoint reported: all work since its start is at stake
            cost = known.get(v.job_id)
            if cost is None:
                h = hints.get(v.job_id)
                age = h.checkpoint_age_s if h is not None and h.checkpoint_age_s is not None else now - v.started_at
                left = h.remaining_s(60.0) if h is not None else None
                cost = known[v.job_id] = max(0.0, age) / (left or 60.0)
            return cost
        return lost

    def _stop_level(self, job: PendingJob) -> LinkLevel:
        if self.cfg.placement is PlacementStrategy.NODE_FIT and job.gpus <= self.lay.max_node:
            return LinkLevel.INTRA_NODE   # a pod never spans nodes
        return LinkLevel.INTER_RACK

    # ---- step 3b: least attained service (Tiresias) -----------------------------------------
    def _las_job(self, job: PendingJob, desk: DeskQuota) -> None:
        """No quotas; a job in LAS queue 0 that finds no room preempts queue-1 jobs (most
        attained service first)."""
        if self._admit(job, desk, "no quotas", 0.0, ReasonCode.NO_QUOTAS):
            return
        hints, thr = self.snap.hints, self.cfg.las_threshold_gpu_s
        if self._las_queue(job.job_id, job.gpus, thr) == 0:
            def attained(v: RunningJob) -> float:
                h = hints.get(v.job_id)
                return -(h.attained_s if h else 0.0)
            ctx = self._reclaim_ctx(fresh=True)
            ctx.reclaim = ctx.priority_preemption = False
            ctx.victim_ok = lambda v: self._las_queue(v.job_id, v.gpus, thr) > 0
            ctx.victim_cost = attained
            plan = self._plan(ctx, job, 0.0, ("las",))
            if plan is not None:
                self._apply_plan(job, plan, las_threshold=thr)
                return
        self.waits.append(_d(job, Verdict.WAIT, (f"no {job.gpus} free GPUs and no job with more attained "
                                                 f"service to preempt",), ReasonCode.NO_FREE_GPUS))

    def _las_queue(self, job_id: str, gpus: float, threshold_gpu_s: float | None = None) -> int:
        """The job's LAS queue (0: under the threshold; default: the in-desk threshold)."""
        h = self.snap.hints.get(job_id)
        thr = self.cfg.las_desk_threshold_gpu_s if threshold_gpu_s is None else threshold_gpu_s
        return las_queue((h.attained_s if h else 0.0) * gpus, thr)

    def _may_swap(self, job: PendingJob) -> bool:
        """Could `_las_swap` do anything for this job (a cheap test, no plan)?"""
        return (self.cfg.las_within_desk and self._las_swaps < self.cfg.las_max_per_cycle
                and bool(self._las_victims(job.desk)) and self._las_queue(job.job_id, job.gpus) == 0)
        # (a desk out of it, DeskQuota.las False, has no candidates: _las_victims)

    def _las_swap(self, job: PendingJob) -> bool:
        """`las_within_desk`: a job in LAS queue 0 (under `las_desk_threshold_gpu_s` of attained service)
        that found no room preempts its own desk's queue-1 jobs of equal or lower priority (Tiresias
        inside the desk's share: other desks' work within their nominal is never touched, so the
        guarantees hold). A job with a deadline is never a victim: deadline work runs in EDF order,
        which attained service must not undo. Nor is one that started less than `las_min_run_s`
        ago, or one a preemption would end (`_las_victims`). Victims by the cycle's victim cost
        (least work lost first). They must free at least the job's own size inside the domain where
        it runs, so its desk's usage does not grow. True when a plan was applied."""
        if not self._may_swap(job):
            return False
        if self.resv is not None and self._restricted(job):
            return False    # held back by the head-of-line reservation: it may not take those GPUs either
        # Cheap bound first (most calls end here): the own GPUs that could go at all.
        own = sum(v.gpus for v in self._las_victims(job.desk) if v.job_id not in self.taken and v.priority <= job.priority)
        if own < job.gpus - _EPS:
            return False
        ctx = self._las_ctx.get(job.desk)
        if ctx is None:    # one per desk for the cycle: it reads the cycle's live state
            ctx = self._las_ctx[job.desk] = self._reclaim_ctx(fresh=True)
            ctx.reclaim = ctx.priority_preemption = False
            ctx.own_outside = False     # the job takes the place of its victims: they are where it runs
            ok = {v.job_id for v in self._las_victims(job.desk)}
            ctx.victim_ok = lambda v: v.job_id in ok
            # only its candidates and GPUs already coming free matter to the plan
            ctx.on_island = [[v for v in jobs if v.job_id in ok or v.preempt_deadline is not None]
                             for jobs in ctx.on_island]
        plan = self._plan(ctx, job, float(job.gpus), ("las_own",))
        if plan is None:
            return False
        self._apply_plan(job, plan, las_threshold=self.cfg.las_desk_threshold_gpu_s)
        self._las_swaps += 1
        return True

    def _las_victims(self, desk: str) -> list[RunningJob]:
        """The desk's running jobs `_las_swap` may preempt (built once per cycle): above the LAS
        threshold, started `las_min_run_s` ago or more, no deadline, restartable (a preemption
        requeues it rather than ending it: the controller's jobs with retries left), preemptible,
        not already being preempted, of a desk that takes part (`DeskQuota.las`)."""
        if self._las_by_desk is None:
            settled = self.snap.now - self.cfg.las_min_run_s
            hints = self.snap.hints
            self._las_by_desk = {}
            out = {d for d, q in self.snap.desks.items() if not q.las}   # desks that keep out of it
            for v in self.snap.running:
                h = hints.get(v.job_id)
                if (v.desk not in out and v.preemptible and v.preempt_deadline is None and v.started_at <= settled
                        and self._las_queue(v.job_id, v.gpus) > 0
                        and h is not None and h.deadline_s is None and h.restartable):
                    self._las_by_desk.setdefault(v.desk, []).append(v)
        return self._las_by_desk.get(desk, [])

    def _beneficiary_ids(self) -> set[str | None]:
        """Jobs that GPUs already coming free (preemptions of earlier cycles) were reclaimed for."""
        if self._beneficiaries is None:
            self._beneficiaries = {v.preempted_for for v in self.snap.running if v.preempt_deadline is not None}
        return self._beneficiaries

    def _plan(self, ctx: ReclaimContext | None, job: PendingJob, need_own: float,
              kind: tuple[Any, ...]) -> ReclaimPlan | None:
        """plan_reclaim, with failures remembered within the cycle: while nothing was admitted or
        reclaimed since, a job of the same desk, priority and kind that asks for at least as many
        GPUs (so at a level no nearer, with no smaller own-work need) cannot succeed either. Jobs
        that GPUs already coming free were reclaimed for are always planned (their victims differ)."""
        key = (job.desk, int(job.priority), self._stop_level(job)) + kind
        failed = self._failed.get(key)
        if failed is not None and failed[0] == self._gen and failed[1] <= job.gpus \
                and job.job_id not in self._beneficiary_ids():
            return None
        if ctx is None and not self._may_reclaim(job):
            plan = None
        else:
            plan = plan_reclaim(ctx or self._reclaim_ctx(), job, need_own, self._start_level(job),
                                self._stop_level(job))
        if plan is None and (failed is None or failed[0] != self._gen or job.gpus < failed[1]):
            self._failed[key] = (self._gen, job.gpus)
        return plan

    def _may_reclaim(self, job: PendingJob) -> bool:
        """Whether the cycle's reclaim plan (the default context) could find anything for `job`: a
        cheap necessary condition, read off the cycle's counters instead of every running job.
        The planner's candidates (preemption._classifier) are GPUs already coming free, the
        desk's own lower-priority work (priority preemption) and the work of desks borrowing above
        their nominal (reclaim); with none of them, only free GPUs are left, and the job's pools
        must hold enough whole free GPUs. Once a queue's first reclaims have brought every desk
        back to its nominal, the rest of the queue's entitled jobs stop here."""
        if self._beneficiary_ids() or self.index.pool_total(self.snap.desks[job.desk].pools) >= job.gpus:
            return True
        cfg = self.cfg
        if cfg.priority_preemption and sum(self.by_prio[job.desk][:int(job.priority)]) > _EPS:
            return True
        if cfg.reclaim and cfg.quota is QuotaMode.BORROWING:
            usage = self.usage
            return any(d != job.desk and usage.get(d, 0.0) > q.nominal + _EPS for d, q in self.snap.desks.items())
        return False

    def _apply_plan(self, job: PendingJob, plan: ReclaimPlan, las_threshold: float | None = None) -> None:
        """`las_threshold`: a least-attained-service plan (same-desk victims of equal priority are
        preempted for service, not priority)."""
        self._gen += 1
        now, deadline = self.snap.now, self.snap.now + self.cfg.preemption_grace_s
        self.index.take(plan.reserve)
        if self.open is not None:
            self.open.take(plan.reserve)
        if self.resv is not None and job.job_id == self.resv.job_id:
            self._release()   # the plan holds its GPUs from here on
        for v in plan.draining + plan.victims:
            self.taken.add(v.job_id)
            self.usage[v.desk] -= v.gpus
            self.by_prio[v.desk][int(v.priority)] -= v.gpus
        self.usage[job.desk] += job.gpus
        self.by_prio[job.desk][int(job.priority)] += job.gpus
        for v in plan.victims:
            if las_threshold is not None and v.desk == job.desk and v.priority == job.priority:
                code = ReasonCode.LEAST_ATTAINED
                why = (f"preempted for job {job.job_id} of the same desk {job.desk}: it has run less "
                       f"(least attained service first, past {las_threshold:g} GPU-seconds)")
            elif v.desk == job.desk:
                code = ReasonCode.PRIORITY
                why = (f"preempted by higher-priority job {job.job_id} ({job.priority.label} > {v.priority.label}) "
                       f"of the same desk {job.desk}")
            else:
                code = ReasonCode.RECLAIM
                q = self.snap.desks.get(v.desk)
                nominal = f"{q.nominal:g}" if q is not None else "0 (a desk no longer configured)"
                why = (f"reclaimed: desk {v.desk} is borrowing above its nominal "
                       f"{nominal}, and desk {job.desk} needs its nominal share back "
                       f"for job {job.job_id} ({job.gpus} GPUs)")
            self.preempts.append(Decision(v.job_id, v.desk, Verdict.PREEMPT,
                                          (why, f"grace {self.cfg.preemption_grace_s:g}s, until t={deadline:g}"),
                                          deadline=deadline, beneficiary=job.job_id, code=code))
        names = [v.job_id for v in plan.draining + plan.victims]
        where = _LEVEL_WORDS.get(plan.level, "the pool") if plan.level is not None else "the pool"
        coming = max((v.preempt_deadline or deadline for v in plan.draining), default=now)
        until = max(coming, deadline if plan.victims else now)
        head = (f"entitled to {job.gpus} GPUs within nominal quota" if las_threshold is None else
                f"least attained service: it has run under {las_threshold:g} GPU-seconds")
        self.waits.append(Decision(job.job_id, job.desk, Verdict.WAIT,
                                   (f"{head}; waiting for "
                                    f"{len(names)} preempted job(s) to free GPUs in {where} (by t={until:g})",),
                                   placement=self.index.to_placement(plan.placement), victims=tuple(names),
                                   code=ReasonCode.AWAITING_PREEMPTION))

    # ---- step 4: borrowing ------------------------------------------------------------------
    def _borrow_fair(self, jobs: list[PendingJob]) -> None:
        queues: dict[str, list[PendingJob]] = {}
        for job in jobs:
            queues.setdefault(job.desk, []).append(job)
        heads = {d: 0 for d in queues}
        heap = [(self._share(d), d) for d in queues]
        heapq.heapify(heap)
        while heap:
            _, d = heapq.heappop(heap)
            q = queues[d]
            job = q[heads[d]]
            heads[d] += 1
            if self.index.total <= 0:   # nothing left to hand out: the rest wait, but for LAS swaps
                why: dict[int, tuple[str]] = {}
                las, most = self.cfg.las_within_desk, self.cfg.las_max_per_cycle
                for rest in [job] + [j for dd in queues for j in queues[dd][heads[dd]:]]:
                    if las and self._las_swaps < most and self._may_swap(rest):   # (the cheap half first)
                        self._borrow(rest)
                        continue
                    if rest.gpus not in why:
                        why[rest.gpus] = (f"borrowing: no free GPUs for {rest.gpus} more",)
                    self.waits.append(_d(rest, Verdict.WAIT, why[rest.gpus], ReasonCode.NO_FREE_GPUS))
                return
            self._borrow(job)
            if heads[d] < len(q):
                heapq.heappush(heap, (self._share(d), d))

    def _share(self, desk: str) -> float:
        """Weighted fair share: GPUs held over weight (lower goes first)."""
        return self.usage.get(desk, 0.0) / self.snap.desks[desk].weight

    def _borrow(self, job: PendingJob) -> None:
        """Step 4 for one job. Until the cycle's state changes (an admission or a reclaim bumps
        `_gen`), a job of the same desk, size and worker unit gets the same answer: the quota
        check reads only usage, and the placement only the free index. A waiting outcome is
        remembered per generation and copied, as `run` does for steps 2 and 3."""
        key = (self._gen, job.desk, job.gpus, job.unit)
        hit = self._borrow_memo.get(key)
        if hit is not None:
            # The memo does not know priority or service: a job of the class may still swap.
            if self._las_swap(job):
                return
            self.waits.append(_d(job, *hit))
            return
        desk = self.snap.desks[job.desk]
        q = check_quota(desk, job.gpus, self.snap.desks, self.usage, self.capacity)
        if not q.fits:
            out: _Outcome = (Verdict.WAIT, (q.reason,), q.code)
        else:
            wait = self._admit_else_why(job, desk, q.reason, q.borrowed, q.code)
            if wait is None:
                return
            out = wait
        if self._las_swap(job):
            return
        self._borrow_memo[key] = out
        self.waits.append(_d(job, *out))

    # ---- placement --------------------------------------------------------------------------
    def _start_level(self, job: PendingJob) -> LinkLevel:
        return self.topo.ideal_level(job.gpus)

    def _admit_else_why(self, job: PendingJob, desk: DeskQuota, why: str, borrowed: float,
                        code: ReasonCode) -> _Outcome | None:
        if self._admit(job, desk, why, borrowed, code):
            return None
        if self._blocked:
            return Verdict.WAIT, self._why_reserved(job), ReasonCode.RESERVATION
        return (Verdict.WAIT, (f"{why}; no {job.gpus} free GPUs in pools {sorted(desk.pools)} "
                               f"({self.index.pool_total(desk.pools)} free)",), ReasonCode.NO_FREE_GPUS)

    def _admit(self, job: PendingJob, desk: DeskQuota, why: str, borrowed: float, code: ReasonCode,
               bound: bool = True) -> bool:
        """Place and admit `job`; `bound`: the reservation applies (borrowers, and every job
        without quotas), else it may use reserved GPUs too (work within nominal)."""
        self._blocked = False
        if self.index.total < job.gpus:
            return False
        if bound and self._restricted(job):
            assert self.open is not None
            got = self._place(self.open, job, desk)
            if got is None:
                self._blocked = self._place(self.index, job, desk) is not None
                return False
        else:
            got = self._place(self.index, job, desk)
            if got is None:
                return False
        pix, how = got
        self.index.take(pix)
        if self.open is not None:
            self.open.take(pix)
        if self.resv is not None and job.job_id == self.resv.job_id:
            self._release()
            how += "; it held a reservation"
        self._gen += 1
        lenders = attribute_lenders(job.desk, borrowed, self.snap.desks, self.usage, self.capacity,
                                    {self.lay.island_pool[k] for k, _ in pix}) if borrowed > _EPS else ()
        self.usage[job.desk] = self.usage.get(job.desk, 0.0) + job.gpus
        self.by_prio[job.desk][int(job.priority)] += job.gpus
        self.admits.append(Decision(job.job_id, job.desk, Verdict.ADMIT, (why, how),
                                    self.index.to_placement(pix), borrowed, code=code, lenders=lenders))
        return True

    def _place(self, free: FreeIndex, job: PendingJob, desk: DeskQuota) -> tuple[list[tuple[int, int]], str] | None:
        """Where `job` would go on `free` under the configured strategy, and how; None: nowhere."""
        if free.total < job.gpus:
            return None
        index = free.in_units(job.unit)
        pix: list[tuple[int, int]] | None
        if self.cfg.placement is PlacementStrategy.BEST_FIT:
            got = index.best_fit(job.gpus, desk.pools, self._start_level(job))
            if got is None:
                return None
            pix, level = got
            return pix, f"best fit in {_LEVEL_WORDS[level]} (ring bound by {level.name.lower()} links)"
        if self.cfg.placement is PlacementStrategy.NODE_FIT:
            pix = node_fit(free, job.gpus, desk.pools)
            return None if pix is None else (pix, "first node with room for each pod")
        pix = index.first_fit(job.gpus, desk.pools)
        return None if pix is None else (pix, "first fit")


def _setter(name: str) -> Callable[[Decision, Any], None]:
    return getattr(Decision, name).__set__   # type: ignore[no-any-return]   # the slot's descriptor


_SET_JOB, _SET_DESK, _SET_VERDICT, _SET_REASONS, _SET_CODE = (
    _setter(n) for n in ("job_id", "desk", "verdict", "reasons", "code"))
_SET_DEFAULTS = tuple((_setter(f.name), f.default) for f in fields(Decision)
                      if f.name not in ("job_id", "desk", "verdict", "reasons", "code"))


def _d(job: PendingJob, verdict: Verdict, reasons: tuple[str], code: ReasonCode) -> Decision:
    """A reason-only decision, equal to `Decision(job.job_id, job.desk, verdict, reasons,
    code=code)`. Its slots are filled directly rather than through the frozen dataclass
    __init__ (one `object.__setattr__` per field): a long queue makes thousands of WAITs per
    cycle, and this is about three times cheaper. The reasons tuple is shared by every job of
    an outcome."""
    d: Decision = object.__new__(Decision)
    _SET_JOB(d, job.job_id)
    _SET_DESK(d, job.desk)
    _SET_VERDICT(d, verdict)
    _SET_REASONS(d, reasons)
    _SET_CODE(d, code)
    for set_default, value in _SET_DEFAULTS:
        set_default(d, value)
    return d
