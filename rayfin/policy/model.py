"""Value types of the policy core: what the scheduler sees and what it decides.

Everything here is frozen and cheap to build; nothing imports Ray. The controller builds a
`ClusterSnapshot` each cycle, the scheduler returns a `CycleDecision`, and the controller acts on
it. Decisions carry human-readable reasons: for a bank they are the audit trail.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, Mapping

from placement.topology import Topology
from rayfin.policy.hints import JobHint  # noqa: F401 (used in annotations)
from rayfin.reasons import ReasonCode

Placement = tuple[tuple[str, float], ...]  # ((island_id, gpus), ...) sorted by island id


class Priority(IntEnum):
    BATCH = 0
    NORMAL = 1
    CRITICAL = 2

    @classmethod
    def parse(cls, value: "str | int | Priority") -> "Priority":
        if isinstance(value, Priority):
            return value
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        raise ValueError(f"priority must be one of {[p.name.lower() for p in cls]}; got {value!r}")

    @property
    def label(self) -> str:
        return self.name.lower()


class JobState(str, Enum):
    PENDING = "PENDING"
    ADMITTED = "ADMITTED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"

    def __str__(self) -> str:   # the stored and shown form: "RUNNING", wherever it is formatted
        return self.value

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.PREEMPTED)


class CommProfile(str, Enum):
    """How much a job's GPUs talk to each other; drives topology-aware placement."""

    NONE = "none"            # embarrassingly parallel (Monte Carlo paths, back-test sweeps)
    ALLREDUCE = "allreduce"  # data-parallel training: ring all-reduce every step


@dataclass(frozen=True)
class DeskQuota:
    name: str
    nominal: float
    borrowing_limit: float | None = None   # None: may borrow without limit
    lending_limit: float | None = None     # None: lends all unused nominal
    weight: float = 1.0
    pools: frozenset[str] = frozenset({"general"})
    # The most the desk may hold in any window of a market quota plan (rayfin.market.plan), so a
    # job over this window's ceiling but within a later one's waits instead of being refused.
    # None: no plan, the ceiling is this quota's own.
    plan_ceiling: float | None = None
    # Least attained service inside the desk (SchedulerConfig.las_within_desk): False, the desk's
    # jobs never take the place of its own longer-running jobs (nor are they taken for them).
    las: bool = True

    @property
    def max_gpus(self) -> float:
        return float("inf") if self.borrowing_limit is None else self.nominal + self.borrowing_limit

    @property
    def ever_gpus(self) -> float:
        """The most the desk may ever hold: its ceiling now, or in the plan's largest window."""
        return self.max_gpus if self.plan_ceiling is None else max(self.max_gpus, self.plan_ceiling)

    @classmethod
    def from_config(cls, desk: Any) -> "DeskQuota":
        """From a `rayfin.config.DeskConfig` (duck-typed: the policy core sits below the config)."""
        return cls(desk.name, float(desk.nominal_gpus), desk.borrowing_limit, desk.lending_limit,
                   float(desk.weight), frozenset(desk.pools), las=bool(getattr(desk, "least_attained_service", True)))


@dataclass(frozen=True)
class PendingJob:
    job_id: str
    desk: str
    gpus: int
    priority: Priority = Priority.NORMAL
    submitted_at: float = 0.0
    comm: CommProfile = CommProfile.NONE
    unit: int = 1        # GPUs per worker: each island of its placement must hold a multiple of it


@dataclass(frozen=True)
class RunningJob:
    job_id: str
    desk: str
    gpus: float
    placement: Placement
    priority: Priority = Priority.NORMAL
    started_at: float = 0.0
    preemptible: bool = True        # serving reservations and jobs in their grace period are not
    preempt_deadline: float | None = None  # set once a preemption was decided (grace running)
    preempted_for: str | None = None  # job id it is being reclaimed for (Decision.beneficiary), if known


@dataclass(frozen=True)
class ClusterSnapshot:
    """Everything one scheduling cycle may look at. `pending` is in submission order."""

    now: float
    topology: Topology
    desks: Mapping[str, DeskQuota]
    running: tuple[RunningJob, ...] = ()
    pending: tuple[PendingJob, ...] = ()
    unavailable: Mapping[str, float] = field(default_factory=dict)  # island -> GPUs lost/cordoned
    hints: Mapping[str, "JobHint"] = field(default_factory=dict)   # job id -> prediction, history (optional)

    def free(self) -> dict[str, float]:
        """Free GPUs per island: capacity minus running placements minus unavailable."""
        free = {i.id: float(i.gpus) - float(self.unavailable.get(i.id, 0.0)) for i in self.topology.islands}
        for job in self.running:
            for island, g in job.placement:
                if island in free:
                    free[island] -= g
        return free

    def usage(self) -> dict[str, float]:
        use = {d: 0.0 for d in self.desks}
        for job in self.running:
            use[job.desk] = use.get(job.desk, 0.0) + job.gpus
        return use


# ---- decisions -------------------------------------------------------------------------------

class Verdict(str, Enum):
    ADMIT = "admit"
    WAIT = "wait"
    PREEMPT = "preempt"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)   # slots: a cycle over a long queue makes thousands of these
class Decision:
    job_id: str
    desk: str
    verdict: Verdict
    reasons: tuple[str, ...]
    placement: Placement = ()
    borrowed: float = 0.0            # GPUs of this admission above the desk's nominal
    victims: tuple[str, ...] = ()    # for WAIT-on-preemption: jobs being reclaimed for it
    deadline: float | None = None    # for PREEMPT: when the grace period ends
    beneficiary: str | None = None   # for PREEMPT: the pending job the GPUs are reclaimed for
    code: ReasonCode = ReasonCode.OTHER  # why, as a code; `reasons` say it in words with the numbers
    # for ADMIT with borrowed > 0: who lent the borrowed GPUs, ((desk, GPUs), ...) by desk (quota.attribute_lenders)
    lenders: tuple[tuple[str, float], ...] = ()

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class CycleDecision:
    admits: tuple[Decision, ...] = ()
    preempts: tuple[Decision, ...] = ()
    waits: tuple[Decision, ...] = ()
    refusals: tuple[Decision, ...] = ()

    def all(self) -> tuple[Decision, ...]:
        return self.admits + self.preempts + self.waits + self.refusals
