"""The live controller runs the same policy as the simulator: reclaim and island-aware gangs."""
from __future__ import annotations

from tests.support.cluster import wait_for
from tests.support.jobs import hold


def test_borrowed_job_is_reclaimed_when_lender_needs_its_nominal(connect_desk):
    eq, fx = connect_desk("equities"), connect_desk("fx")
    # equities (nominal 4, may borrow 4) takes all 8 GPUs of the general pool: 4 are fx's nominal.
    borrower = eq.submit(hold, 300, gpus=8, workers=2, dist_backend=None, priority="batch", name="borrower")
    wait_for(lambda: borrower.status().state.value == "RUNNING", 90, what="borrower running")
    assert eq.usage()["borrowed"] == 4
    # fx asks for its own nominal share back.
    lender = fx.submit(hold, 0.5, gpus=4, name="lender")
    st = wait_for(lambda: (s := borrower.status()).done and s, 90, what="borrower reclaimed")
    assert st.state.value == "PREEMPTED"
    assert "fx" in st.reason and ("reclaim" in st.reason or "nominal" in st.reason)
    assert lender.result(timeout=120) == "done"
    explain = eq.explain(borrower.job_id)
    assert any(e["kind"] == "preemption_planned" for e in explain["events"])


def test_four_gpu_allreduce_job_lands_in_one_island(connect_desk):
    fx, eq = connect_desk("fx"), connect_desk("equities")
    # Fragment the general pool: 2 GPUs busy on one island.
    small = fx.submit(hold, 60, gpus=2, name="fragment")
    wait_for(lambda: small.status().state.value == "RUNNING", 90, what="fragmenting job running")
    busy_island = small.status().placement[0][0]
    gang = eq.submit(hold, 0.5, gpus=4, comm="allreduce", name="gang")
    assert gang.result(timeout=120) == "done"
    placement = gang.status().placement
    assert len(placement) == 1 and placement[0][1] == 4       # one island, all 4 GPUs
    assert placement[0][0] != busy_island
    small.cancel()
