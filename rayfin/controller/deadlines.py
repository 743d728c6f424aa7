"""Deadlines in the live controller (issue 18), over the pure core in rayfin.market.deadline.

    at_submit   the deadline resolved on the controller's clock (`s.clock()`, epoch seconds) and
                the config's calendar; the runtime from `expected_runtime_s` or the duration
                predictor; the answer ADMITTED / AT_RISK (with the ETA) / INFEASIBLE (raises
                `DeadlineInfeasible` with the earliest possible finish; nothing is queued)
    review      once per cycle, before the snapshot: each deadline job's slack (SlackPolicy; once
                run out the job is `escalated` and stays so: scheduled as critical, it may borrow
                and reclaim) and its ETA; a change of `deadline_risk` or a new escalation is an
                audit event with its ReasonCode and a metric, once per transition
    priority    what the snapshot gives the policy: CRITICAL for an escalated job

The ETA (rayfin.market.deadline.eta) drains the work ahead of the job in its desk at the desk's
guaranteed GPUs: `ahead_by_job` over `desk_work` (running jobs' remaining work, then the queue
in EDF order) and `capacity` (the base nominal, or the quota plan's nominal per window when the
config has `calendar:` and `quota_plan:`). EDF inside the desk is the policy's order
(rayfin.policy.ordering: deadline jobs first by deadline, within each priority), fed by the
snapshot's hints (`JobHint.deadline_s`).

Times are epoch seconds on the controller's clock; `EPOCH` turns them into datetimes.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from rayfin.controller.records import JobRecord
from rayfin.controller.state import ControllerState, duration_key
from rayfin.errors import InvalidRequest
from rayfin.jobspec import DEADLINE_FORMS, DEADLINE_HHMM_RE, DEADLINE_OFFSET_RE, JobSpec
from rayfin.market.calendar import MarketCalendar
from rayfin.market.deadline import (DeadlineJob, DeadlineVerdict, DeskWork, SlackPolicy,
                                    SubmitAnswer, Urgency, ahead_by_job, ahead_of, answer_submit, capacity_steps, eta,
                                    estimate_runtime, parse_deadline, require_feasible)
from rayfin.market.errors import CalendarError, DeadlineInfeasible
from rayfin.market.plan import quotas_in, timeline
from rayfin.policy import DeskQuota, JobState, Priority
from rayfin.policy.duration import JobKey
from rayfin.policy.hints import JobHint
from rayfin.reasons import ReasonCode

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NO_CALENDAR = ("an absolute datetime (ISO 8601 with a UTC offset, e.g. '2026-11-30T21:00:00+00:00'): this "
               "rayfin's config has no `calendar:`, so 'HH:MM' and 'open-30m' deadlines are not accepted (add "
               "`calendar: {exchange: XNYS}` to the config to use them)")


def iso(t: float) -> str:
    return (EPOCH + timedelta(seconds=t)).isoformat(timespec="seconds")


# ---------------------------------------------------------------- submit
def resolve(s: ControllerState, text: str, now: float) -> float:
    """The deadline (JobSpec's wire form) as epoch seconds; InvalidRequest naming `deadline`."""
    if DEADLINE_HHMM_RE.match(text) or DEADLINE_OFFSET_RE.match(text):
        market = s.config.market
        if market is None:
            raise InvalidRequest(field="deadline", value=text, allowed=NO_CALENDAR)
        try:
            t = parse_deadline(text, MarketCalendar.get(market.calendar.exchange), EPOCH + timedelta(seconds=now))
        except (ValueError, CalendarError) as exc:
            raise InvalidRequest(field="deadline", value=text, allowed=f"{DEADLINE_FORMS} ({exc})") from None
    else:
        t = datetime.fromisoformat(text)
    deadline = (t - EPOCH).total_seconds()
    if deadline <= now:
        raise InvalidRequest(field="deadline", value=text, allowed=f"a time after now ({iso(now)})")
    return deadline


@dataclass(frozen=True)
class Admission:
    """What `at_submit` decided: the job record's deadline fields and the answer."""

    deadline: float
    answer: SubmitAnswer

    def fields(self, expected_runtime_s: float | None) -> dict[str, Any]:
        return {"deadline": self.deadline, "eta": self.answer.eta_s, "expected_runtime_s": expected_runtime_s,
                "deadline_risk": self.answer.verdict is not DeadlineVerdict.ADMITTED}


def at_submit(s: ControllerState, desk: str, spec: JobSpec, priority: Priority, job_id: str) -> Admission | None:
    """The submit answer for a job with a deadline (None without one). Raises InvalidRequest for a
    deadline that cannot be read, DeadlineInfeasible (recorded as a refusal) for one no schedule
    meets. Call under the state's lock: the queue ahead is read."""
    if spec.deadline is None:
        return None
    now = s.clock()
    deadline = resolve(s, spec.deadline, now)
    runtime = estimate_runtime(spec.expected_runtime_s, s.durations, s.duration_state,
                               JobKey(desk, desk, spec.name, int(spec.gpus)))
    cfg = s.config.deadlines
    me = DeskWork(job_id, float(spec.gpus), runtime.seconds or cfg.default_runtime_s, False, int(priority), deadline,
                  now)
    ahead = ahead_of(me, desk_work(s, desk, now))
    answer = answer_submit(now, deadline, runtime, float(spec.gpus), ahead, capacity(s, desk, now), cfg.margin_s)
    try:
        require_feasible(answer, EPOCH, job_id)
    except DeadlineInfeasible as exc:
        s.recorder.refused(desk, ReasonCode.DEADLINE_INFEASIBLE.value)
        s.ledger.record(now, "", desk, "refused", "", exc.message,
                        {"gpus": spec.gpus, "deadline": deadline, "earliest_finish": answer.earliest_finish_s},
                        ReasonCode.DEADLINE_INFEASIBLE)
        raise
    return Admission(deadline, answer)


def submitted(s: ControllerState, job: JobRecord, adm: Admission) -> None:
    """The answer as the job's first deadline event (and the at-risk metric when it is at risk)."""
    code = ReasonCode.DEADLINE_AT_RISK if job.deadline_risk else ReasonCode.DEADLINE_ADMITTED
    s.ledger.put_job(job, (code.value, _answer_text(adm.answer), code), ts=s.clock())
    if job.deadline_risk:
        s.recorder.deadline_changed(job, code)


def answer_view(job: JobRecord, adm: Admission | None = None) -> dict[str, Any] | None:
    """The submit answer as the API returns it beside the job (`answer`)."""
    if job.deadline is None:
        return None
    verdict = DeadlineVerdict.AT_RISK if job.deadline_risk else DeadlineVerdict.ADMITTED
    out: dict[str, Any] = {"verdict": verdict.value, "deadline": job.deadline, "eta": job.eta,
                           "deadline_iso": iso(job.deadline), "eta_iso": None if job.eta is None else iso(job.eta)}
    if adm is not None:
        out.update(reason=adm.answer.text, runtime_s=adm.answer.runtime.seconds,
                   runtime_source=adm.answer.runtime.source.value)
    return out


def _answer_text(a: SubmitAnswer) -> str:
    eta_text = "no ETA" if a.eta_s is None else f"ETA {iso(a.eta_s)}"
    return f"{a.verdict.value}: deadline {iso(a.deadline_s)}, {eta_text}; {a.text}"


# ---------------------------------------------------------------- the queue ahead and capacity
def remaining_s(s: ControllerState, job: JobRecord, now: float,
                memo: dict[tuple[str, str, int], float | None] | None = None) -> float | None:
    """Seconds the job still needs: its expected runtime or the predictor's, less what it ran
    (JobHint.remaining_s: a job past its estimate is given as much again); None if unknown.
    `memo`: predictions by (desk, name, GPUs) within one review (a queue repeats them)."""
    total = job.expected_runtime_s
    if total is None:
        jk = duration_key(job)        # an elastic gang's: its declared size, whatever it runs at
        key = (job.desk, job.name, jk.gpus)
        if memo is not None and key in memo:
            total = memo[key]
        else:
            p = s.durations.predict(s.duration_state, jk)
            total = None if p is None else p.seconds
            if memo is not None:
                memo[key] = total
    ran = float(job.info.get("attained_s", 0.0))
    if job.state is JobState.RUNNING and job.started_at:
        ran += max(0.0, now - job.started_at)
    return JobHint(total, ran).remaining_s(1.0)


def desk_work(s: ControllerState, desk: str, now: float,
              memo: dict[tuple[str, str, int], float | None] | None = None) -> list[DeskWork]:
    """The desk's active jobs as the ETA sees them (unknown runtimes: `deadlines.default_runtime_s`)."""
    default = s.config.deadlines.default_runtime_s
    memo = {} if memo is None else memo
    out = []
    for job in s.active.values():
        if job.desk != desk:
            continue
        left = remaining_s(s, job, now, memo)
        if job.preempt_deadline is not None:   # being preempted: its GPUs come free at the deadline
            left = max(0.0, job.preempt_deadline - now)
        left = default if left is None else left
        running, prio = job.state is not JobState.PENDING, int(priority_of(job))
        gpus = job.gpus
        extra = sum(g for _, g in job.extra) if job.elastic and running else 0.0
        if extra > 0:
            # An elastic gang's workers above its base leave within a grace once any work of its
            # desk waits (rayfin.policy.elastic.shrinks): only its base holds GPUs to its end.
            gpus -= extra
            out.append(DeskWork(job.job_id + "+x", extra, min(left, s.policy.preemption_grace_s), running, prio,
                                None, job.submitted_at))
        out.append(DeskWork(job.job_id, gpus, left, running, prio, job.deadline, job.submitted_at))
    return out


def capacity(s: ControllerState, desk: str, now: float) -> tuple[Any, ...]:
    """The desk's guaranteed GPUs from now on: its nominal, per window of the quota plan if one
    is configured for it (cached per state for a minute: reading the calendar is slow)."""
    base = {d.name: DeskQuota.from_config(d) for d in s.config.desks}
    nominal = base[desk].nominal if desk in base else 0.0
    market = s.config.market
    if market is None or desk not in market.quota_plan.desks:
        return capacity_steps(now, nominal)
    key = (desk, int(now // 60))
    cache = s.deadline_cache
    if key not in cache:
        start = EPOCH + timedelta(seconds=now)
        horizon = timedelta(days=s.config.deadlines.horizon_days)
        try:
            ws = timeline(MarketCalendar.get(market.calendar.exchange), market.quota_plan.bounds, start,
                          start + horizon)
        except CalendarError:
            ws = ()
        steps = [((w.start - EPOCH).total_seconds(), (w.end - EPOCH).total_seconds(),
                  quotas_in(market.quota_plan, base, w.name)[desk].nominal) for w in ws]
        if len(cache) > 64:
            cache.clear()
        cache[key] = steps
    return capacity_steps(now, nominal, cache[key])


# ---------------------------------------------------------------- every cycle
def priority_of(job: JobRecord) -> Priority:
    """The priority the policy sees: critical once the job's slack ran out."""
    return Priority.CRITICAL if job.escalated else Priority(job.priority)


def review(s: ControllerState) -> None:
    """Slack, escalation and ETA of every active deadline job; transitions are events. Under the
    state's lock, before the cycle's snapshot."""
    jobs = [j for j in s.active.values() if j.deadline is not None]
    if not jobs:
        return
    now = s.clock()
    cfg = s.config.deadlines
    policy = SlackPolicy(cfg.slack_threshold_s, cfg.safety)
    ahead: dict[str, dict[str, float]] = {}
    caps: dict[str, tuple[Any, ...]] = {}
    memo: dict[tuple[str, str, int], float | None] = {}
    for job in jobs:
        assert job.deadline is not None
        left = remaining_s(s, job, now, memo)
        esc = policy.escalation(DeadlineJob(job.job_id, job.deadline, left), now, Priority(job.priority))
        escalated = job.escalated or esc.urgency is Urgency.SLACK_EXHAUSTED
        if left is None:
            finish = None
        elif job.state is JobState.PENDING:
            if job.desk not in ahead:
                ahead[job.desk] = _ahead(s, job.desk, now, memo, job.job_id)
                caps[job.desk] = capacity(s, job.desk, now)
            elif job.job_id not in ahead[job.desk]:      # came in since the cached view: read afresh
                ahead[job.desk] = _ahead(s, job.desk, now, memo, job.job_id, fresh=True)
            finish = eta(now, left, job.gpus, ahead[job.desk].get(job.job_id, 0.0), caps[job.desk])
        else:
            finish = now + left
        risk = finish is None or finish > job.deadline - cfg.margin_s
        if risk == job.deadline_risk and escalated == job.escalated and _same(finish, job.eta):
            continue                    # nothing new: keep the record (a copy per job per cycle costs)
        new = job.copy(eta=finish, deadline_risk=risk, escalated=escalated)
        if escalated and not job.escalated:
            new = s.save(new, "deadline_escalated", esc.text, ReasonCode.DEADLINE_ESCALATED)
            s.recorder.deadline_changed(new, ReasonCode.DEADLINE_ESCALATED)
        if risk != job.deadline_risk:
            code = ReasonCode.DEADLINE_AT_RISK if risk else ReasonCode.DEADLINE_ON_TRACK
            eta_text = "no ETA" if finish is None else f"ETA {iso(finish)} ({finish - job.deadline:+.0f} s)"
            new = s.save(new, code.value, f"{eta_text}, deadline {iso(job.deadline)}", code)
            s.recorder.deadline_changed(new, code)
        s.active[job.job_id] = new


AHEAD_EVERY_S = 1.0


def _ahead(s: ControllerState, desk: str, now: float, memo: dict[tuple[str, str, int], float | None],
           job_id: str, fresh: bool = False) -> dict[str, float]:
    """`ahead_by_job` of the desk, recomputed at most once a second (the queue walk is the costly
    part of a review) unless `job_id` is missing from the last one: an ETA up to a second old."""
    key = ("ahead", desk)
    hit = s.deadline_cache.get(key)
    if not fresh and hit is not None and now - hit[0] < AHEAD_EVERY_S and job_id in hit[1]:
        cached: dict[str, float] = hit[1]
        return cached
    view = ahead_by_job(desk_work(s, desk, now, memo))
    s.deadline_cache[key] = (now, view)
    return view


def _same(a: float | None, b: float | None) -> bool:
    """ETAs within a second of each other (the view shows seconds)."""
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1.0)


__all__ = ["Admission", "EPOCH", "NO_CALENDAR", "answer_view", "at_submit", "capacity", "desk_work", "iso",
           "priority_of", "remaining_s", "resolve", "review", "submitted"]
