"""Why a decision or a state change happened, as a code plus human text (Kueue's reason map).

A decision, an audit event, a job record and a metric label all carry a `ReasonCode`; the prose
beside it (`reason`) names the numbers of that case ("desk fx holds 4/4 GPUs"). Code is never
recovered from prose: whoever decides picks the code. The codes are a bounded set, so they are
safe as metric tag values; add one here, with its text, rather than inventing a string.

Pure: imports nothing from rayfin, so the policy core, the controller and telemetry may all
use it.
"""
from __future__ import annotations

from enum import Enum


class ReasonCode(str, Enum):
    # -- the policy: admissions
    WITHIN_NOMINAL = "within_nominal"
    BORROWING = "borrowing"
    NO_QUOTAS = "no_quotas"
    # -- the policy: waits
    NO_FREE_GPUS = "no_free_gpus"
    CANNOT_BORROW = "cannot_borrow"
    OVER_CEILING = "over_ceiling"
    STATIC_PARTITION = "static_partition"
    AWAITING_PREEMPTION = "awaiting_preemption"
    RESERVATION = "reservation"
    # -- the policy: preemptions
    PRIORITY = "priority"
    RECLAIM = "reclaim"
    LEAST_ATTAINED = "least_attained"
    ELASTIC_GROW = "elastic_grow"
    ELASTIC_SHRINK = "elastic_shrink"
    # -- the policy and the controller's edge: refusals
    NEVER_FITS = "never_fits"
    POOL_TOO_SMALL = "pool_too_small"
    UNKNOWN_DESK = "unknown_desk"
    INVALID = "invalid"
    # -- the controller: a job's life
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    JOB_RAISED = "job_raised"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"
    NODE_LOST = "node_lost"
    RUNNER_LOST = "runner_lost"
    RUNNER_NOT_STARTED = "runner_not_started"
    RESERVE_FAILED = "reserve_failed"
    ADMIT_TIMEOUT = "admit_timeout"
    POLICING = "policing"
    IMPOSTOR = "impostor"
    # -- the controller: recovery after a restart
    READOPTED = "readopted"
    LOST_DURING_RESTART = "lost_during_restart"
    RECOVERED = "recovered"
    # -- serving reservations
    SERVING_RESERVED = "serving_reserved"
    SERVING_REPLACED = "serving_replaced"
    SERVING_RELEASED = "serving_released"
    # -- the market clock (rayfin.controller.market_clock)
    WINDOW_IN_FORCE = "window_in_force"
    WINDOW_RECLAIM_AHEAD = "window_reclaim_ahead"
    WINDOW_SWITCH = "window_switch"
    DECISIONS_RECORDED = "decisions_recorded"
    # -- deadlines (rayfin.controller.deadlines)
    DEADLINE_ADMITTED = "deadline_admitted"
    DEADLINE_AT_RISK = "deadline_at_risk"
    DEADLINE_ON_TRACK = "deadline_on_track"
    DEADLINE_ESCALATED = "deadline_escalated"
    DEADLINE_INFEASIBLE = "deadline_infeasible"
    # -- anything an operator records by hand
    OPERATOR = "operator"
    OTHER = "other"

    def __str__(self) -> str:   # a metric tag or a log line shows the code itself
        return self.value

    @property
    def text(self) -> str:
        return _TEXT[self]


_TEXT: dict[ReasonCode, str] = {
    ReasonCode.WITHIN_NOMINAL: "admitted within the desk's nominal quota",
    ReasonCode.BORROWING: "admitted on GPUs borrowed from other desks' unused nominal",
    ReasonCode.NO_QUOTAS: "admitted with quotas off",
    ReasonCode.NO_FREE_GPUS: "the desk may run it, but no placement has enough free GPUs now",
    ReasonCode.CANNOT_BORROW: "it needs GPUs above nominal and the other desks do not lend that many now",
    ReasonCode.OVER_CEILING: "it would take the desk above nominal plus its borrowing limit",
    ReasonCode.STATIC_PARTITION: "static partitioning: the desk is at its nominal share",
    ReasonCode.AWAITING_PREEMPTION: "entitled; waiting for preempted jobs to free their GPUs",
    ReasonCode.RESERVATION: ("the free GPUs it would use are reserved for a larger job that has waited long, "
                             "and it is not predicted to finish before that job can start"),
    ReasonCode.PRIORITY: "preempted for a higher-priority job of the same desk",
    ReasonCode.RECLAIM: "preempted: its desk was borrowing GPUs that their owner reclaimed",
    ReasonCode.LEAST_ATTAINED: ("preempted for a job of the same desk that has had less service (least attained "
                                "service inside the desk's share); it is requeued with the service it had"),
    ReasonCode.ELASTIC_GROW: "an elastic gang grew into idle GPUs (restarted from its checkpoint at the new size)",
    ReasonCode.ELASTIC_SHRINK: "an elastic gang gave its extra workers back because other work waits",
    ReasonCode.NEVER_FITS: "refused: more GPUs than the desk may ever hold",
    ReasonCode.POOL_TOO_SMALL: "refused: more GPUs than the desk's pools have",
    ReasonCode.UNKNOWN_DESK: "refused: the desk is not configured",
    ReasonCode.INVALID: "refused: the request is not valid",
    ReasonCode.QUEUED: "waiting in the desk's queue",
    ReasonCode.RUNNING: "running",
    ReasonCode.FINISHED: "finished",
    ReasonCode.JOB_RAISED: "the job's code raised or exited non-zero",
    ReasonCode.CANCELLED: "cancelled by its desk or the operator",
    ReasonCode.PREEMPTED: "preempted after its grace period",
    ReasonCode.NODE_LOST: "a node under it was lost",
    ReasonCode.RUNNER_LOST: "its runner was lost",
    ReasonCode.RUNNER_NOT_STARTED: "its runner could not be started",
    ReasonCode.RESERVE_FAILED: "its placement group could not be created",
    ReasonCode.ADMIT_TIMEOUT: "admitted, but it did not start in time",
    ReasonCode.POLICING: "stopped by policing: it used GPUs outside rayfin",
    ReasonCode.IMPOSTOR: "an actor held a job runner's name without the job's secret, and was killed",
    ReasonCode.READOPTED: "re-adopted by a restarted controller",
    ReasonCode.LOST_DURING_RESTART: "its group or runner went away while the controller was down",
    ReasonCode.RECOVERED: "the controller rebuilt its state from the ledger",
    ReasonCode.SERVING_RESERVED: "GPUs reserved for a serving deployment",
    ReasonCode.SERVING_REPLACED: "a serving deployment was replaced",
    ReasonCode.SERVING_RELEASED: "a serving deployment's GPUs were given back",
    ReasonCode.WINDOW_IN_FORCE: "the quota window in force when the controller started",
    ReasonCode.WINDOW_RECLAIM_AHEAD: "the next window's quotas apply one preemption grace before its switch",
    ReasonCode.WINDOW_SWITCH: "the quota window switched at a market boundary",
    ReasonCode.DECISIONS_RECORDED: "a cycle's decisions and the snapshot they were made on, kept for replay",
    ReasonCode.DEADLINE_ADMITTED: "its deadline was accepted: the ETA is before it",
    ReasonCode.DEADLINE_AT_RISK: "its ETA is after its deadline (or cannot be estimated)",
    ReasonCode.DEADLINE_ON_TRACK: "its ETA is back before its deadline",
    ReasonCode.DEADLINE_ESCALATED: "its slack ran out: it borrows and reclaims as critical work",
    ReasonCode.DEADLINE_INFEASIBLE: "refused: even started now it would end after its deadline",
    ReasonCode.OPERATOR: "recorded by an operator or rayfin's supervisor",
    ReasonCode.OTHER: "other",
}


def code_of(value: "ReasonCode | str | None") -> ReasonCode:
    """A stored code read back: the enum member, or OTHER for an empty or unknown value (an
    audit row written before codes existed)."""
    if isinstance(value, ReasonCode):
        return value
    try:
        return ReasonCode(value or "other")
    except ValueError:
        return ReasonCode.OTHER


__all__ = ["ReasonCode", "code_of"]
