"""Deadlines on the live controller (issue 18): a job admitted at risk whose slack has run out is
scheduled as critical and reclaims another desk's borrowed GPUs, finishing before its deadline.

The session cluster has no calendar, so the deadline is an absolute datetime; its slack
threshold is the default 3,600 s, so a deadline two minutes out escalates at the first cycle."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tests.support.cluster import wait_for
from tests.support.jobs import hold


def test_deadline_job_at_risk_reclaims_borrowed_gpus_and_finishes_on_time(connect_desk):
    eq, quant = connect_desk("equities"), connect_desk("quant")
    # equities holds its whole nominal (4) with its own normal-priority work for 300 s; quant
    # (nominal 0) borrows fx's unused 4 GPUs: best fit puts it on the fuller node, the general
    # pool's n0 (the risk pool's n1 is idle), so the general pool is full
    own = eq.submit(hold, 300, gpus=4, name="own", expected_runtime_s=300)
    borrowed = quant.submit(hold, 300, gpus=4, priority="batch", name="borrowed", retries=0)
    held = [own, borrowed]
    try:
        wait_for(lambda: all(j.status().state.value == "RUNNING" for j in held), 60, what="the cluster's work running")
        assert all(i.startswith("n0-") for i, _ in borrowed.status().placement)   # in the general pool
        # 2 GPUs more for equities, due in 2 min: at normal priority it would have to borrow, and
        # no placement has 2 free GPUs (borrowers never preempt); the queue ahead (4 x 300 GPU-s)
        # puts the ETA past the deadline
        deadline = datetime.now(timezone.utc) + timedelta(seconds=120)
        job = eq.submit(hold, 1, gpus=2, name="eod-var", deadline=deadline, expected_runtime_s=2)
        assert job.answer is not None and job.answer.verdict == "at_risk"
        assert job.answer.eta is not None and job.answer.eta > deadline
        st = wait_for(lambda: (s := job.status()).done and s, 60, what="deadline job done")
        assert st.state.value == "SUCCEEDED" and st.finished_at is not None
        assert st.finished_at <= deadline.timestamp() and st.escalated
        b = wait_for(lambda: (s := borrowed.status()).done and s, 30, what="borrowed work reclaimed")
        assert b.state.value == "PREEMPTED" and "reclaim" in b.reason
        assert own.status().state.value == "RUNNING"                 # its own work was not touched
        kinds = [e["kind"] for e in job.explain()["events"]]
        assert kinds.index("deadline_at_risk") < kinds.index("deadline_escalated") < kinds.index("admitted")
    finally:
        for j in held:
            j.cancel()
