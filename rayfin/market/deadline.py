"""Deadlines: parse them, estimate runtimes, compute an ETA, answer a submit, order by EDF.

Parsing (`parse_deadline`): an aware `datetime`; "HH:MM" in the calendar's zone (the next such
time after now); or an offset from the next session's open or close ("open-30m", "close+2h").

Runtime (`estimate_runtime`): the caller's `expected_runtime_s` if given, else the duration
predictor of the scheduler (rayfin.policy.duration, the 0.8 quantile of the job's history, most
specific key first), else unknown.

ETA (`eta`), a fluid model over the desk's *guaranteed* GPUs from the quota plan (borrowing can
only make it earlier, so the ETA is conservative): the work queued ahead of the job, `ahead`
GPU-seconds, drains at the desk's nominal c(t); the job starts at the first s with

    integral_now^s c(t) dt >= ahead   and   c(s) >= gpus

and then needs `runtime` seconds of time in which c(t) >= gpus (a window that shrinks the desk
below the job's size pauses it: in the live system it would be reclaimed). Example: ahead 7,200
GPU-s, c = 4 GPUs, a 2-GPU job of 1,800 s: start = now + 7,200 / 4 = now + 1,800 s, finish =
now + 3,600 s.

Submit answer (`answer_submit`): INFEASIBLE when even alone, started now, it ends after the
deadline (earliest finish = now + runtime; raise `DeadlineInfeasible` with `require_feasible`);
AT_RISK when the ETA is after deadline - margin; ADMITTED otherwise.

Order (`market_order`): inside each desk, deadline jobs earliest-deadline-first ahead of the
desk's other work, which keeps the order it was given. A deadline job whose slack

    slack = deadline - now - safety x remaining

has fallen to `threshold_s` or below is treated like `critical` work (it may borrow and reclaim
as critical does): the order returns that as an `Escalation` value with its reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from enum import Enum
from typing import Mapping, Sequence

from rayfin.market.calendar import MarketCalendar, MarketOffset, _aware
from rayfin.market.errors import DeadlineInfeasible
from rayfin.policy.duration import DurationPredictor, DurationState, JobKey
from rayfin.policy.model import PendingJob, Priority, RunningJob

_HHMM = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")


def parse_deadline(value: "datetime | str", cal: MarketCalendar, now: datetime) -> datetime:
    """A deadline as an aware UTC datetime; see the module docstring for the accepted forms."""
    _aware(now)
    if isinstance(value, datetime):
        return _aware(value)
    if not isinstance(value, str):
        raise ValueError(f"deadline must be a datetime or a string ('HH:MM', 'open-30m', 'close+2h'); got {value!r}")
    m = _HHMM.match(value)
    if m:
        d: date = cal.local_date(now)
        for k in range(2):
            t = datetime.combine(d + timedelta(days=k), time(int(m.group(1)), int(m.group(2))), tzinfo=cal.tz)
            if t > now:
                return t.astimezone(now.tzinfo)
    off = MarketOffset.parse(value)   # ValueError with the accepted forms
    # the first session whose anchor + offset lies after now
    probe = now - timedelta(seconds=max(0.0, off.offset_s))
    for _ in range(10):
        s = cal.next_session(probe, off.anchor)
        t = off.at(s)
        if t > now:
            return t
        probe = (s.open if off.anchor.value == "open" else s.close) + timedelta(seconds=1)
    raise ValueError(f"no session makes {value!r} a time after {now.isoformat()}")


class RuntimeSource(str, Enum):
    GIVEN = "given"         # expected_runtime_s from the submitter
    HISTORY = "history"     # the duration predictor
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RuntimeEstimate:
    seconds: float | None
    source: RuntimeSource
    samples: int = 0


def estimate_runtime(expected_runtime_s: float | None, predictor: DurationPredictor | None,
                     state: DurationState | None, key: JobKey) -> RuntimeEstimate:
    if expected_runtime_s is not None:
        if not expected_runtime_s > 0:
            raise ValueError(f"expected_runtime_s must be > 0; got {expected_runtime_s!r}")
        return RuntimeEstimate(float(expected_runtime_s), RuntimeSource.GIVEN)
    if predictor is not None and state is not None:
        p = predictor.predict(state, key)
        if p is not None:
            return RuntimeEstimate(p.seconds, RuntimeSource.HISTORY, p.samples)
    return RuntimeEstimate(None, RuntimeSource.UNKNOWN)


@dataclass(frozen=True)
class CapacityStep:
    start_s: float      # seconds on the caller's clock
    gpus: float         # the desk's guaranteed GPUs from start_s until the next step


def eta(now_s: float, runtime_s: float, gpus: float, ahead_gpu_s: float,
        capacity: Sequence[CapacityStep]) -> float | None:
    """Finish time of the job in the fluid model above, or None if the steps given end first.
    `capacity` is sorted by start; the last step lasts for ever."""
    steps = [s for s in capacity]
    if not steps:
        return None
    # the step in force at now, then every later one
    cur = max((k for k, s in enumerate(steps) if s.start_s <= now_s), default=0)
    t, left_ahead, left_run = now_s, max(0.0, ahead_gpu_s), max(0.0, runtime_s)
    for k in range(cur, len(steps)):
        end = steps[k + 1].start_s if k + 1 < len(steps) else float("inf")
        c = steps[k].gpus
        if t >= end:
            continue
        if left_ahead > 0:
            if c <= 0:
                t = end
                continue
            need = left_ahead / c
            if t + need >= end:
                left_ahead -= (end - t) * c
                t = end
                continue
            t += need
            left_ahead = 0.0
        if c + 1e-9 < gpus:
            t = end
            continue
        if t + left_run <= end:
            return t + left_run
        left_run -= end - t
        t = end
    return None


class DeadlineVerdict(str, Enum):
    ADMITTED = "admitted"
    AT_RISK = "at_risk"
    INFEASIBLE = "infeasible"


@dataclass(frozen=True)
class SubmitAnswer:
    verdict: DeadlineVerdict
    deadline_s: float
    eta_s: float | None
    earliest_finish_s: float
    runtime: RuntimeEstimate
    text: str

    @property
    def slack_s(self) -> float | None:
        return None if self.eta_s is None else self.deadline_s - self.eta_s


def answer_submit(now_s: float, deadline_s: float, runtime: RuntimeEstimate, gpus: float, ahead_gpu_s: float,
                  capacity: Sequence[CapacityStep], margin_s: float = 0.0) -> SubmitAnswer:
    """The answer at submit (module docstring). Without a runtime estimate the job is AT_RISK:
    rayfin cannot promise what it cannot estimate."""
    if runtime.seconds is None:
        return SubmitAnswer(DeadlineVerdict.AT_RISK, deadline_s, None, now_s, runtime,
                            "no runtime estimate (no history and no expected_runtime_s): cannot promise the deadline")
    earliest = now_s + runtime.seconds
    if earliest > deadline_s:
        return SubmitAnswer(DeadlineVerdict.INFEASIBLE, deadline_s, None, earliest, runtime,
                            f"even started now it ends {earliest - deadline_s:.0f} s after the deadline")
    e = eta(now_s, runtime.seconds, gpus, ahead_gpu_s, capacity)
    if e is None or e > deadline_s - margin_s:
        why = ("the quota plan gives the desk too few GPUs before the deadline" if e is None
               else f"ETA {e - deadline_s:+.0f} s from the deadline (margin {margin_s:.0f} s)")
        return SubmitAnswer(DeadlineVerdict.AT_RISK, deadline_s, e, earliest, runtime, why)
    return SubmitAnswer(DeadlineVerdict.ADMITTED, deadline_s, e, earliest, runtime,
                        f"ETA {deadline_s - e:.0f} s before the deadline")


def require_feasible(answer: SubmitAnswer, epoch: datetime, job_id: str | None = None) -> SubmitAnswer:
    """Raise DeadlineInfeasible for an INFEASIBLE answer (`epoch`: the datetime of clock 0)."""
    if answer.verdict is DeadlineVerdict.INFEASIBLE:
        raise DeadlineInfeasible(job_id=job_id, deadline=epoch + timedelta(seconds=answer.deadline_s),
                                 earliest_finish=epoch + timedelta(seconds=answer.earliest_finish_s),
                                 runtime_s=float(answer.runtime.seconds or 0.0))
    return answer


# ---- EDF with slack ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DeadlineJob:
    job_id: str
    deadline_s: float
    remaining_s: float | None    # estimated seconds still to run (None: unknown)


class Urgency(str, Enum):
    ON_TRACK = "on_track"
    SLACK_EXHAUSTED = "slack_exhausted"   # slack <= threshold: treated like critical
    UNKNOWN_RUNTIME = "unknown_runtime"


@dataclass(frozen=True)
class Escalation:
    job_id: str
    urgency: Urgency
    slack_s: float | None
    priority: Priority       # the priority the cycle should treat the job with
    text: str


@dataclass(frozen=True)
class SlackPolicy:
    threshold_s: float = 3600.0   # escalate when slack falls to this
    safety: float = 1.2           # remaining x safety: estimates are quantiles, not bounds

    def priority(self, job: DeadlineJob, now_s: float, asked: Priority) -> Priority:
        """`escalation(...).priority` alone (no text, no record): what a cycle's order needs."""
        if job.remaining_s is None:
            return asked
        if job.deadline_s - now_s - self.safety * job.remaining_s <= self.threshold_s:
            return max(asked, Priority.CRITICAL)
        return asked

    def escalation(self, job: DeadlineJob, now_s: float, asked: Priority) -> Escalation:
        if job.remaining_s is None:
            return Escalation(job.job_id, Urgency.UNKNOWN_RUNTIME, None, asked, "no runtime estimate: EDF order only")
        slack = job.deadline_s - now_s - self.safety * job.remaining_s
        if slack <= self.threshold_s:
            # e.g. deadline in 2 h, 1.5 h left: 7,200 - 1.2 x 5,400 = 720 s <= 3,600 -> critical
            return Escalation(job.job_id, Urgency.SLACK_EXHAUSTED, slack, max(asked, Priority.CRITICAL),
                              f"slack {slack:.0f} s <= {self.threshold_s:.0f} s: borrows and reclaims as critical")
        return Escalation(job.job_id, Urgency.ON_TRACK, slack, asked, f"slack {slack:.0f} s")


def market_order(pending: Sequence[PendingJob], deadlines: Mapping[str, DeadlineJob], now_s: float,
                 policy: SlackPolicy = SlackPolicy(), *,
                 escalations: bool = True) -> tuple[tuple[PendingJob, ...], tuple[Escalation, ...]]:
    """Pending jobs in market order (deadline jobs EDF first inside each desk, the rest in the
    order given) with escalated priorities applied, and every deadline job's Escalation
    (`escalations=False`: the same order, no Escalation records, `()`; for a caller that only
    schedules, e.g. the simulator, where formatting each record's text was a tenth of a run)."""
    esc: list[Escalation] = []
    dl_jobs = []
    others = [job for job in pending if job.job_id not in deadlines]
    for pos, job in enumerate(pending) if len(others) < len(pending) else ():
        d = deadlines.get(job.job_id)
        if d is None:
            continue
        if escalations:
            e = policy.escalation(d, now_s, job.priority)
            esc.append(e)
            prio = e.priority
        else:
            prio = policy.priority(d, now_s, job.priority)
        dl_jobs.append((d.deadline_s, job.submitted_at, pos, replace(job, priority=prio)
                        if prio != job.priority else job))
    dl_jobs.sort(key=lambda x: (x[0], x[1], x[2]))
    # deadline jobs of a desk go ahead of its other work; across desks the quota decides
    out = tuple(x[3] for x in dl_jobs) + tuple(others)
    return out, tuple(esc)


# ---- the queue ahead and the desk's capacity (what the controller feeds `eta`) ------------------

@dataclass(frozen=True)
class DeskWork:
    """One job of a desk as the ETA sees it: `remaining_s` of `gpus`; running, or queued with its
    priority and deadline (None: no deadline)."""

    job_id: str
    gpus: float
    remaining_s: float
    running: bool = False
    priority: int = int(Priority.NORMAL)
    deadline_s: float | None = None
    submitted_at: float = 0.0


def queue_key(w: DeskWork) -> tuple[float, int, float, float, str]:
    """The order a desk's queue drains in: priority (highest first), deadline jobs EDF ahead of
    the rest (market_order), then submission order."""
    if w.deadline_s is None:
        return (-float(w.priority), 1, 0.0, w.submitted_at, w.job_id)
    return (-float(w.priority), 0, w.deadline_s, w.submitted_at, w.job_id)


def ahead_by_job(work: Sequence[DeskWork]) -> dict[str, float]:
    """For each queued job of one desk, the GPU-seconds ahead of it: every running job's remaining
    work (it holds the desk's GPUs now) plus the queued jobs that `queue_key` puts first. One
    sort and a running sum, so a cycle over a long queue stays linear after the sort.

    Example: running 4 GPUs x 300 s left; queued A (deadline 10:00, 2 GPUs x 600 s) and B (no
    deadline): ahead of A 1,200 GPU-s, ahead of B 1,200 + 1,200 = 2,400 GPU-s."""
    base = sum(w.gpus * max(0.0, w.remaining_s) for w in work if w.running)
    out: dict[str, float] = {}
    acc = base
    for w in sorted((w for w in work if not w.running), key=queue_key):
        out[w.job_id] = acc
        acc += w.gpus * max(0.0, w.remaining_s)
    return out


def ahead_of(job: DeskWork, work: Sequence[DeskWork]) -> float:
    """GPU-seconds ahead of a job about to join the desk's queue (`work`: the desk's jobs now)."""
    return ahead_by_job([w for w in work if w.job_id != job.job_id] + [job])[job.job_id]


def capacity_steps(now_s: float, base_gpus: float,
                   windows: Sequence[tuple[float, float, float]] = ()) -> tuple[CapacityStep, ...]:
    """The desk's guaranteed GPUs from `now_s` on: `windows` (start_s, end_s, nominal GPUs) of the
    quota plan, in order, where given; the base nominal before, between and after them."""
    steps: list[CapacityStep] = []
    t = now_s
    for start, end, gpus in sorted(windows):
        if end <= t:
            continue
        if start > t:
            steps.append(CapacityStep(t, base_gpus))
            t = start
        steps.append(CapacityStep(t, gpus))
        t = end
    steps.append(CapacityStep(t, base_gpus))
    # neighbours with the same GPUs are one step
    merged = [steps[0]]
    for s in steps[1:]:
        if s.gpus != merged[-1].gpus:
            merged.append(s)
    return tuple(merged)


def guard_deadline_class(running: Sequence[RunningJob], escalated: Sequence[tuple[str, float, Priority]],
                         deadlines: Mapping[str, float]) -> tuple[RunningJob, ...]:
    """EDF inside a desk is not undone by preemption: a running deadline job due no later than
    an escalated pending job of its desk is shown at that job's priority, so the escalation may
    still borrow and reclaim from other desks but never priority-preempts its own desk's work
    that is as urgent. Without it a night's batch, all due at once, thrashes as its jobs escalate
    one after another and preempt each other (docs/market.md, heavy point).

    `escalated`: (desk, deadline_s, priority) of each escalated pending job; `deadlines`: job id
    -> deadline_s of the running jobs that have one."""
    top: dict[str, tuple[float, Priority]] = {}    # desk -> latest deadline among escalated, top priority
    for desk, due, prio in escalated:
        cur = top.get(desk)
        top[desk] = (due, prio) if cur is None else (max(due, cur[0]), max(prio, cur[1]))
    if not top:
        return tuple(running)
    out = []
    for r in running:
        g = top.get(r.desk)
        d = deadlines.get(r.job_id)
        if g is not None and d is not None and d <= g[0] and r.priority < g[1]:
            r = replace(r, priority=g[1])
        out.append(r)
    return tuple(out)
