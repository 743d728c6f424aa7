"""rayfin: GPU resource manager for a bank's trading desks, built on Ray.

Public SDK: `connect`, `Client`, `Job`, `JobStatus`, `JobState`, `job_context`, and the errors.
"""
from rayfin.errors import (ConfigError, ControllerUnavailable, InvalidRequest, JobFailed, JobNotFound, JobTimeout,
                           QuotaExceeded, RayfinError, Unauthorized, UnknownDesk)
from rayfin.policy.model import JobState, Priority
from rayfin.context import job_context
from rayfin.market.errors import DeadlineInfeasible
from rayfin.sdk import Client, DeadlineAnswer, Job, JobStatus, connect

__version__ = "0.1.0"
__all__ = ["connect", "Client", "Job", "JobStatus", "JobState", "Priority", "job_context", "RayfinError",
           "ConfigError", "InvalidRequest", "UnknownDesk", "Unauthorized", "QuotaExceeded", "JobNotFound",
           "JobFailed", "JobTimeout", "ControllerUnavailable", "DeadlineInfeasible", "DeadlineAnswer"]
