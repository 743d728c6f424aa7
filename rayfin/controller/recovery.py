"""A restarted controller: rebuild state from the ledger, re-adopt by name what the backend
still has, requeue what it lost, release what nobody owns any more."""
from __future__ import annotations

import logging
from typing import Any

from rayfin.controller.records import JobKind
from rayfin.controller.state import ACTIVE, ControllerState, at_base, started_info, unpreempted
from rayfin.policy import JobState
from rayfin.reasons import ReasonCode

log = logging.getLogger("rayfin.controller")


def recover(s: ControllerState) -> dict[str, Any]:
    with s.lock:
        owned = s.backend.owned(list(s.desks))
        adopted: list[str] = []
        requeued: list[str] = []
        released: list[str] = []
        s.serving = {r.model: r for r in s.ledger.serving()}
        for job in s.ledger.jobs(states=[st.value for st in ACTIVE]):
            if job.kind is JobKind.SERVING:   # only a hand-edited ledger has these after migration 0003
                log.warning("ignoring serving job row %s: reservations live in the serving table", job.job_id)
                continue
            s.active[job.job_id] = job
            if job.state is JobState.PENDING:
                continue
            key = job.key
            has_group, has_runner = key in owned.groups, key in owned.runners
            if job.state is JobState.RUNNING or has_runner:
                if has_group or has_runner:
                    s.backend.adopt(key, job.desk, job.placement, running=True)
                    if job.state is not JobState.RUNNING:
                        # It started while no controller watched: its runner's start is unknown
                        # here, but not before its admission (bounded by the admit timeout);
                        # the restart's time would hide the service it had from LAS and the
                        # duration history, and its work at stake from victim choice.
                        job = s.save(job.copy(state=JobState.RUNNING, started_at=job.admitted_at or s.clock(),
                                              reason_code=ReasonCode.READOPTED,
                                              info=started_info(job)),
                                     "started", "re-adopted after controller restart")
                        s.recorder.state_changed(job, JobState.ADMITTED.value)
                    adopted.append(job.job_id)
                else:
                    s.lost(job, "runner gone while the controller was down", ReasonCode.LOST_DURING_RESTART)
                    requeued.append(job.job_id)
            elif has_group:  # ADMITTED, group reserved, runner not yet started
                s.backend.adopt(key, job.desk, job.placement, running=False)
                # its admit timeout counts from now: the time the controller was down is not the
                # group's (else the first cycle starts its runner, then times it out at once)
                job = job.copy(admitted_at=s.clock())
                s.active[job.job_id] = job
                adopted.append(job.job_id)
            else:
                s.save(job.copy(state=JobState.PENDING, placement=(), reason_code=ReasonCode.LOST_DURING_RESTART,
                                reason="requeued: group lost while controller was down", **unpreempted(),
                                **at_base(job)),
                       "requeued", "group lost during restart")
                requeued.append(job.job_id)
        expected = {j.key for j in s.active.values() if j.state is not JobState.PENDING}
        for key in (owned.groups | owned.runners) - expected:
            owner = s.ledger.get_job(key.split("~")[0])
            s.backend.release(key, owner.desk if owner else "")
            released.append(key)
        s.audit_impostors()
        summary = {"adopted": adopted, "requeued": requeued, "released": released, "active": len(s.active)}
        s.ledger.record(s.clock(), "", "", "controller_recovered", "", str(summary), summary, ReasonCode.RECOVERED)
        return summary


__all__ = ["recover"]
