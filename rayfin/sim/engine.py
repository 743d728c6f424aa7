"""Discrete-event replay of a job trace through the policy core (`rayfin.policy.schedule`).

Events are arrivals, completions and preemption deadlines. At every instant where at least one
happens (all events at one instant are applied together), the simulator builds the same
`ClusterSnapshot` the live controller builds and applies the `CycleDecision` the way the
controller does: admits start at once on their placement; a PREEMPT marks the victim with
`preempt_deadline` and `preempted_for`, and at the deadline the victim is stopped and
re-queued (it keeps its place: its original submission time); refusals end the job.

Runtime model, the same for every policy: the trace duration is the job's runtime on an ideal
placement; a spread placement stretches it by `stretch` (rayfin.sim.placement_model: calibrated
from measured step times, linear, or none; default: the linear model of
placement.allreduce.stretch_factor with f = `comm_fraction`).

Preemption: with `checkpoint_interval_s` None a preempted job checkpoints during its grace period
and later resumes the work it had left. With an interval C, a job checkpoints every C seconds of
running (from each start), and a preemption loses the work since its last checkpoint (counted as
lost GPU-seconds); that is what makes a victim with a recent checkpoint cheaper.

Restart: with `restart_overhead_s` R > 0, every start after a preemption, and every resize of an
elastic gang, costs R seconds of no progress (a restart from the checkpoint: processes, the
process group, the checkpoint reload), counted in `lost_gpu_s` with the work lost since the
checkpoint. Every policy pays it alike.

Hints (rayfin.policy.hints) for policies that read them: `predictor` "oracle" gives every job its
true duration (the SJF oracle only); a `DurationPredictor` learns online from completed jobs (the
same predictor the controller runs); None gives no predictions. Attained service and checkpoint
age come from the simulator's own records.

Deterministic: decisions never see the wall clock; `time.perf_counter` only measures how long
each `schedule` call took (the decision latency).
"""
from __future__ import annotations

import heapq
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from placement.allreduce import stretch_factor
from placement.topology import Topology
from rayfin import collector
from rayfin.policy import elastic
from rayfin.policy.duration import DurationPredictor, DurationState, JobKey
from rayfin.policy.hints import JobHint
from rayfin.policy.model import ClusterSnapshot, CommProfile, DeskQuota, PendingJob, Priority, RunningJob
from rayfin.policy.ordering import JobRank
from rayfin.policy.scheduler import schedule
from rayfin.policy.settings import SchedulerConfig
from rayfin.sim.trace import TraceJob

_EPS = 1e-6
_COMPLETE, _DEADLINE = 0, 1


@dataclass
class _Rec:
    """Mutable per-job bookkeeping of the simulator (never shown to the policy)."""

    job: TraceJob
    desk: str
    work_left: float
    queued_since: float
    first_start: float | None = None
    run_time: float = 0.0
    started: float = 0.0
    stretch: float = 1.0
    epoch: int = 0
    cepoch: int = 0          # completion events: bumped whenever the job's speed changes
    speed: float = 1.0       # elastic: speed over its asked size (measured scaling curve)
    seg_start: float = 0.0   # when the current speed began
    extra: int = 0           # elastic: workers above the asked size
    elastic: bool = False
    end: float | None = None
    refused: str | None = None
    predicted: float | None = None


@dataclass
class SimResult:
    policy: str
    capacity: int
    desks: tuple[str, ...]
    jct_s: list[float]
    wait_s: list[float]
    busy_gpu_s: float                 # GPU-seconds allocated to jobs, whole run
    busy_window_gpu_s: float          # ... within [0, last submission]
    useful_window_gpu_s: float        # ideal-placement work done within the window
    window_s: float
    makespan_s: float
    violation_gpu_s: float
    preemptions: int
    single_island: int                # placements of multi-GPU jobs that fit one island, in one
    single_island_eligible: int
    decision_s: list[float]           # wall time of each schedule() call (perf_counter)
    decision_cpu_s: list[float]       # CPU time of the same calls (thread_time): immune to a busy host
    completed: int
    refused: int
    unfinished: int
    desk_series: list[tuple[float, tuple[float, ...]]] = field(default_factory=list)
    # per completed job, aligned with jct_s: trace duration, GPUs, desk
    duration_s: list[float] = field(default_factory=list)
    gpus: list[int] = field(default_factory=list)
    job_desk: list[str] = field(default_factory=list)
    lost_gpu_s: float = 0.0           # work thrown away by preemptions (since the last checkpoint)
    predictions: list[tuple[float, float]] = field(default_factory=list)   # (predicted, true) at queueing


class Simulator:
    def __init__(self, topology: Topology, desks: Mapping[str, DeskQuota], cfg: SchedulerConfig,
                 desk_of: Mapping[str, str], comm_fraction: float = 0.3, record_desks: bool = False,
                 name: str = "", stretch=None, predictor: "DurationPredictor | str | None" = None,
                 checkpoint_interval_s: float | None = None, elastic=None, elastic_share: float = 0.5,
                 restart_overhead_s: float = 0.0):
        self.topo, self.desks, self.cfg = topology, dict(desks), cfg
        self.stretch = stretch
        self.predictor = predictor
        self.ckpt = checkpoint_interval_s
        if restart_overhead_s < 0:
            raise ValueError(f"restart_overhead_s must be >= 0; got {restart_overhead_s}")
        self.restart_overhead = restart_overhead_s
        self.curves = elastic                  # rayfin.sim.elastic.ScalingCurves, or None: no elastic gangs
        self.elastic_share = elastic_share
        # running jobs' hints (attained service, checkpoint age) move with the clock for these
        self.running_hints = cfg.las_preemption or cfg.victims_by_lost_work or cfg.reservation or cfg.las_within_desk
        self.wants_hints = cfg.rank is not JobRank.SUBMISSION or self.running_hints
        self.desk_of = desk_of
        self.comm_fraction = comm_fraction
        self.record_desks = record_desks
        self.name = name
        self.capacity = topology.total_gpus
        self.max_island = topology.layout.max_island
        # decision latency (SimResult.decision_s / decision_cpu_s); off where no one reads it: two
        # clock reads per cycle were a quarter of a market_day run on a busy host
        self.time_decisions = True

    # ---- the event loop -----------------------------------------------------------------------
    def run(self, jobs: Sequence[TraceJob]) -> SimResult:
        jobs = sorted(jobs, key=lambda j: j.submit_s)
        self.recs: dict[str, _Rec] = {}
        self.running: dict[str, RunningJob] = {}
        self.pending: dict[str, PendingJob] = {}
        self.by_desk_pending: dict[str, dict[str, _Rec]] = {d: {} for d in self.desks}
        self.usage = {d: 0.0 for d in self.desks}
        self.events: list[tuple[float, int, str, int]] = []
        self.busy = self.busy_win = self.useful_win = self.viol = 0.0
        self.alloc = 0.0
        self.useful_rate = 0.0
        self.preemptions = self.si = self.si_elig = 0
        self.decision_s: list[float] = []
        self.decision_cpu_s: list[float] = []
        self.series: list[tuple[float, tuple[float, ...]]] = []
        self._pending_sorted = True
        self.hints: dict[str, JobHint] = {}
        self.dstate = DurationState()
        self.lost = 0.0
        self.predictions: list[tuple[float, float]] = []
        self.extra_of: dict[str, str] = {}     # extra-workers id -> job id
        self.resizes = 0
        window = jobs[-1].submit_s if jobs else 0.0
        self.window = window
        t, ai, n = 0.0, 0, len(jobs)
        while True:
            nxt = min(jobs[ai].submit_s if ai < n else float("inf"), self.events[0][0] if self.events else float("inf"))
            if nxt == float("inf"):
                break
            self._account(t, nxt)
            t = nxt
            while self.events and self.events[0][0] <= t + _EPS:
                _, kind, jid, epoch = heapq.heappop(self.events)
                if kind == _COMPLETE:
                    self._complete(jid, epoch, t)
                elif jid.endswith(elastic.EXTRA_SUFFIX):
                    if jid in self.extra_of:
                        self._shrink(self.recs[self.extra_of[jid]], t)
                else:
                    self._kill(jid, epoch, t)
            while ai < n and jobs[ai].submit_s <= t + _EPS:
                self._arrive(jobs[ai], t)
                ai += 1
            if self.pending:
                self._cycle(t)
            if self.curves is not None:
                self._resize(t)
            if self.record_desks:
                self.series.append((t, tuple(self.usage[d] for d in self.desks)))
        return self._result(t)

    def _cycle(self, t: float) -> None:
        if not self._pending_sorted:
            self.pending = dict(sorted(self.pending.items(), key=lambda kv: (kv[1].submitted_at, kv[0])))
            self._pending_sorted = True
        hints = self._hints(t) if self.wants_hints else {}
        pending = self._snapshot_pending(t, hints)
        snap = ClusterSnapshot(t, self.topo, self.desks, self._snapshot_running(t, pending), pending, hints=hints)
        if self.time_decisions:
            with collector.paused():   # as the controller's decide step runs
                c0, t0 = time.thread_time(), time.perf_counter()
                dec = schedule(snap, self.cfg)
                self.decision_s.append(time.perf_counter() - t0)
                self.decision_cpu_s.append(time.thread_time() - c0)
        else:
            dec = schedule(snap, self.cfg)
        for d in dec.refusals:
            rec = self.recs[d.job_id]
            rec.refused = d.reason
            self._unqueue(rec)
        for d in dec.preempts:
            rj = self.running[d.job_id]
            self.running[d.job_id] = replace(rj, preempt_deadline=d.deadline, preempted_for=d.beneficiary)
            assert d.deadline is not None, "a preemption decision carries the end of its grace period"
            epoch = 0 if d.job_id in self.extra_of else self.recs[d.job_id].epoch
            heapq.heappush(self.events, (d.deadline, _DEADLINE, d.job_id, epoch))
        for d in dec.admits:
            self._start(self.recs[d.job_id], d.placement, t)

    def _snapshot_pending(self, t: float, hints) -> tuple[PendingJob, ...]:
        """The pending jobs a cycle sees, in the order it sees them (a hook: rayfin.sim.market
        reorders them by deadline and raises the priority of jobs out of slack)."""
        return tuple(self.pending.values())

    def _snapshot_running(self, t: float, pending: tuple[PendingJob, ...]) -> tuple[RunningJob, ...]:
        """The running jobs a cycle sees (a hook: rayfin.sim.market can show running deadline jobs
        at their deadline class's priority)."""
        return tuple(self.running.values())

    def _hints(self, t: float) -> dict[str, JobHint]:
        """Pending jobs' hints are fixed while they wait (made at queueing); running jobs' attained
        service and checkpoint age move with the clock."""
        hints = dict(self.hints)
        if self.running_hints:
            for jid in self.running:
                if jid in self.extra_of:
                    continue
                rec = self.recs[jid]
                ran = t - rec.started
                age = ran % self.ckpt if self.ckpt else 0.0
                hints[jid] = JobHint(rec.predicted, rec.run_time + ran, age, self._deadline_of(jid))
        return hints

    def _deadline_of(self, job_id: str) -> float | None:
        """A running job's deadline for its hint (a hook: rayfin.sim.market has deadline jobs)."""
        return None

    def _predict(self, rec: _Rec) -> float | None:
        if self.predictor is None:
            return None
        if isinstance(self.predictor, str):   # "oracle": the trace's own duration
            return rec.job.duration_s
        p = self.predictor.predict(self.dstate, self._key(rec))
        return None if p is None else p.seconds

    def _key(self, rec: _Rec) -> JobKey:
        return JobKey(rec.desk, rec.job.tenant, rec.job.name, rec.job.gpus)

    # ---- state changes ------------------------------------------------------------------------
    def _arrive(self, job: TraceJob, t: float) -> None:
        desk = self.desk_of[job.tenant]
        rec = _Rec(job, desk, job.duration_s, t)
        rec.elastic = self.curves is not None and self._is_elastic(job)
        self.recs[job.job_id] = rec
        self._queue(rec)

    def _queue(self, rec: _Rec) -> None:
        j = rec.job
        comm = CommProfile.ALLREDUCE if j.gpus > 1 else CommProfile.NONE
        self.pending[j.job_id] = PendingJob(j.job_id, rec.desk, j.gpus, j.priority, j.submit_s, comm)
        self.by_desk_pending.setdefault(rec.desk, {})[j.job_id] = rec
        if self.wants_hints:
            rec.predicted = self._predict(rec)
            if rec.run_time == 0.0 and rec.predicted is not None:
                self.predictions.append((rec.predicted, j.duration_s))
            self.hints[j.job_id] = JobHint(rec.predicted, rec.run_time)

    def _unqueue(self, rec: _Rec) -> None:
        del self.pending[rec.job.job_id]
        del self.by_desk_pending[rec.desk][rec.job.job_id]
        self.hints.pop(rec.job.job_id, None)

    def _start(self, rec: _Rec, placement, t: float) -> None:
        j = rec.job
        self._unqueue(rec)
        if self.stretch is not None:
            rec.stretch = self.stretch.factor(self.topo, j.job_id, placement)
        else:
            rec.stretch = stretch_factor(self.topo, placement, self.comm_fraction if j.gpus > 1 else 0.0)
        rec.started = t
        if rec.first_start is None:
            rec.first_start = t
        else:                         # a restart after a preemption
            self._pay_restart(rec, 1.0, j.gpus)
        rec.epoch += 1
        rec.cepoch += 1
        rec.speed, rec.seg_start, rec.extra = 1.0, t, 0
        if 1 < j.gpus <= self.max_island:
            self.si_elig += 1
            self.si += len(placement) == 1
        self.running[j.job_id] = RunningJob(j.job_id, rec.desk, float(j.gpus), placement, j.priority, t)
        self._alloc(rec, +1)
        heapq.heappush(self.events, (t + rec.work_left * rec.stretch, _COMPLETE, j.job_id, rec.cepoch))

    def _alloc(self, rec: _Rec, sign: int) -> None:
        g = rec.job.gpus
        self.alloc += sign * g
        self.useful_rate += sign * g / rec.stretch
        self.usage[rec.desk] += sign * g

    def _stop(self, rec: _Rec, t: float, preempted: bool = False) -> None:
        del self.running[rec.job.job_id]
        self._alloc(rec, -1)
        if rec.extra:
            self._drop_extra(rec, t)
        ran = t - rec.started
        rec.run_time += ran
        full = rec.work_left - (t - rec.seg_start) * rec.speed / rec.stretch
        if preempted and self.ckpt:
            kept = (ran // self.ckpt) * self.ckpt    # back to the last checkpoint
            self.lost += (ran - kept) * rec.job.gpus
            full += (ran - kept) * rec.speed / rec.stretch
        rec.work_left = max(0.0, full)

    def _complete(self, jid: str, epoch: int, t: float) -> None:
        rec = self.recs[jid]
        if rec.cepoch != epoch or jid not in self.running:
            return
        self._stop(rec, t)
        rec.end = t
        if isinstance(self.predictor, DurationPredictor):
            self.dstate = self.predictor.observe(self.dstate, self._key(rec), rec.job.duration_s)

    def _kill(self, jid: str, epoch: int, t: float) -> None:
        rec = self.recs[jid]
        if rec.epoch != epoch or jid not in self.running:
            return   # finished within its grace period
        self._stop(rec, t, preempted=True)
        self.preemptions += 1
        rec.queued_since = t
        self._queue(rec)
        self._pending_sorted = False

    # ---- elastic gangs ------------------------------------------------------------------------
    def _is_elastic(self, j: TraceJob) -> bool:
        """A stable share of multi-GPU jobs declare workers=(asked, 2 x asked)."""
        return j.gpus >= 2 and (zlib.crc32(("elastic:" + j.job_id).encode()) % 1000) < self.elastic_share * 1000

    def _pay_restart(self, rec: _Rec, speed: float, gpus: float) -> None:
        """`restart_overhead` seconds of no progress at `speed` on `gpus`, counted as lost work."""
        if self.restart_overhead:
            rec.work_left += self.restart_overhead * speed / rec.stretch
            self.lost += self.restart_overhead * gpus

    def _set_speed(self, rec: _Rec, t: float, speed: float) -> None:
        """A resize: the gang restarts from its checkpoint at the new world size, so it pays the
        restart overhead like a restart after a preemption (counted in lost work)."""
        rec.work_left = max(0.0, rec.work_left - (t - rec.seg_start) * rec.speed / rec.stretch)
        self._pay_restart(rec, speed, rec.job.gpus + rec.extra)
        rec.seg_start, rec.speed = t, speed
        rec.cepoch += 1
        heapq.heappush(self.events, (t + rec.work_left * rec.stretch / speed, _COMPLETE, rec.job.job_id, rec.cepoch))

    def _resize(self, t: float) -> None:
        """The elastic decisions of the policy core (rayfin.policy.elastic), as the controller
        takes them: shrink while anyone waits (the extra workers `<id>+x` are preempted with the
        usual grace: the job sees its new world size at a checkpoint boundary, no work is lost);
        grow into idle GPUs when no one does, by the measured scaling curve. Gangs are declared
        workers=(asked, 2 x asked), one GPU per worker."""
        if self.pending:
            if not self.extra_of:
                return
            snap = ClusterSnapshot(t, self.topo, self.desks, tuple(self.running[x] for x in self.extra_of),
                                   tuple(self.pending.values()))
            gangs = [self._gang(self.extra_of[x]) for x in self.extra_of]
            for d in elastic.shrinks(snap, gangs, self.cfg.preemption_grace_s):
                assert d.deadline is not None
                self.running[d.job_id] = replace(self.running[d.job_id], preempt_deadline=d.deadline)
                heapq.heappush(self.events, (d.deadline, _DEADLINE, d.job_id, 0))
            return
        gangs = [self._gang(jid) for jid, rj in self.running.items()
                 if (rec := self.recs.get(jid)) is not None and rec.elastic and not rec.extra]
        if not gangs:
            return
        snap = ClusterSnapshot(t, self.topo, self.desks, tuple(self.running.values()))
        assert self.curves is not None
        for g in elastic.grows(snap, gangs, self.curves.speedup):
            rec = self.recs[g.job_id]
            xid = elastic.extra_id(g.job_id)
            self.extra_of[xid] = g.job_id
            rec.extra = g.workers - rec.job.gpus
            self.running[xid] = RunningJob(xid, rec.desk, float(rec.extra), g.placement, Priority.BATCH, t)
            self.alloc += rec.extra
            self.usage[rec.desk] += rec.extra
            self.resizes += 1
            assert g.speedup is not None
            self._set_speed(rec, t, g.speedup)

    def _gang(self, jid: str) -> elastic.ElasticGang:
        rec, rj = self.recs[jid], self.running[jid]
        g = rec.job.gpus
        return elastic.ElasticGang(jid, rec.desk, g + rec.extra, g, 2 * g, 1, resizing=rj.preempt_deadline is not None)

    def _drop_extra(self, rec: _Rec, t: float) -> None:
        xid = elastic.extra_id(rec.job.job_id)
        if self.running.pop(xid, None) is not None:
            self.alloc -= rec.extra
            self.usage[rec.desk] -= rec.extra
        self.extra_of.pop(xid, None)
        rec.extra = 0

    def _shrink(self, rec: _Rec, t: float) -> None:
        if not rec.extra:
            return
        self._drop_extra(rec, t)
        self.resizes += 1
        if rec.job.job_id in self.running:
            self._set_speed(rec, t, 1.0)

    # ---- metrics ------------------------------------------------------------------------------
    def _account(self, t0: float, t1: float) -> None:
        dt = t1 - t0
        if dt <= 0:
            return
        self.busy += self.alloc * dt
        if t0 < self.window:
            w = min(t1, self.window) - t0
            self.busy_win += self.alloc * w
            self.useful_win += self.useful_rate * w
        grace = self.cfg.preemption_grace_s
        for desk, queue in self.by_desk_pending.items():
            if not queue:
                continue
            unused = self.desks[desk].nominal - self.usage[desk]
            if unused < 1 - _EPS:
                continue
            # Pending work that fits the unused nominal (oldest first) and has waited past the grace.
            for rec in queue.values():
                g = rec.job.gpus
                if g > unused + _EPS:
                    continue
                unused -= g
                late = t1 - max(t0, rec.queued_since + grace)
                if late > 0:
                    self.viol += g * late
                if unused < 1 - _EPS:
                    break

    def _result(self, t_end: float) -> SimResult:
        jct, wait, dur, gpus, desk = [], [], [], [], []
        done = refused = 0
        for rec in self.recs.values():
            if rec.end is not None:
                done += 1
                jct.append(rec.end - rec.job.submit_s)
                wait.append(rec.end - rec.job.submit_s - rec.run_time)
                dur.append(rec.job.duration_s)
                gpus.append(rec.job.gpus)
                desk.append(rec.desk)
            elif rec.refused:
                refused += 1
        return SimResult(self.name, self.capacity, tuple(self.desks), jct, wait, self.busy, self.busy_win,
                         self.useful_win, self.window, t_end, self.viol, self.preemptions, self.si, self.si_elig,
                         self.decision_s, self.decision_cpu_s, done, refused, len(self.recs) - done - refused, self.series,
                         dur, gpus, desk, self.lost, self.predictions)
