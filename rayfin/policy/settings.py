"""Scheduler settings: strategies are enums, and the four policies the benchmark compares are
presets of one `SchedulerConfig`, so the live controller and the simulator run one `schedule`.

    preset   quota        order        placement   reclaim  priority preemption
    fifo     NONE         FIFO         FIRST_FIT   no       no      (a bare Ray cluster)
    static   STATIC       FIFO         FIRST_FIT   no       yes     (hard partitions at nominal)
    kueue    BORROWING    FIFO         FIRST_FIT   yes      yes     (Kueue-style cohort)
    rayfin   BORROWING    FAIR_SHARE   BEST_FIT    yes      yes     (the default)

Every preset shares the queue mechanics: jobs are tried in order and a job that cannot start
does not block later ones (greedy backfill), and preemption grants the same grace period.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum


class QuotaMode(Enum):
    NONE = "none"            # no quotas: any desk may take any free GPU
    STATIC = "static"        # hard partitions: a desk never holds more than its nominal GPUs
    BORROWING = "borrowing"  # nominal is guaranteed; unused nominal is lent and reclaimed on demand


class QueueOrder(Enum):
    FIFO = "fifo"                # priority, then submission time, across all desks
    FAIR_SHARE = "fair_share"    # borrowing goes to the desk with the lowest usage / weight first


class PlacementStrategy(Enum):
    FIRST_FIT = "first_fit"  # topology blind
    BEST_FIT = "best_fit"    # bandwidth aware: nearest link level, smallest free domain that fits


class Policy(Enum):
    FIFO = "fifo"
    STATIC = "static"
    KUEUE = "kueue"
    RAYFIN = "rayfin"


@dataclass(frozen=True)
class SchedulerConfig:
    preemption_grace_s: float = 30.0
    quota: QuotaMode = QuotaMode.BORROWING
    order: QueueOrder = QueueOrder.FAIR_SHARE
    placement: PlacementStrategy = PlacementStrategy.BEST_FIT
    reclaim: bool = True               # a desk below nominal preempts borrowed work of other desks
    priority_preemption: bool = True   # within a desk's nominal, higher priority preempts lower

    @classmethod
    def preset(cls, policy: "Policy | str", **changes) -> "SchedulerConfig":
        policy = Policy(policy) if isinstance(policy, str) else policy
        base = {
            Policy.FIFO: cls(quota=QuotaMode.NONE, order=QueueOrder.FIFO, placement=PlacementStrategy.FIRST_FIT,
                             reclaim=False, priority_preemption=False),
            Policy.STATIC: cls(quota=QuotaMode.STATIC, order=QueueOrder.FIFO,
                               placement=PlacementStrategy.FIRST_FIT, reclaim=False),
            Policy.KUEUE: cls(quota=QuotaMode.BORROWING, order=QueueOrder.FIFO,
                              placement=PlacementStrategy.FIRST_FIT),
            Policy.RAYFIN: cls(),
        }[policy]
        return base.copy(**changes) if changes else base

    def copy(self, **changes) -> "SchedulerConfig":
        return dataclasses.replace(self, **changes)
