"""Least attained service inside a desk, in the live controller (ControllerCore on the FakeBackend
with an injected clock): the same `schedule` as the simulator, so a desk's new job preempts the
desk's own job that has run for hours, if a preemption requeues that job (it has retries left),
and the requeued job keeps its attained service. Cluster: configs/test.yaml (risk owns pool n1,
8 GPUs)."""
from __future__ import annotations

from rayfin.policy import JobState
from tests.unit.test_deadlines_controller import TOK, make, run, spec


def test_a_new_job_preempts_its_desks_job_that_ran_for_hours_and_it_is_requeued(tmp_path):
    core, backend, clock, _, ledger = make(tmp_path)
    long = core.submit(TOK["risk"], "risk", spec(8, workers="per_gpu", retries=2))["job_id"]
    run(core, 3)
    assert core.status(TOK["risk"], long)["state"] == "RUNNING"
    clock.advance(4_600)          # 8 GPUs x 4,600 s = 36,800 GPU-s: past the 36,000 threshold, and > 1 h
    short = core.submit(TOK["risk"], "risk", spec(8, workers="per_gpu"))["job_id"]
    run(core, 2)
    st = core.status(TOK["risk"], long)
    assert st["preempt_deadline"] is not None and st["reason_code"] == "least_attained"
    assert f"preempted for job {short} of the same desk risk" in st["reason"]
    clock.advance(60)             # past the grace period
    run(core, 4)
    st = core.status(TOK["risk"], long)
    assert st["state"] == JobState.PENDING.value and st["attempts"] == 1
    assert st["info"]["attained_s"] == 4_660.0            # kept (4,600 s + the 60 s to the stop), counted once
    # it is queue 1 now, so the short job it was preempted for gets the GPUs
    assert core.status(TOK["risk"], short)["state"] == "RUNNING"
    assert [e.kind for e in ledger.events(job_id=long, limit=100)][3:5] == ["preemption_planned", "requeued"]


def test_no_preemption_within_the_first_hour_under_the_threshold_or_without_retries(tmp_path):
    core, backend, clock, _, ledger = make(tmp_path)
    young = core.submit(TOK["risk"], "risk", spec(8, workers="per_gpu", retries=2))["job_id"]
    run(core, 3)
    clock.advance(3_000)          # 24,000 GPU-s, 50 minutes: neither
    core.submit(TOK["risk"], "risk", spec(8, workers="per_gpu"))
    run(core, 2)
    assert core.status(TOK["risk"], young)["preempt_deadline"] is None

    core, backend, clock, _, ledger = make(tmp_path / "b")
    last = core.submit(TOK["risk"], "risk", spec(8, workers="per_gpu"))["job_id"]     # retries 0
    run(core, 3)
    clock.advance(4_600)          # past both, but a preemption would end it: not a victim
    core.submit(TOK["risk"], "risk", spec(8, workers="per_gpu"))
    run(core, 2)
    assert core.status(TOK["risk"], last)["preempt_deadline"] is None


def test_the_config_switches_it_off_and_validates_its_fields(tmp_path):
    import pytest

    from rayfin.errors import ConfigError
    core, backend, clock, _, ledger = make(tmp_path, scheduling={"least_attained_service": False})
    long = core.submit(TOK["risk"], "risk", spec(8, workers="per_gpu", retries=2))["job_id"]
    run(core, 3)
    clock.advance(4_600)
    core.submit(TOK["risk"], "risk", spec(8, workers="per_gpu"))
    run(core, 2)
    assert core.status(TOK["risk"], long)["preempt_deadline"] is None
    with pytest.raises(ConfigError, match="las_threshold_gpu_hours"):
        make(tmp_path / "bad", scheduling={"las_threshold_gpu_hours": 0})
