"""What the scheduler may know about a job beyond its request: a prediction and its history.

Hints are optional: a snapshot without them schedules exactly as before (submission order,
victims by priority and start time). The controller and the simulator fill them from the same
sources: a `DurationPredictor` (rayfin.policy.duration) for `predicted_s`, the job's own record
for `attained_s`, and the last checkpoint the job reported for `checkpoint_age_s`. The controller
also passes a job's deadline (`deadline_s`): the order puts deadline jobs first, by deadline.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobHint:
    predicted_s: float | None = None        # predicted total runtime; None: no history to go on
    attained_s: float = 0.0                 # seconds the job has already run, all attempts together
    checkpoint_age_s: float | None = None   # running jobs: seconds of work since the last checkpoint
    deadline_s: float | None = None         # when the job must be done (snapshot clock); None: no deadline
    restartable: bool = True                # a preemption requeues it (False: no retries left, it would end)

    def remaining_s(self, floor_s: float = 1.0) -> float | None:
        """Predicted seconds still to run, or None without a prediction. A job that outlived its
        prediction is given as much again as it has run (the LAS view of a heavy tail)."""
        if self.predicted_s is None:
            return None
        left = self.predicted_s - self.attained_s
        return max(floor_s, left if left > 0 else self.attained_s)


NO_HINT = JobHint()
