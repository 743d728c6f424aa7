"""Errors of the market layer, inside rayfin's hierarchy (rayfin.errors):

    ConfigError
    └── CalendarError         (path, problems)  unknown exchange code, date outside the calendar
    RequestError
    └── DeadlineInfeasible    (job_id, deadline, earliest_finish, runtime_s)
"""
from __future__ import annotations

from datetime import datetime

from rayfin.errors import ConfigError, RequestError


class CalendarError(ConfigError):
    """The market calendar cannot be built or does not cover a date."""


class DeadlineInfeasible(RequestError):
    """A deadline that no schedule can meet: even started now on free GPUs, the job ends after it."""

    fields = ("job_id", "deadline", "earliest_finish", "runtime_s")

    def __init__(self, message: str | None = None, *, job_id: str | None, deadline: datetime,
                 earliest_finish: datetime, runtime_s: float):
        msg = message or (f"job {job_id or '(new)'} cannot meet its deadline {deadline.isoformat()}: "
                          f"its runtime of about {runtime_s:.0f} s ends at {earliest_finish.isoformat()} at the "
                          "earliest; to fix: move the deadline after that, ask for more GPUs, or give a "
                          "shorter expected_runtime_s if the estimate is wrong")
        super().__init__(msg, job_id=job_id, deadline=deadline.isoformat(),
                         earliest_finish=earliest_finish.isoformat(), runtime_s=runtime_s)
