"""The trace simulator on the market clock (benchmarks.market_day): quotas that switch by window,
serving reservations that follow an invocation trace in market hours, deadline jobs.

An extension of `rayfin.sim.Simulator` through its hooks only (`_snapshot_pending`, the event
heap, `_account`); with no scenario events it behaves exactly as the base simulator.

    switches   (time, quotas, window): the desks' DeskQuota map from `time` on. A policy that
               follows the plan gets one switch per window boundary, `lead_s` early (rayfin:
               one preemption grace, so the reclaim a switch forces is done at the boundary);
               a constant-quota policy gets one switch at 0.
    serving    (time, GPUs) steps of the serving demand; the serving desk holds one 1-GPU
               reservation per demanded GPU (priority critical, not preemptible once running),
               added and released at each step. `prewarm` (from, to, GPUs): hold at least that
               many in [from, to) (rayfin: the plan's serving GPUs from one grace before the open).
    deadlines  job id -> deadline (sim seconds). `order`: "submission" (as given), "edf"
               (deadline jobs first by deadline, no escalation), or "market" (rayfin:
               rayfin.market.deadline.market_order, the other jobs by predicted remaining time
               with aging as in the rayfin preset, deadline jobs out of slack raised to critical).

Measured up to `horizon_s`: idle GPU-seconds while work waited (min(idle, pending GPUs)), and
serving shortfall (max(0, demanded - held serving GPUs)), in market hours and in the first
`open_window_s` after each open, and serving GPUs held above the demand (`over`: what a pre-warm
or a floor costs the batch desks).
"""
from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from rayfin.market.deadline import DeadlineJob, SlackPolicy, guard_deadline_class, market_order
from rayfin.market.plan import WindowName
from rayfin.policy.duration import DurationState
from rayfin.policy.model import DeskQuota, PendingJob, Priority
from rayfin.policy.ordering import JobRank, order
from rayfin.sim.engine import _DEADLINE, Simulator
from rayfin.sim.trace import TraceJob

TICK = "@tick"
SERVE_TENANT = "@serve"


@dataclass(frozen=True)
class MarketScenario:
    horizon_s: float
    switches: tuple[tuple[float, Mapping[str, DeskQuota], WindowName], ...]
    serving: tuple[tuple[float, int], ...] = ()
    prewarm: tuple[tuple[float, float, int], ...] = ()
    opens: tuple[float, ...] = ()
    deadlines: Mapping[str, float] = field(default_factory=dict)
    serve_desk: str = "serve"
    open_window_s: float = 1800.0


class MarketSimulator(Simulator):
    def __init__(self, *args, scenario: MarketScenario, order: str = "submission",
                 slack: SlackPolicy = SlackPolicy(), warm_state: DurationState | None = None,
                 time_decisions: bool = False, guard_deadline_class: bool = False, **kw):
        super().__init__(*args, **kw)
        self.time_decisions = time_decisions
        self.guard = guard_deadline_class
        self.sc = scenario
        self.order = order
        self.slack = slack
        self.warm_state = warm_state
        self.desk_of = dict(self.desk_of) | {SERVE_TENANT: scenario.serve_desk}
        if order == "market":
            self.wants_hints = True

    # ---- events -------------------------------------------------------------------------------
    def run(self, jobs: Sequence[TraceJob]):
        self._sw = 0
        self._serve_n = 0
        self._serve_ids: list[str] = []           # held or pending reservations, oldest first
        self.serve_demand = 0
        self.idle_wait = self.short = self.short_open = self.over = 0.0
        self.quota_series: list[tuple[float, tuple[float, ...]]] = []
        self._warmed = False
        times = {s[0] for s in self.sc.switches} | {s[0] for s in self.sc.serving}
        times |= {p[0] for p in self.sc.prewarm} | {p[1] for p in self.sc.prewarm}
        self._ticks = sorted(max(0.0, x) for x in times)
        self._serve_t = [s[0] for s in self.sc.serving]
        self._seeded = False
        self._dl_pending: set[str] = set()        # pending jobs with a deadline (kept as they queue)
        return super().run(jobs)

    def _arrive(self, job: TraceJob, t: float) -> None:
        if not self._seeded:     # the base run() empties the event heap first: seed it at the first arrival
            self._seeded = True
            for x in self._ticks:
                if x > t:
                    heapq.heappush(self.events, (x, _DEADLINE, TICK, 0))
            self._tick(t)
        super()._arrive(job, t)

    def _kill(self, jid: str, epoch: int, t: float) -> None:
        if jid == TICK:
            self._tick(t)
            return
        super()._kill(jid, epoch, t)

    def _tick(self, t: float) -> None:
        if not self._warmed and self.warm_state is not None:
            self.dstate, self._warmed = self.warm_state, True
        sw = self.sc.switches
        changed = False
        while self._sw < len(sw) and sw[self._sw][0] <= t + 1e-6:
            self.desks = dict(sw[self._sw][1])
            self._sw += 1
            changed = True
        if changed:
            self.quota_series.append((t, tuple(self.desks[d].nominal for d in self.desks)))
        k = bisect.bisect_right(self._serve_t, t + 1e-6) - 1
        self.serve_demand = self.sc.serving[k][1] if k >= 0 else 0
        target = self.serve_demand
        for a, b, g in self.sc.prewarm:
            if a <= t + 1e-6 < b:
                target = max(target, g)
        self._set_serving(target, t)

    def _set_serving(self, target: int, t: float) -> None:
        while len(self._serve_ids) < target:
            self._serve_n += 1
            job = TraceJob(f"serve.{self._serve_n}", SERVE_TENANT, t, 1e12, 1, Priority.CRITICAL, "replica")
            self._serve_ids.append(job.job_id)
            self._arrive_serve(job, t)
        while len(self._serve_ids) > target:
            # release a pending reservation before a held one, newest first
            pend = [j for j in self._serve_ids if j in self.pending]
            jid = pend[-1] if pend else self._serve_ids[-1]
            self._serve_ids.remove(jid)
            rec = self.recs[jid]
            if jid in self.pending:
                self._unqueue(rec)
                rec.refused = "released"
            elif jid in self.running:
                rec.cepoch += 1
                self._stop(rec, t)
                rec.end = t

    def _queue(self, rec) -> None:
        super()._queue(rec)
        if rec.job.job_id in self.sc.deadlines:
            self._dl_pending.add(rec.job.job_id)

    def _unqueue(self, rec) -> None:
        super()._unqueue(rec)
        self._dl_pending.discard(rec.job.job_id)

    def _arrive_serve(self, job: TraceJob, t: float) -> None:
        Simulator._arrive(self, job, t)

    def _start(self, rec, placement, t: float) -> None:
        super()._start(rec, placement, t)
        if rec.job.tenant == SERVE_TENANT:
            jid = rec.job.job_id
            self.running[jid] = replace(self.running[jid], preemptible=False)

    def _snapshot_running(self, t: float, pending) -> tuple:
        """`guard_deadline_class`: a running deadline job due no later than an escalated pending
        job of its desk is shown at that job's priority, so the escalation may borrow and reclaim
        from other desks but never priority-preempts deadline work of its own desk that is as
        urgent (EDF inside the desk is not undone by preemption)."""
        run = tuple(self.running.values())
        if not self.guard:
            return run
        escalated = [(j.desk, self.sc.deadlines[j.job_id], j.priority) for j in pending
                     if j.job_id in self.sc.deadlines and j.priority > self.recs[j.job_id].job.priority]
        return guard_deadline_class(run, escalated, self.sc.deadlines)

    # ---- order --------------------------------------------------------------------------------
    def _deadline_of(self, job_id: str) -> float | None:
        return self.sc.deadlines.get(job_id)

    def _snapshot_pending(self, t: float, hints) -> tuple[PendingJob, ...]:
        pend = tuple(self.pending.values())
        if self.order == "submission":
            return pend
        dl = {}
        deadlines = self.sc.deadlines
        for jid in self._dl_pending:   # a mapping: its order does not matter
            h = hints.get(jid)
            rem = h.remaining_s(1.0) if h is not None else None
            dl[jid] = DeadlineJob(jid, deadlines[jid], rem)
        if self.order == "edf":
            out, _ = market_order(pend, dl, t, SlackPolicy(threshold_s=float("-inf")), escalations=False)
            return out
        # priority, then rank_key(PREDICTED_REMAINING): `order` computes the same keys with the
        # same float arithmetic as arrays and sorts them stably (a per-job key function was a
        # seventh of the run time on a queue of thousands)
        pend = tuple(order(JobRank.PREDICTED_REMAINING, pend, hints, t, aging_s=self.cfg.aging_s))
        out, _ = market_order(pend, dl, t, self.slack, escalations=False)
        return out

    # ---- metrics ------------------------------------------------------------------------------
    def _account(self, t0: float, t1: float) -> None:
        super()._account(t0, t1)
        b = min(t1, self.sc.horizon_s)
        if b <= t0:
            return
        dt = b - t0
        pend = sum(p.gpus for p in self.pending.values())
        idle = max(0.0, self.capacity - self.alloc)
        self.idle_wait += min(idle, pend) * dt
        held = self.usage.get(self.sc.serve_desk, 0.0)
        self.over += max(0.0, held - self.serve_demand) * dt
        gap = max(0.0, self.serve_demand - held)
        if gap > 0:
            self.short += gap * dt
            k = bisect.bisect_right(self.sc.opens, t0) - 1
            if k >= 0 and t0 < self.sc.opens[k] + self.sc.open_window_s:
                self.short_open += gap * (min(b, self.sc.opens[k] + self.sc.open_window_s) - t0)
