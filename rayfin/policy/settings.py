"""Scheduler settings: strategies are enums, and the policies the benchmark compares are
presets of one `SchedulerConfig`, so the live controller and the simulator run one `schedule`.

    preset         quota      order       placement   reclaim prio  rank                 victims
    fifo           NONE       FIFO        FIRST_FIT   no      no    submission           -
    static         STATIC     FIFO        FIRST_FIT   no      yes   submission           -
    kueue          BORROWING  FIFO        FIRST_FIT   yes     yes   submission           newest
    kueue_tas_fs   BORROWING  FAIR_SHARE  BEST_FIT    yes     yes   submission           newest
    kueue_node     BORROWING  FAIR_SHARE  NODE_FIT    yes     yes   submission           newest
    tiresias       NONE       FIFO        BEST_FIT    -       -     attained service     LAS queue 1
    sjf_oracle     NONE       FIFO        BEST_FIT    no      no    true duration (hint) -
    rayfin         BORROWING  FAIR_SHARE  BEST_FIT    yes     yes   predicted remaining  least lost work
                                                                    (with aging)

`static_demand` is `static` with partitions sized to each desk's demand: a quota choice, made
by the caller (the benchmark), not a scheduler setting. `kueue_tas_fs` is Kueue with
Topology-Aware Scheduling (BestFit over island/node/rack domains), borrowing, reclaim and fair
sharing: the same policy as the rayfin preset of before the duration-aware order.

`las_within_desk` (rayfin only) adds Tiresias's least-attained-service preemption inside each
desk's share: a job that has run under `las_desk_threshold_gpu_s` GPU-seconds may preempt its
own desk's jobs that ran more (and at least `las_min_run_s` since their start), never another
desk's work within its nominal, never deadline work (rayfin.policy.scheduler: _las_swap).

`reservation` (any preset with hints; off in all of them) holds islands for one large job that
has waited long: other jobs may use them only if predicted to finish before it can start
(EASY backfill; rayfin.policy.reservation).

Every preset shares the queue mechanics: jobs are tried in order and a job that cannot start
does not block later ones (greedy backfill), and preemption grants the same grace period.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

from rayfin.policy.ordering import JobRank


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
    NODE_FIT = "node_fit"    # Kubernetes pods without TAS: never split below a node, first node that fits


class Policy(Enum):
    FIFO = "fifo"
    STATIC = "static"
    KUEUE = "kueue"
    KUEUE_TAS_FS = "kueue_tas_fs"
    KUEUE_NODE = "kueue_node"
    TIRESIAS = "tiresias"
    SJF_ORACLE = "sjf_oracle"
    RAYFIN = "rayfin"


@dataclass(frozen=True)
class SchedulerConfig:
    preemption_grace_s: float = 30.0
    quota: QuotaMode = QuotaMode.BORROWING
    order: QueueOrder = QueueOrder.FAIR_SHARE
    placement: PlacementStrategy = PlacementStrategy.BEST_FIT
    reclaim: bool = True               # a desk below nominal preempts borrowed work of other desks
    priority_preemption: bool = True   # within a desk's nominal, higher priority preempts lower
    rank: JobRank = JobRank.PREDICTED_REMAINING   # order of equal-priority pending jobs (policy.ordering)
    aging_s: float = 36000.0           # PREDICTED_REMAINING: wait that halves a job's key (0: no aging);
                                       # chosen on window 0 of the dev trace only (docs/scheduling.md)
    las_threshold_gpu_s: float = 3600.0   # ATTAINED_SERVICE: GPU-seconds after which a job drops to queue 1
    las_preemption: bool = False       # queue-0 jobs preempt queue-1 jobs (Tiresias; quota NONE only)
    # least attained service inside each desk's share (rayfin; docs/scheduling.md): a job under
    # `las_desk_threshold_gpu_s` of attained service may preempt its own desk's jobs above it, of
    # equal or lower priority, that ran `las_min_run_s` since their last start; never another
    # desk's work within its nominal. Threshold and minimum run chosen on window 0 of the dev trace.
    las_within_desk: bool = True
    las_desk_threshold_gpu_s: float = 36_000.0
    las_min_run_s: float = 3_600.0
    las_max_per_cycle: int = 1         # LAS swaps one cycle may start (the next cycle, 0.2 s on, takes the next): bounds its cost
    victims_by_lost_work: bool = True  # among equal-priority victims, least work since checkpoint first
    # head-of-line reservation (policy.reservation): off until measured (docs/scheduling.md)
    reservation: bool = False          # reserve islands for one long-waiting large job per cycle
    reserve_min_gpus: int = 9          # jobs of at least this many GPUs may hold a reservation
    reserve_wait_factor: float = 4.0   # ... once they waited more than this many times their predicted runtime
    reserve_after_s: float = 3600.0    # ... and more than this many seconds
    reserve_horizon: float = 0.0       # > 0: only if it can start within this many times its predicted runtime

    @classmethod
    def preset(cls, policy: "Policy | str", **changes: Any) -> "SchedulerConfig":
        policy = Policy(policy) if isinstance(policy, str) else policy
        base = {
            Policy.FIFO: cls(quota=QuotaMode.NONE, order=QueueOrder.FIFO, placement=PlacementStrategy.FIRST_FIT,
                             reclaim=False, priority_preemption=False, rank=JobRank.SUBMISSION,
                             victims_by_lost_work=False, las_within_desk=False),
            Policy.STATIC: cls(quota=QuotaMode.STATIC, order=QueueOrder.FIFO,
                               placement=PlacementStrategy.FIRST_FIT, reclaim=False, rank=JobRank.SUBMISSION,
                               victims_by_lost_work=False, las_within_desk=False),
            Policy.KUEUE: cls(quota=QuotaMode.BORROWING, order=QueueOrder.FIFO,
                              placement=PlacementStrategy.FIRST_FIT, rank=JobRank.SUBMISSION,
                              victims_by_lost_work=False, las_within_desk=False),
            Policy.KUEUE_TAS_FS: cls(rank=JobRank.SUBMISSION, victims_by_lost_work=False, las_within_desk=False),
            Policy.KUEUE_NODE: cls(placement=PlacementStrategy.NODE_FIT, rank=JobRank.SUBMISSION,
                                   victims_by_lost_work=False, las_within_desk=False),
            Policy.TIRESIAS: cls(quota=QuotaMode.NONE, order=QueueOrder.FIFO, reclaim=False,
                                 priority_preemption=False, rank=JobRank.ATTAINED_SERVICE, las_preemption=True,
                                 victims_by_lost_work=False, las_within_desk=False),
            Policy.SJF_ORACLE: cls(quota=QuotaMode.NONE, order=QueueOrder.FIFO, reclaim=False,
                                   priority_preemption=False, rank=JobRank.PREDICTED_REMAINING, aging_s=0.0,
                                   las_within_desk=False),
            Policy.RAYFIN: cls(),
        }[policy]
        return base.copy(**changes) if changes else base

    def copy(self, **changes: Any) -> "SchedulerConfig":
        return dataclasses.replace(self, **changes)
