"""rayfin's policy core: pure decisions over a snapshot. Must never import Ray."""
from rayfin.policy.model import (ClusterSnapshot, CommProfile, CycleDecision, Decision, DeskQuota, JobState,
                                 PendingJob, Placement, Priority, RunningJob, Verdict)
from rayfin.policy.quota import check_quota, never_fits
from rayfin.policy.scheduler import schedule
from rayfin.policy.settings import PlacementStrategy, Policy, QueueOrder, QuotaMode, SchedulerConfig

__all__ = ["ClusterSnapshot", "CommProfile", "CycleDecision", "Decision", "DeskQuota", "JobState", "PendingJob",
           "Placement", "Priority", "RunningJob", "Verdict", "check_quota", "never_fits", "SchedulerConfig", "schedule",
           "PlacementStrategy", "Policy", "QueueOrder", "QuotaMode"]
