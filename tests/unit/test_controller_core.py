"""The controller's state machine on the in-package FakeBackend: no Ray, injected clock."""
import pytest

from rayfin.controller.backend import FakeBackend
from rayfin.controller.core import ControllerCore
from rayfin.controller.ledger import SqliteLedger
from rayfin.errors import InvalidRequest, JobNotFound, QuotaExceeded, Unauthorized, UnknownDesk
from tests.support.builders import Clock, config, controller_env

TOK = {d: f"{d}-demo-token" for d in ("equities", "fx", "risk", "admin")}


def spec(gpus=1, **kw):
    return {"kind": "callable", "payload": b"x", "gpus": gpus, **kw}


@pytest.fixture
def env(tmp_path):
    return controller_env(tmp_path)


def run(core, n=1):
    for _ in range(n):
        core.cycle()


def test_submit_admit_start_finish(env):
    core, backend, clock, _ = env
    job = core.submit(TOK["fx"], "fx", spec(2))
    assert job["state"] == "PENDING"
    run(core)                                   # decide: admitted, group reserved
    assert core.status(TOK["fx"], job["job_id"])["state"] == "ADMITTED"
    assert sum(g for _, g in backend.group_of(job["job_id"])) == 2
    run(core)                                   # observe: group ready -> runner started -> RUNNING
    run(core)
    st = core.status(TOK["fx"], job["job_id"])
    assert st["state"] == "RUNNING" and backend.start_count(job["job_id"]) == 1
    backend.finish(job["job_id"], result=b"42")
    run(core)
    st = core.status(TOK["fx"], job["job_id"])
    assert st["state"] == "SUCCEEDED"
    assert core.result(TOK["fx"], job["job_id"])["result"] == b"42"
    assert backend.was_released(job["job_id"])


def test_failing_job_ends_failed_with_its_error(env):
    core, backend, _, _ = env
    job = core.submit(TOK["fx"], "fx", spec(1))
    run(core, 3)
    backend.finish(job["job_id"], ok=False, error="ZeroDivisionError: division by zero\n...")
    run(core)
    st = core.status(TOK["fx"], job["job_id"])
    assert st["state"] == "FAILED" and "ZeroDivisionError" in st["reason"]


def test_over_ceiling_is_refused_at_once_with_fields(env):
    core, *_ = env
    with pytest.raises(QuotaExceeded) as err:
        core.submit(TOK["fx"], "fx", spec(5))   # fx: nominal 4 + borrowing 0
    assert (err.value.desk, err.value.requested, err.value.available) == ("fx", 5, 4)
    assert core.jobs(TOK["fx"], "fx") == []     # nothing queued


def test_within_ceiling_but_busy_waits_with_reason(env):
    core, *_ = env
    a = core.submit(TOK["fx"], "fx", spec(4))
    b = core.submit(TOK["fx"], "fx", spec(1))
    run(core)
    assert core.status(TOK["fx"], a["job_id"])["state"] == "ADMITTED"
    st = core.status(TOK["fx"], b["job_id"])
    assert st["state"] == "PENDING" and "fx" in st["reason"] and "4" in st["reason"]
    assert core.explain(TOK["fx"], b["job_id"])["decision"]["verdict"] == "wait"


def test_cancel_frees_gpus_for_next_job(env):
    core, backend, _, _ = env
    a = core.submit(TOK["risk"], "risk", spec(8, workers="per_gpu"))
    b = core.submit(TOK["risk"], "risk", spec(4))
    run(core, 3)
    assert core.status(TOK["risk"], b["job_id"])["state"] == "PENDING"
    assert core.cancel(TOK["risk"], a["job_id"])["state"] == "CANCELLED"
    assert backend.was_released(a["job_id"])
    run(core)
    assert core.status(TOK["risk"], b["job_id"])["state"] == "ADMITTED"


def test_pools_confine_placement(env):
    core, backend, _, _ = env
    r = core.submit(TOK["risk"], "risk", spec(4))
    e = core.submit(TOK["equities"], "equities", spec(4))
    run(core)
    assert all(i.startswith("n1-") for i, _ in backend.group_of(r["job_id"]))   # risk pool is node n1
    assert all(i.startswith("n0-") for i, _ in backend.group_of(e["job_id"]))


@pytest.mark.parametrize("token, desk, error", [
    ("nope", "fx", Unauthorized),
    (TOK["equities"], "fx", Unauthorized),       # a desk cannot submit as another desk
    (TOK["fx"], "commodities", UnknownDesk),
    (None, "fx", Unauthorized),
])
def test_submit_auth(env, token, desk, error):
    core, *_ = env
    with pytest.raises(error):
        core.submit(token, desk, spec(1))


def test_desk_cannot_see_or_cancel_other_desks_job_but_admin_can(env):
    core, *_ = env
    job = core.submit(TOK["fx"], "fx", spec(1))["job_id"]
    with pytest.raises(JobNotFound):
        core.status(TOK["equities"], job)
    with pytest.raises(JobNotFound):
        core.cancel(TOK["equities"], job)
    assert core.jobs(TOK["equities"]) == []
    assert core.status(TOK["admin"], job)["desk"] == "fx"
    assert [j["job_id"] for j in core.jobs(TOK["admin"])] == [job]
    assert core.cancel(TOK["admin"], job)["state"] == "CANCELLED"


@pytest.mark.parametrize("bad, field", [
    ({"gpus": 0}, "gpus"), ({"gpus": -3}, "gpus"), ({"gpus": 10**9}, "gpus"), ({"gpus": 1.5}, "gpus"),
    ({"gpus": "2"}, "gpus"), ({"priority": "urgent"}, "priority"), ({"comm": "nvlink"}, "comm"),
    ({"retries": -1}, "retries"), ({"name": "../../etc"}, "name"), ({"kind": "shell"}, "kind"),
    ({"payload": b""}, "fn"), ({"colour": "red"}, "colour"),
])
def test_bad_spec_names_field(env, bad, field):
    core, *_ = env
    with pytest.raises(InvalidRequest) as err:
        core.submit(TOK["fx"], "fx", {**spec(1), **bad})
    assert err.value.field == field


@pytest.mark.parametrize("command", ["", "   ", "python -c 'unterminated", "a\x00b"])
def test_bad_entrypoint(env, command):
    core, *_ = env
    with pytest.raises(InvalidRequest) as err:
        core.submit(TOK["fx"], "fx", {"kind": "entrypoint", "payload": command, "gpus": 1})
    assert err.value.field == "entrypoint"


def test_resubmission_with_same_id_is_idempotent(env):
    core, *_ = env
    a = core.submit(TOK["fx"], "fx", spec(1, job_id="fx-0123456789ab"))
    b = core.submit(TOK["fx"], "fx", spec(1, job_id="fx-0123456789ab"))
    assert a["job_id"] == b["job_id"] == "fx-0123456789ab"
    assert len(core.jobs(TOK["fx"])) == 1


def test_lost_runner_is_retried_within_budget_then_fails(env):
    core, backend, _, _ = env
    job = core.submit(TOK["fx"], "fx", spec(1, retries=1))["job_id"]
    run(core, 3)
    backend.lose(job, "node n0 lost")
    run(core)
    st = core.status(TOK["fx"], job)
    assert st["attempts"] == 1 and st["state"] == "ADMITTED"     # requeued, then admitted again at once
    assert any(e["kind"] == "requeued" and "node n0 lost" in e["reason"] for e in core.audit(TOK["fx"]))
    run(core, 3)
    backend.lose(job, "node n0 lost again")
    run(core)
    st = core.status(TOK["fx"], job)
    assert st["state"] == "FAILED" and "no retries left" in st["reason"]


def test_node_loss_fails_jobs_on_that_island(env):
    core, backend, _, _ = env
    job = core.submit(TOK["risk"], "risk", spec(4))["job_id"]
    run(core, 3)
    island = backend.group_of(job)[0][0]
    backend.unavailable = {island: 4.0}
    run(core)
    st = core.status(TOK["risk"], job)
    assert st["state"] == "FAILED" and island in st["reason"]
    # The lost island's GPUs are not offered again while it is down.
    other = core.submit(TOK["risk"], "risk", spec(8, workers="per_gpu"))["job_id"]
    run(core)
    assert core.status(TOK["risk"], other)["state"] == "PENDING"


def test_restart_rebuilds_from_ledger_and_adopts(tmp_path):
    clock = Clock()
    backend = FakeBackend()
    ledger = SqliteLedger(tmp_path / "l.db")
    core = ControllerCore(config(), ledger, backend, clock=clock)
    running = core.submit(TOK["fx"], "fx", spec(2))["job_id"]
    run(core, 3)
    queued = core.submit(TOK["fx"], "fx", spec(4))["job_id"]
    backend.groups["orphan-1~0"] = (("n0-i0", 1.0),)            # a group nobody owns any more
    ledger.close()
    # A new controller process: fresh memory, same ledger file, same cluster.
    core2 = ControllerCore(config(), SqliteLedger(tmp_path / "l.db"), backend, clock=clock)
    summary = core2.recover()
    assert running in summary["adopted"] and "orphan-1~0" in summary["released"]
    assert core2.status(TOK["fx"], running)["state"] == "RUNNING"
    assert core2.status(TOK["fx"], queued)["state"] == "PENDING"
    backend.finish(running)
    run(core2, 4)
    assert core2.status(TOK["fx"], running)["state"] == "SUCCEEDED"
    assert backend.start_count(running) == 1                        # never run twice
    assert core2.status(TOK["fx"], queued)["state"] in ("ADMITTED", "RUNNING")


def test_serving_reservation_charges_desk_quota(env):
    core, *_ = env
    with pytest.raises(Unauthorized):                      # a desk cannot reserve serving capacity itself
        core.reserve_serving(TOK["fx"], "pricer", "fx", 2, 0.5)
    res = core.reserve_serving(TOK["admin"], "pricer", "fx", 2, 0.5)
    assert res["num_gpus"] == 0.5 and list(res["resources"].values()) == [0.5]
    assert core.usage(TOK["fx"])["fx"]["serving"] == 1.0
    # fx nominal 4, no borrowing: 1 GPU of serving leaves 3 for batch.
    with pytest.raises(QuotaExceeded):
        core.reserve_serving(TOK["admin"], "big", "fx", 4, 1.0)
    job = core.submit(TOK["fx"], "fx", spec(4))["job_id"]
    run(core)
    assert core.status(TOK["fx"], job)["state"] == "PENDING"


def test_audit_log_records_decisions_by_desk(env):
    core, backend, clock, ledger = env
    core.submit(TOK["fx"], "fx", spec(1))
    with pytest.raises(QuotaExceeded):
        core.submit(TOK["fx"], "fx", spec(9))
    run(core)
    kinds = [e["kind"] for e in core.audit(TOK["fx"])]
    assert kinds[:3] == ["submitted", "refused", "admitted"]
    assert core.audit(TOK["equities"]) == []


def test_admitted_job_that_never_starts_is_requeued_without_spending_a_retry(env):
    core, backend, clock, _ = env
    job = core.submit(TOK["fx"], "fx", spec(1))["job_id"]
    run(core)
    backend.never_ready(job)                 # its group never becomes ready
    clock.advance(core.admit_timeout_s + 1)
    run(core)
    st = core.status(TOK["fx"], job)
    assert st["attempts"] == 0 and st["state"] in ("PENDING", "ADMITTED")
    assert any(e["kind"] == "requeued" and "not started within" in e["reason"] for e in core.audit(TOK["fx"]))


def test_requeued_job_gets_a_new_reservation_name(env):
    core, backend, _, _ = env
    job = core.submit(TOK["fx"], "fx", spec(1, retries=1))["job_id"]
    run(core, 3)
    assert f"{job}~0" in backend.groups
    backend.lose(job)
    run(core)
    # The old group may still be tearing down in Ray: the new one must not reuse its name.
    assert f"{job}~1" in backend.groups and f"{job}~0" not in backend.groups


def test_one_failing_reservation_does_not_stop_the_cycle(env):
    core, backend, _, _ = env
    real = backend.reserve

    def flaky(key, desk, placement, unit=1):
        if desk == "fx":
            raise RuntimeError("name already exists")
        return real(key, desk, placement, unit)

    backend.reserve = flaky
    bad = core.submit(TOK["fx"], "fx", spec(1))["job_id"]
    good = core.submit(TOK["risk"], "risk", spec(1))["job_id"]
    run(core)
    assert core.status(TOK["risk"], good)["state"] == "ADMITTED"
    st = core.status(TOK["fx"], bad)
    assert st["state"] == "PENDING" and "placement group not created" in st["reason"]
    backend.reserve = real
    run(core)
    assert core.status(TOK["fx"], bad)["state"] == "ADMITTED"


def test_job_that_stops_during_grace_ends_preempted_with_its_result(env):
    core, backend, clock, _ = env
    # equities (nominal 4, may borrow 4) borrows fx's nominal; fx then claims it back.
    borrower = core.submit(TOK["equities"], "equities", spec(8, priority="batch", workers="per_gpu"))["job_id"]
    run(core, 3)
    assert core.usage(TOK["equities"])["equities"]["borrowed"] == 4
    lender = core.submit(TOK["fx"], "fx", spec(4))["job_id"]
    run(core)
    assert core.status(TOK["equities"], borrower)["reason"].startswith("being preempted")
    assert backend.stops                                   # the runner was asked to stop
    backend.finish(borrower, result=b"checkpoint-17")      # it stops cleanly inside the grace period
    run(core)
    st = core.status(TOK["equities"], borrower)
    assert st["state"] == "PREEMPTED" and "fx" in st["reason"]
    assert core.result(TOK["equities"], borrower)["result"] == b"checkpoint-17"
    run(core)
    assert core.status(TOK["fx"], lender)["state"] in ("ADMITTED", "RUNNING")


@pytest.mark.parametrize("retries", [0, 1])
def test_a_job_that_finishes_in_its_grace_without_being_told_to_stop_is_finished_not_rerun(env, retries):
    """The stop came while it was returning (it never saw should_stop say so): its work is done.
    It succeeds with its results, no attempt spent and not requeued (retries left) nor ended
    preempted (none left)."""
    core, backend, clock, _ = env
    borrower = core.submit(TOK["equities"], "equities", spec(8, priority="batch", workers="per_gpu",
                                                            retries=retries))["job_id"]
    run(core, 3)
    lender = core.submit(TOK["fx"], "fx", spec(4))["job_id"]
    run(core)
    assert core.status(TOK["equities"], borrower)["reason"].startswith("being preempted")
    backend.finish(borrower, result=b"all 8 done", results=(b"all 8 done", b"r1"), stopped=False)
    run(core)
    st = core.status(TOK["equities"], borrower)
    assert (st["state"], st["attempts"], st["preempt_deadline"]) == ("SUCCEEDED", 0, None)
    assert core.results(TOK["equities"], borrower)["results"] == [b"all 8 done", b"r1"]
    assert backend.start_count(borrower) == 1
    run(core)
    assert core.status(TOK["fx"], lender)["state"] in ("ADMITTED", "RUNNING")
    assert core.usage(TOK["equities"])["equities"]["succeeded"] == 1


def test_done_counts_survive_a_restart_and_are_not_double_counted(tmp_path):
    clock = Clock()
    backend = FakeBackend()
    core = ControllerCore(config(), SqliteLedger(tmp_path / "l.db"), backend, clock=clock)
    a = core.submit(TOK["fx"], "fx", spec(1))["job_id"]
    b = core.submit(TOK["fx"], "fx", spec(1))["job_id"]
    run(core, 3)
    backend.finish(a)
    backend.finish(b, ok=False, error="boom")
    run(core)
    row = core.usage(TOK["fx"])["fx"]
    assert (row["succeeded"], row["failed"]) == (1, 1)
    again = ControllerCore(config(), SqliteLedger(tmp_path / "l.db"), backend, clock=clock)
    row = again.usage(TOK["fx"])["fx"]
    assert (row["succeeded"], row["failed"], row["cancelled"]) == (1, 1, 0)


def test_finished_runtimes_become_predictions_in_the_snapshot(env):
    # issue 17: the controller learns runtimes online and hands them to the policy as hints
    core, backend, clock, _ = env
    for _ in range(2):                                  # two runs of "train", 300 s each
        job = core.submit(TOK["fx"], "fx", spec(1, name="train"))
        run(core, 3)
        clock.advance(300.0)
        backend.finish(job["job_id"])
        run(core)
        assert core.status(TOK["fx"], job["job_id"])["state"] == "SUCCEEDED"
    nxt = core.submit(TOK["fx"], "fx", spec(1, name="train"))
    other = core.submit(TOK["equities"], "equities", spec(1, name="train"))
    hints = core.snapshot().hints
    assert hints[nxt["job_id"]].predicted_s == pytest.approx(300.0) and hints[nxt["job_id"]].attained_s == 0.0
    assert hints[other["job_id"]].predicted_s is None          # no history for that desk: LAS fallback
    run(core, 3)
    clock.advance(50.0)
    assert core.snapshot().hints[nxt["job_id"]].attained_s == pytest.approx(50.0)


def test_draining_island_takes_no_new_work_and_keeps_what_runs(env):
    core, backend, _, _ = env
    first = core.submit(TOK["risk"], "risk", spec(2))["job_id"]
    run(core, 3)
    assert core.status(TOK["risk"], first)["state"] == "RUNNING"
    island = backend.group_of(first)[0][0]
    risk_islands = sorted({i.id for i in core.topology.islands if i.pool == core.topology.island(island).pool})
    core.set_draining([island])
    # Room is left on the draining island, yet the next job lands elsewhere in the pool, or waits.
    nxt = core.submit(TOK["risk"], "risk", spec(1))["job_id"]
    run(core, 2)
    placed = {i for i, _ in backend.group_of(nxt)} if backend.group_of(nxt) else set()
    assert island not in placed
    if len(risk_islands) == 1:
        assert core.status(TOK["risk"], nxt)["state"] == "PENDING"
    # The job already on the draining island keeps running: a drain is not a node loss.
    assert core.status(TOK["risk"], first)["state"] == "RUNNING"
    core.set_draining([])
    run(core, 2)
    assert core.status(TOK["risk"], nxt)["state"] in ("ADMITTED", "RUNNING")


def test_draining_unknown_island_is_refused_with_the_field(env):
    core, *_ = env
    with pytest.raises(InvalidRequest) as err:
        core.set_draining(["no-such-island"])
    assert err.value.field == "draining"


# ---- the 20 s cordon, the capacity loop, a retried submit across a restart (issue 19) ----------
def test_a_lost_runner_cordons_its_islands_for_cordon_s(env):
    core, backend, clock, _ = env
    assert core.cordon_s == 20.0                        # the default until the config carries it
    job = core.submit(TOK["risk"], "risk", spec(4, retries=1))["job_id"]
    run(core, 3)
    island = backend.group_of(job)[0][0]
    backend.lose(job, "runner died")
    run(core)                                           # requeued and re-admitted in the same cycle
    assert core.cordoned == {island: clock() + 20.0}
    assert island not in {i for i, _ in backend.group_of(job)}   # not placed straight back there
    assert core.unavailable[island] == 4.0
    clock.advance(19.0)
    run(core)
    assert island in core.cordoned
    clock.advance(1.5)                                  # 20.5 s after the loss: the cordon has lapsed
    run(core)
    assert core.cordoned == {} and island not in core.unavailable


def test_cordon_keeps_a_requeued_job_waiting_when_its_pool_has_no_other_island(env):
    core, backend, clock, _ = env
    first = core.submit(TOK["risk"], "risk", spec(4))["job_id"]
    lost = core.submit(TOK["risk"], "risk", spec(4, retries=1))["job_id"]
    run(core, 3)
    island = backend.group_of(lost)[0][0]
    backend.lose(lost)
    run(core)
    # risk's pool is 2 islands of 4: one runs `first`, the other is cordoned
    assert core.status(TOK["risk"], lost)["state"] == "PENDING"
    assert core.status(TOK["risk"], first)["state"] == "RUNNING"
    clock.advance(core.cordon_s + 1)
    run(core)
    assert core.status(TOK["risk"], lost)["state"] == "ADMITTED" and backend.group_of(lost)[0][0] == island


class _Adapter:
    def __init__(self, fail=False):
        self.sent, self.fail = [], fail

    def apply(self, request):
        from rayfin.controller.autoscale_ray import AutoscalerUnavailable

        if self.fail:
            raise AutoscalerUnavailable(bundles=1, reason="no autoscaler")
        self.sent.append(request)


AUTOSCALING = {"forecast": {"bin_s": 60, "season_s": 3600, "week_seasons": 1},
               "pools": {"risk": {"lead_time_s": 120, "max_gpus": 8}}}


def test_capacity_loop_asks_once_per_bin_and_keeps_its_state_across_a_restart(tmp_path):
    from rayfin.controller.capacity import CapacityLoop

    core, backend, clock, ledger = controller_env(tmp_path, autoscaling=AUTOSCALING)
    adapter, recorded = _Adapter(), []
    loop = CapacityLoop(core.config, ledger, adapter, record=recorded.append)
    core.submit(TOK["risk"], "risk", spec(4))
    core.submit(TOK["risk"], "risk", spec(2))
    run(core)
    demand = core.pool_demand()
    assert demand["risk"] == 6.0 and demand["general"] == 0.0    # 4 admitted + 2 (admitted too: 8 fit)
    assert loop.due(clock())
    loop.step(demand, clock())
    [req] = adapter.sent
    assert req.pools["risk"].demand_gpus == 6.0 and recorded == [req] and loop.last_request is req
    assert not loop.due(clock() + 59.0) and loop.due(clock() + 60.0)      # one step per forecast bin
    # A restarted controller's loop reads the planner's state back from the ledger.
    again = CapacityLoop(core.config, ledger, _Adapter(), record=lambda r: None)
    assert again.state.to_dict() == loop.state.to_dict() and again.state.to_dict() != {}


def test_capacity_loop_goes_on_when_the_autoscaler_is_not_there(tmp_path):
    from rayfin.controller.capacity import CapacityLoop

    core, _, clock, ledger = controller_env(tmp_path, autoscaling=AUTOSCALING)
    loop = CapacityLoop(core.config, ledger, _Adapter(fail=True), record=lambda r: None)
    loop.step({"risk": 3.0}, clock())                   # logged, not raised
    assert loop.last_request is not None and ledger.get_kv(CapacityLoop.KEY) is not None


def test_capacity_loop_off_when_autoscaling_is_disabled(tmp_path):
    from rayfin.controller.capacity import CapacityLoop

    core, _, clock, ledger = controller_env(tmp_path, autoscaling={"enabled": False})
    assert not CapacityLoop(core.config, ledger, _Adapter(), record=lambda r: None).due(clock())


def test_a_submit_retried_across_a_controller_restart_runs_once(tmp_path):
    # The SDK retries a submit that got no answer (the controller died after writing it): the
    # client-chosen id makes the retry find the job the first controller already accepted.
    clock = Clock()
    backend = FakeBackend()
    first = ControllerCore(config(), SqliteLedger(tmp_path / "l.db"), backend, clock=clock)
    job_id = "fx-00c0ffee00c0ffee"
    first.submit(TOK["fx"], "fx", spec(2, job_id=job_id))
    run(first, 3)
    assert backend.start_count(job_id) == 1
    # The controller is killed and brought back (max_restarts=-1): fresh memory, same ledger.
    second = ControllerCore(config(), SqliteLedger(tmp_path / "l.db"), backend, clock=clock)
    second.recover()
    again = second.submit(TOK["fx"], "fx", spec(2, job_id=job_id))    # the SDK's retry
    assert again["job_id"] == job_id and again["state"] == "RUNNING"
    assert [j["job_id"] for j in second.jobs(TOK["fx"])] == [job_id]
    run(second, 3)
    backend.finish(job_id, result=b"once")
    run(second)
    assert second.status(TOK["fx"], job_id)["state"] == "SUCCEEDED"
    assert backend.start_count(job_id) == 1                              # never run twice
    assert [e["kind"] for e in second.audit(TOK["fx"])].count("submitted") == 1


def test_a_submit_retried_before_the_restart_recovers_is_still_one_job(tmp_path):
    # The retry can reach the new controller while it is still pending (not yet admitted).
    clock = Clock()
    backend = FakeBackend()
    first = ControllerCore(config(), SqliteLedger(tmp_path / "l.db"), backend, clock=clock)
    job_id = "fx-0123456789abcdef"
    first.submit(TOK["fx"], "fx", spec(1, job_id=job_id))
    second = ControllerCore(config(), SqliteLedger(tmp_path / "l.db"), backend, clock=clock)
    assert second.submit(TOK["fx"], "fx", spec(1, job_id=job_id))["state"] == "PENDING"
    second.recover()
    run(second, 3)
    assert backend.start_count(job_id) == 1 and len(second.jobs(TOK["admin"])) == 1


# ---- reasons as codes; serving reservations as their own records --------------------------------
def test_every_transition_carries_a_reason_code(env):
    core, backend, _, _ = env
    borrower = core.submit(TOK["equities"], "equities", spec(8, priority="batch", workers="per_gpu"))["job_id"]
    run(core)
    assert core.status(TOK["equities"], borrower)["reason_code"] == "borrowing"
    run(core, 2)
    assert core.status(TOK["equities"], borrower)["reason_code"] == "running"
    lender = core.submit(TOK["fx"], "fx", spec(4))["job_id"]
    run(core)
    st = core.status(TOK["equities"], borrower)
    assert st["reason_code"] == "reclaim" and st["reason"].startswith("being preempted")
    assert core.explain(TOK["fx"], lender)["decision"]["code"] == "awaiting_preemption"
    backend.finish(borrower)
    run(core)
    st = core.status(TOK["equities"], borrower)
    # the final reason is the decision's own text, not a prefix stripped from the record's prose
    assert st["state"] == "PREEMPTED" and st["reason"].startswith("reclaimed: desk equities")
    codes = {(e["kind"], e["reason_code"]) for e in core.audit(TOK["admin"])}
    assert {("submitted", "queued"), ("admitted", "borrowing"), ("preemption_planned", "reclaim"),
            ("preempted", "reclaim")} <= codes
    assert all(e["reason_code"] for e in core.audit(TOK["admin"]))


def test_serving_reservations_are_not_jobs_and_survive_a_restart(tmp_path):
    clock = Clock()
    backend = FakeBackend()
    core = ControllerCore(config(), SqliteLedger(tmp_path / "l.db"), backend, clock=clock)
    res = core.reserve_serving(TOK["admin"], "pricer", "fx", 2, 0.5)
    assert core.reserve_serving(TOK["admin"], "pricer", "fx", 2, 0.5) == res        # the same again: a no-op
    assert core.jobs(TOK["admin"]) == [] and core.usage(TOK["fx"])["fx"]["running"] == 0
    with pytest.raises(JobNotFound):
        core.status(TOK["admin"], "serve-pricer")
    again = ControllerCore(config(), SqliteLedger(tmp_path / "l.db"), backend, clock=clock)
    again.recover()
    assert again.usage(TOK["fx"])["fx"]["serving"] == 1.0
    assert again.pool_demand()["general"] == 1.0
    assert again.release_serving(TOK["admin"], "pricer") == {"released": True, "gpus": 1.0, "desk": "fx"}
    assert again.usage(TOK["fx"])["fx"]["serving"] == 0.0
    assert again.release_serving(TOK["admin"], "pricer") == {"released": False}
    kinds = [(e["kind"], e["reason_code"]) for e in again.audit(TOK["admin"]) if e["job_id"] == "serve-pricer"]
    assert kinds == [("serving_reserved", "serving_reserved"), ("cancelled", "serving_released")]


def test_cordon_and_admit_timeout_come_from_the_config(tmp_path):
    core, *_ = controller_env(tmp_path, controller__cordon_s=5.0, controller__admit_timeout_s=30.0)
    assert (core.cordon_s, core.admit_timeout_s) == (5.0, 30.0)


@pytest.mark.parametrize("reported", [False, True])
def test_a_reported_checkpoint_makes_the_job_the_cheaper_victim(tmp_path, reported):
    # equities borrows 4 of fx's GPUs with two jobs; fx claims them back. Without reports the
    # victim is the one with less work since its start (the later one); once the earlier one
    # reports a checkpoint 5 s ago (JobContext.report_checkpoint, through the runner's poll), it
    # is the one that loses least, and goes. The work thrown away is counted per preemption.
    from rayfin.controller.backend import FakeBackend
    from rayfin.controller.core import ControllerCore
    from rayfin.controller.ledger import SqliteLedger
    from rayfin.controller.recorder import NullRecorder

    class Spy(NullRecorder):
        lost: list[tuple[str, float]] = []

        def preempted(self, job, reason, lost_gpu_s=0.0):
            self.lost.append((job.job_id, lost_gpu_s))
    clock, spy = Clock(), Spy()
    backend = FakeBackend(clock=clock)    # a reported age grows with the clock until the next report
    ids = iter(range(100))
    core = ControllerCore(config(), SqliteLedger(tmp_path / "l.db"), backend, clock=clock, recorder=spy,
                          new_id=lambda d: f"{d}-{next(ids):08x}")
    first = core.submit(TOK["equities"], "equities", spec(4, priority="batch", retries=1))["job_id"]
    run(core, 3)
    clock.advance(100)
    second = core.submit(TOK["equities"], "equities", spec(4, priority="batch", retries=1))["job_id"]
    run(core, 3)
    assert {core.status(TOK["equities"], j)["state"] for j in (first, second)} == {"RUNNING"}
    clock.advance(100)
    if reported:
        backend.checkpointed(first, 5.0)
        run(core)
        assert core.state.active[first].info["checkpoint_at"] == pytest.approx(clock() - 5.0)
    core.submit(TOK["fx"], "fx", spec(4))
    run(core)
    victim = first if reported else second
    assert core.status(TOK["equities"], victim)["reason"].startswith("being preempted")
    assert not core.status(TOK["equities"], second if reported else first)["reason"].startswith("being preempted")
    clock.advance(2)                 # the 1 s grace is over: its checkpoint is 7 s old now
    run(core)
    (gone, lost), = spy.lost
    assert gone == victim
    assert lost == pytest.approx(4 * (7.0 if reported else 102.0), abs=4 * 0.5)
    st = core.status(TOK["equities"], victim)      # requeued (a retry left), and says what it lost
    assert st["state"] in ("PENDING", "ADMITTED")
    said = [e["reason"] for e in core.audit(TOK["equities"]) if e["kind"] == "requeued" and e["job_id"] == victim]
    assert said and ("7 s of work since its last checkpoint lost" if reported else
                     "102 s of work since its start (no checkpoint reported) lost") in said[-1]


def test_a_polls_checkpoint_age_is_aged_until_the_next_reply():
    # RayBackend reports a poll's reply every cycle until the next one comes: the age the runner
    # gave must grow with the time since the poll was asked, or a stalled poll would make the job
    # look freshly checkpointed for ever.
    from rayfin.controller.backend import RunnerStatus, aged
    st = RunnerStatus("RUNNING", checkpoint_age_s=5.0)
    assert aged(st, 100.0, 100.0).checkpoint_age_s == 5.0
    assert aged(st, 100.0, 160.0).checkpoint_age_s == 65.0
    assert aged(st, 100.0, 90.0).checkpoint_age_s == 5.0          # never younger
    assert aged(st, None, 160.0) is st
    none = RunnerStatus("RUNNING")
    assert aged(none, 100.0, 160.0) is none


def test_a_job_that_keeps_losing_its_runner_as_it_starts_spends_retries_after_a_few(env):
    # A runner started and lost before it reported running (its node died under it, or the
    # job's code killed it) is requeued free FREE_LOST_STARTS times; then each such loss spends a
    # retry, so a job that kills its node as it starts cannot go round the fleet for ever.
    from rayfin.controller.state import FREE_LOST_STARTS
    core, backend, clock, _ = env
    job = core.submit(TOK["fx"], "fx", spec(1))["job_id"]      # no retries
    run(core)                                  # admitted
    for n in range(FREE_LOST_STARTS):
        run(core)                              # its runner started, not yet seen running
        assert backend.start_count(job) == n + 1 and core.status(TOK["fx"], job)["state"] == "ADMITTED"
        backend.lose(job, "worker died at start")
        run(core)                              # lost: requeued free, and admitted again elsewhere
        st = core.status(TOK["fx"], job)
        assert st["attempts"] == 0 and st["state"] in ("PENDING", "ADMITTED"), st
        clock.advance(core.cordon_s + 1)       # (the island it was lost on is cordoned a while)
    run(core)
    assert backend.start_count(job) == FREE_LOST_STARTS + 1
    backend.lose(job, "worker died at start")
    run(core)
    st = core.status(TOK["fx"], job)
    assert st["state"] == "FAILED" and "lost as it started 4 times in a row" in st["reason"]
    assert "no retries left" in st["reason"]


def test_the_lost_starts_count_restarts_once_the_job_runs(env):
    # three losses as it started, then it runs: the count is of losses in a row, so its next
    # lost start is free again (a long-lived job, an elastic gang's restarts, would run out)
    core, backend, clock, _ = env
    job = core.submit(TOK["fx"], "fx", spec(1, retries=1))["job_id"]
    run(core)
    for _ in range(3):
        run(core)
        backend.lose(job, "worker died at start")
        run(core)
        clock.advance(core.cordon_s + 1)
    run(core, 2)                                # started, and seen running this time
    assert core.status(TOK["fx"], job)["state"] == "RUNNING"
    assert "lost_starts" not in core.state.active[job].info
    backend.lose(job, "node lost")              # lost while running: a retry spent (attempt 1)
    run(core)
    run(core)
    assert core.status(TOK["fx"], job)["attempts"] == 1
    backend.lose(job, "worker died at start")   # lost as it starts: free again
    run(core)
    st = core.status(TOK["fx"], job)
    assert st["attempts"] == 1 and st["state"] in ("PENDING", "ADMITTED"), st


@pytest.mark.parametrize("how", ["group never ready", "runner started, slow to come up"])
def test_an_admit_timeout_is_never_charged(env, how):
    # slow to come up (a gang's workers, a runtime env) is not the job's doing: free every time,
    # whether its group never came up or its runner was started and never said it runs
    core, backend, clock, _ = env
    job = core.submit(TOK["fx"], "fx", spec(1))["job_id"]
    run(core)                                   # admitted
    for n in range(5):
        if how == "group never ready":
            backend.never_ready(job)
        else:
            run(core)                           # its runner is started ...
            assert backend.start_count(job) == n + 1
            backend.stall(job)                  # ... and stays STARTING
        clock.advance(core.admit_timeout_s + 1)
        run(core)                               # timed out: requeued, and admitted again at once
        st = core.status(TOK["fx"], job)
        assert st["attempts"] == 0 and st["state"] in ("PENDING", "ADMITTED"), st
    assert sum(e["kind"] == "requeued" for e in core.audit(TOK["fx"])) == 5



def test_an_earlier_attempts_checkpoint_does_not_count_for_this_one(env):
    # the job resumed from it: what is at stake is this attempt's work since its start
    core, backend, clock, _ = env
    job = core.submit(TOK["fx"], "fx", spec(1))["job_id"]
    run(core, 3)
    rec = core.state.active[job]
    assert rec.state.value == "RUNNING"
    core.state.active[job] = rec.copy(info={**rec.info, "checkpoint_at": rec.started_at - 500.0})
    clock.advance(40)
    assert core.state.work_at_stake_s(core.state.active[job]) == pytest.approx(40.0)
    from rayfin.controller.cycle import hints
    assert hints(core.state, clock())[job].checkpoint_age_s == pytest.approx(40.0)
