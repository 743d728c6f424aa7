"""Elastic gangs in the live controller (ControllerCore on the FakeBackend, injected clock): a
gang declared workers=(min, max) is admitted at its base, grows into idle GPUs (at once while it
has not started; through a stop and a restart from its checkpoint once it runs) and gives its
extra workers back while other work waits, never spending a retry. Cluster: configs/test.yaml
(16 GPUs; quant owns none and borrows; fx may not borrow; risk owns pool n1)."""
from __future__ import annotations

import pytest

import json
from dataclasses import replace

from rayfin.controller import market_clock
from rayfin.errors import InvalidRequest
from rayfin.market.audit import AuditReason, ReplayCode
from rayfin.policy import JobState
from tests.unit.test_deadlines_controller import T0, TOK, at, kinds, make, run, spec


def gpus_of(placement) -> float:
    return sum(g for _, g in placement)


def held_back(core, **kw) -> tuple[str, str]:
    """risk and fx fill 12 of the 16 GPUs; quant's gang (2, 4) runs at its base while fx's job
    waits (fx may not borrow), so it does not grow until that job goes. Returns (gang, fx's job)."""
    core.submit(TOK["risk"], "risk", spec(8, workers="per_gpu"))
    core.submit(TOK["fx"], "fx", spec(4, workers="per_gpu"))
    run(core, 2)
    gang = core.submit(TOK["quant"], "quant", spec(4, workers=(2, 4), **kw))["job_id"]
    blocked = core.submit(TOK["fx"], "fx", spec(4))["job_id"]
    return gang, blocked


def test_an_idle_cluster_starts_it_grown_and_waiting_work_shrinks_it_back(tmp_path):
    core, backend, clock, _, ledger = make(tmp_path)
    gang = core.submit(TOK["quant"], "quant", spec(8, workers=(2, 8)))["job_id"]
    st = core.status(TOK["quant"], gang)
    assert (st["gpus"], st["info"]["workers"], st["info"]["min_workers"], st["info"]["max_workers"]) == (2.0, 2, 2, 8)
    run(core, 1)      # admitted at its base, then grown before it started: nothing to restart
    st = core.status(TOK["quant"], gang)
    assert (st["state"], st["info"]["workers"], st["gpus"], st["reason_code"]) == ("ADMITTED", 8, 8.0, "elastic_grow")
    run(core, 2)      # its group is ready: the runner starts, and reports running
    assert core.status(TOK["quant"], gang)["state"] == "RUNNING"
    lent = lambda st: round(sum(g for _, g in st["info"].get("lenders", ())), 6)   # noqa: E731
    st = core.status(TOK["quant"], gang)
    # quant owns nothing: all 8 are borrowed, and the 6 of the growth are attributed with it
    assert (lent(st), st["info"]["borrowed"], round(sum(g for _, g in st["info"]["extra_lenders"]), 6)) == \
        (8.0, 8.0, 6.0)
    launched = backend.runners[backend._key(gang)]
    assert (gpus_of(launched.placement), launched.unit) == (8.0, 1)          # 8 one-GPU workers
    assert backend.start_count(gang) == 1

    # 14 GPUs asked with 8 free: work waits, so the gang gives its 6 extra workers back (and no
    # more: 16 would reclaim its base too, at once, as it is not started again yet)
    waiting = [core.submit(TOK[d], d, spec(g, workers="per_gpu"))["job_id"] for d, g in
               (("risk", 8), ("fx", 4), ("equities", 2))]
    run(core, 1)
    st = core.status(TOK["quant"], gang)
    assert st["state"] == "RUNNING" and st["reason_code"] == "elastic_shrink" and st["preempt_deadline"] is None
    assert backend.stops[-1] == backend._key(gang)                # asked to stop at a checkpoint
    backend.finish(gang, results=(b"r0", b"r1"))                  # it checkpointed and returned
    run(core, 3)      # stopped: reserved at its base; ready: started; running
    st = core.status(TOK["quant"], gang)
    assert (st["state"], st["info"]["workers"], st["gpus"], st["attempts"]) == ("RUNNING", 2, 2.0, 0)   # no retry spent
    assert gpus_of(backend.runners[backend._key(gang)].placement) == 2.0
    assert backend.start_count(gang) == 2
    assert (lent(st), st["info"]["borrowed"], "extra_lenders" in st["info"]) == (2.0, 2.0, False)
    assert {"resize_planned", "resized"} <= set(kinds(ledger, gang))
    run(core, 3)
    held = sum(core.status(TOK[d], j)["gpus"] for d, j in zip(("risk", "fx", "equities"), waiting)
               if core.status(TOK[d], j)["state"] in ("ADMITTED", "RUNNING"))
    assert held >= 8     # what it gave back went to the work that waited
    backend.finish(gang, result=b"done")
    run(core, 1)
    # the values are the run that ended the job's, not those of the run stopped for the resize
    assert core.results(TOK["quant"], gang)["results"] == [b"done"]


def test_a_running_gang_grows_through_a_restart_when_nothing_waits(tmp_path):
    core, backend, clock, _, ledger = make(tmp_path)
    gang, blocked = held_back(core)
    run(core, 3)
    st = core.status(TOK["quant"], gang)
    assert (st["state"], st["info"]["workers"]) == ("RUNNING", 2)         # no growth while fx's job waits
    core.cancel(TOK["fx"], blocked)
    run(core, 1)
    st = core.status(TOK["quant"], gang)
    assert (st["state"], st["info"]["workers"], st["gpus"], st["reason_code"]) == ("RUNNING", 4, 4.0, "elastic_grow")
    assert backend.stops[-1] == backend._key(gang)
    clock.advance(5)                                               # it did not stop in its grace: taken
    run(core, 3)
    st = core.status(TOK["quant"], gang)
    assert (st["state"], st["info"]["workers"], st["attempts"]) == ("RUNNING", 4, 0)
    assert gpus_of(backend.runners[backend._key(gang)].placement) == 4.0
    assert st["info"]["attained_s"] == 5.0                         # the service before the restart is kept


def test_a_gang_that_finishes_in_a_resize_grace_without_being_told_is_finished_at_the_size_it_ran(tmp_path):
    core, backend, clock, _, ledger = make(tmp_path)
    gang, blocked = held_back(core)
    run(core, 3)
    core.cancel(TOK["fx"], blocked)
    run(core, 1)
    st = core.status(TOK["quant"], gang)
    assert (st["reason_code"], st["info"]["workers"]) == ("elastic_grow", 4)      # growing: asked to stop
    backend.finish(gang, result=b"done", results=(b"done", b"r1"), stopped=False)  # it was returning anyway
    run(core, 2)
    st = core.status(TOK["quant"], gang)
    # finished, at the size it ran at (its base): not restarted at 4 to run its work again
    assert (st["state"], st["gpus"], st["info"]["workers"], st["attempts"]) == ("SUCCEEDED", 2.0, 2, 0)
    assert "extra" not in st["info"] and "resize_to" not in st["info"]
    assert backend.start_count(gang) == 1 and "resized" not in kinds(ledger, gang)
    assert core.results(TOK["quant"], gang)["results"] == [b"done", b"r1"]


def test_a_gang_whose_runner_was_just_started_grows_through_a_stop_not_a_kill(tmp_path):
    """Admitted, its group ready and its runner started in this cycle, before any poll said
    RUNNING: its code may already run, so a growth asks it to stop (grace) as for a running gang,
    instead of releasing its group (which kills the runner) at once."""
    core, backend, clock, _, ledger = make(tmp_path)
    gang, blocked = held_back(core)
    run(core, 1)
    assert core.status(TOK["quant"], gang)["state"] == "ADMITTED" and backend.start_count(gang) == 0
    core.cancel(TOK["fx"], blocked)
    run(core, 1)      # its group is ready: the runner starts, and nothing waits: it grows
    st = core.status(TOK["quant"], gang)
    assert (st["state"], st["reason_code"], st["info"]["workers"]) == ("ADMITTED", "elastic_grow", 4)
    assert backend.start_count(gang) == 1
    assert not backend.was_released(gang) and backend.stops[-1] == backend._key(gang)
    assert st["info"]["resize_deadline"] is not None
    clock.advance(5)
    run(core, 3)      # its grace is over: restarted at 4
    st = core.status(TOK["quant"], gang)
    assert (st["state"], st["info"]["workers"], st["attempts"]) == ("RUNNING", 4, 0)
    assert backend.start_count(gang) == 2


def test_a_gangs_runtime_history_is_one_whatever_size_it_ended_at(tmp_path):
    """Runs that ended grown teach the prediction the next run, queued at its base, gets (not
    the history of a fixed 2-GPU job of the same name, the size the gang is queued at)."""
    core, backend, clock, _, ledger = make(tmp_path)
    for gpus, workers, took in ((2, None, 100.0), (2, None, 100.0), (8, (2, 8), 600.0), (8, (2, 8), 600.0)):
        job = core.submit(TOK["quant"], "quant", spec(gpus, **({"workers": workers} if workers else {}),
                                                      name="train"))["job_id"]
        run(core, 3)
        assert core.status(TOK["quant"], job)["gpus"] == gpus             # the gangs grew on the idle cluster
        clock.advance(took)
        backend.finish(job)
        run(core)
        assert core.status(TOK["quant"], job)["state"] == "SUCCEEDED"
    core.submit(TOK["risk"], "risk", spec(8, workers="per_gpu"))
    core.submit(TOK["fx"], "fx", spec(4, workers="per_gpu"))
    run(core, 2)
    nxt = core.submit(TOK["quant"], "quant", spec(8, workers=(2, 8), name="train"))["job_id"]
    assert core.status(TOK["quant"], nxt)["gpus"] == 2.0                    # queued at its base
    assert core.snapshot().hints[nxt].predicted_s == pytest.approx(600.0)


def test_grows_and_shrinks_are_audited_and_replay_to_the_same_decisions(tmp_path):
    """The elastic step's decisions are in the audit trail (`rayfin audit --export`) with their
    snapshot and gangs, and `rayfin replay` re-runs them: the same grow and shrink come out; an
    edited gang (a max the growth could not have had) is reported."""
    core, backend, clock, _, ledger = make(tmp_path)
    core.submit(TOK["fx"], "fx", spec(4, workers="per_gpu"))       # fx at its ceiling (it may not borrow)
    run(core, 2)
    gang = core.submit(TOK["quant"], "quant", spec(8, workers=(2, 8)))["job_id"]
    run(core, 3)                                                   # grown into the idle GPUs, running
    assert core.status(TOK["quant"], gang)["info"]["workers"] == 8
    core.submit(TOK["fx"], "fx", spec(4, workers="per_gpu"))       # over fx's ceiling: it waits, no reclaim
    run(core, 1)
    assert core.status(TOK["quant"], gang)["reason_code"] == "elastic_shrink"
    events = ledger.events(kinds=[market_clock.SNAPSHOT_EVENT], limit=10**6)
    records = market_clock.audit_records(events)
    resized = {(r.subject, r.verdict, r.code) for r in records if r.reason is AuditReason.RESIZED}
    assert resized == {(gang, "grow", "elastic_grow"), (gang + "+x", "preempt", "elastic_shrink")}
    rep = market_clock.replay_events(events)
    assert rep.ok and rep.checked == len(records), rep.mismatches
    k, data = next((k, json.loads(json.dumps(e.data))) for k, e in enumerate(events)
                   if (e.data or {}).get("step") == "elastic" and e.data["records"][0]["verdict"] == "grow")
    data["gangs"][0]["max_workers"] = 2                            # the record's gang could not have grown
    rep = market_clock.replay_events([replace(events[k], data=data)])
    assert [(m.code, m.subject) for m in rep.mismatches] == [(ReplayCode.DECISION_MISSING, gang)]
    data["gangs"][0]["max_workers"] = 1                            # not a gang at all: reported, no crash
    rep = market_clock.replay_events([replace(events[k], data=data)])
    assert [(m.code, m.subject) for m in rep.mismatches] == [(ReplayCode.SNAPSHOT_ALTERED, gang)]


def test_a_gang_that_grew_while_running_is_learnt_with_its_whole_runtime(tmp_path):
    """100 s at its base, a 5 s grace, then 20 s at 4 workers after its restart: 125 s, not the 20 s
    of its last run (the hints and ETAs subtract all it ran from the prediction)."""
    core, backend, clock, _, ledger = make(tmp_path)
    gang, blocked = held_back(core, name="train")
    run(core, 3)
    clock.advance(100)
    core.cancel(TOK["fx"], blocked)
    run(core, 1)                                               # grows: asked to stop
    clock.advance(5)
    run(core, 3)                                               # restarted at 4
    assert core.status(TOK["quant"], gang)["info"]["workers"] == 4
    clock.advance(20)
    backend.finish(gang)
    run(core)
    assert core.status(TOK["quant"], gang)["state"] == "SUCCEEDED"
    history = dict((tuple(k), v) for k, v in core.state.duration_state.to_dict()["history"])
    assert history[("n", "quant", "quant", "train", "4")] == [125.0]


def test_a_deadline_eta_counts_a_grown_gang_at_its_base_after_a_grace(tmp_path):
    """fx's elastic gang grew to its whole nominal (4) for 1,000 s more. A deadline job of fx's
    would make it give its 2 extra workers back within a grace, so the ETA is a grace plus its
    own runtime, not the gang's end plus its runtime (at risk, before)."""
    core, backend, clock, _, ledger = make(tmp_path)
    gang = core.submit(TOK["fx"], "fx", spec(4, workers=(2, 4), expected_runtime_s=1000))["job_id"]
    run(core, 3)
    assert (core.status(TOK["fx"], gang)["state"], core.status(TOK["fx"], gang)["gpus"]) == ("RUNNING", 4.0)
    grace = core.state.policy.preemption_grace_s
    job = core.submit(TOK["fx"], "fx", spec(2, deadline=at(1200), expected_runtime_s=300))
    assert job["answer"]["verdict"] == "admitted", job["answer"]
    assert job["answer"]["eta"] == pytest.approx(T0 + grace + 300)
    run(core, 1)      # and so it goes: the gang gives its extra workers back
    assert core.status(TOK["fx"], gang)["reason_code"] == "elastic_shrink"
    clock.advance(grace)
    run(core, 4)
    assert core.status(TOK["fx"], job["job_id"])["state"] == "RUNNING"
    assert core.status(TOK["fx"], gang)["gpus"] == 2.0


def test_a_lost_gang_is_requeued_at_its_base_and_grows_again(tmp_path):
    core, backend, clock, _, ledger = make(tmp_path)
    gang = core.submit(TOK["quant"], "quant", spec(8, workers=(2, 8), retries=1))["job_id"]
    run(core, 3)
    assert core.status(TOK["quant"], gang)["info"]["workers"] == 8
    backend.lose(gang)     # on n0, both islands now cordoned: fx's new job, in pool n0, waits
    core.submit(TOK["fx"], "fx", spec(4, workers="per_gpu"))
    run(core, 1)
    st = core.status(TOK["quant"], gang)
    # requeued at its base, and admitted again at once on n1, at its base: fx's job waits
    assert (st["state"], st["info"]["workers"], st["gpus"], st["attempts"]) == ("ADMITTED", 2, 2.0, 1)
    assert "extra" not in st["info"] and "resize_to" not in st["info"]     # no resize state left over
    assert [k for k in kinds(ledger, gang) if k in ("requeued", "admitted")][-2:] == ["requeued", "admitted"]
    run(core, 3)
    assert core.status(TOK["quant"], gang)["info"]["workers"] == 2           # no growth while fx's job waits
    clock.advance(120)     # the cordon is over: fx's job starts, nothing waits, the gang grows
    run(core, 3)
    clock.advance(5)       # (its grace to stop)
    run(core, 3)
    st = core.status(TOK["quant"], gang)
    assert st["state"] == "RUNNING" and st["info"]["workers"] > 2 and st["attempts"] == 1


@pytest.mark.parametrize("workers, field", [((0, 4), "min_workers"), ((5, 4), "min_workers"), ((1, 2, 3), "workers"),
                                            ((1, 3), "workers")])
def test_bad_elastic_sizes_are_refused_naming_the_field(tmp_path, workers, field):
    core, *_ = make(tmp_path)
    with pytest.raises(InvalidRequest) as err:
        core.submit(TOK["quant"], "quant", spec(4, workers=workers))
    assert err.value.field == field


def test_min_equal_to_max_is_a_fixed_gang(tmp_path):
    core, backend, clock, _, _ = make(tmp_path)
    job = core.submit(TOK["quant"], "quant", spec(4, workers=(4, 4)))["job_id"]
    run(core, 3)
    st = core.status(TOK["quant"], job)
    assert st["state"] == JobState.RUNNING.value and st["info"]["workers"] == 4 and "min_workers" not in st["info"]


def test_chargeback_bills_each_size_for_the_time_it_was_held():
    from rayfin.controller.chargeback import usage_records
    from rayfin.controller.records import Event

    def ev(seq, ts, kind, state, gpus):
        return Event(seq, ts, "g", "quant", kind, state, "", {"gpus": gpus, "placement": [["n0-i0", gpus]]})
    trail = [ev(1, 0, "admitted", "ADMITTED", 2), ev(2, 5, "started", "RUNNING", 2),
             ev(3, 100, "resize_planned", "RUNNING", 8),      # grown: the new workers' GPUs are its from here
             ev(4, 101, "resized", "ADMITTED", 8), ev(5, 103, "started", "RUNNING", 8),
             ev(6, 300, "resize_planned", "RUNNING", 8),      # shrinking: held until the old runner stops
             ev(7, 301, "resized", "ADMITTED", 2), ev(8, 400, "succeeded", "SUCCEEDED", 2)]
    got = [(r.gpus, r.start.timestamp(), r.end.timestamp()) for r in usage_records(trail, until=1_000)]
    assert got == [(2, 0, 100), (8, 100, 301), (2, 301, 400)]
    assert sum(g * (b - a) for g, a, b in got) == 2 * 100 + 8 * 201 + 2 * 99


def test_a_controller_restart_mid_shrink_finishes_the_resize(tmp_path):
    from rayfin.controller.core import ControllerCore
    from rayfin.controller.ledger import SqliteLedger
    from tests.support.builders import config

    core, backend, clock, spy, ledger = make(tmp_path)
    gang = core.submit(TOK["quant"], "quant", spec(8, workers=(2, 8)))["job_id"]
    run(core, 3)
    for d, g in (("risk", 8), ("fx", 4), ("equities", 2)):    # (16 would reclaim its base too)
        core.submit(TOK[d], d, spec(g, workers="per_gpu"))
    run(core, 1)
    assert core.status(TOK["quant"], gang)["reason_code"] == "elastic_shrink"
    ledger.close()
    # a new controller process on the same ledger and cluster, while the old runner still stops
    again = ControllerCore(config(), SqliteLedger(tmp_path / "ledger.db"), backend, clock=clock, recorder=spy)
    assert gang in again.recover()["adopted"]
    st = again.status(TOK["quant"], gang)
    assert (st["state"], st["info"]["workers"], st["info"]["resize_to"]) == ("RUNNING", 8, 2)   # kept in the ledger
    clock.advance(5)                     # past its grace: the resize completes
    run(again, 3)
    st = again.status(TOK["quant"], gang)
    assert (st["state"], st["info"]["workers"], st["gpus"], st["attempts"]) == ("RUNNING", 2, 2.0, 0)


def _work() -> str:
    return "trained"


def test_the_sdk_sends_an_elastic_range_over_http_and_bad_ranges_are_named(tmp_path):
    from fastapi.testclient import TestClient

    from rayfin.api.app import build_app
    from rayfin.sdk import Client
    from tests.support.api import CorePort

    core, backend, clock, _, _ = make(tmp_path)
    tc = TestClient(build_app(CorePort(core)))
    quant = Client("quant", TOK["quant"], "http://testserver", transport=tc._transport, retry_s=0)
    job = quant.submit(_work, gpus=4, workers=(1, 4))
    st = job.status()
    assert (st.gpus, st.info["workers"], st.info["min_workers"], st.info["max_workers"]) == (1.0, 1, 1, 4)
    assert st.name == "work"     # the function's name made a valid one (`_work` alone is refused)
    with pytest.raises(InvalidRequest) as err:        # refused in the SDK, before anything is sent
        quant.submit(_work, gpus=4, workers=(3, 2))
    assert err.value.field == "min_workers" and "from 1 to workers=2" in err.value.allowed
    raw = tc.post("/v1/jobs", headers={"Authorization": f"Bearer {TOK['quant']}"},
                  json={"desk": "quant", "kind": "entrypoint", "entrypoint": "echo hi", "gpus": 4, "workers": 4,
                        "min_workers": 9})
    assert raw.status_code == 422 and raw.json()["error"]["fields"]["field"] == "min_workers"


def test_losing_only_the_new_workers_island_during_a_growth_restarts_the_gang_at_its_base(tmp_path):
    """The old runner never ran on the growth's new island: losing it must not fail the gang
    (retries 0 here) nor cordon islands it never used; the growth is given up instead."""
    core, backend, clock, _, ledger = make(tmp_path)
    for d, g in (("equities", 3), ("risk", 4), ("fx", 4)):
        core.submit(TOK[d], d, spec(g, workers="per_gpu"))
    blocked = core.submit(TOK["fx"], "fx", spec(1))["job_id"]       # fx may not borrow: it waits
    gang = core.submit(TOK["quant"], "quant", spec(2, workers=(1, 2)))["job_id"]
    run(core, 3)
    st = core.status(TOK["quant"], gang)
    assert (st["state"], st["info"]["workers"]) == ("RUNNING", 1)
    core.cancel(TOK["fx"], blocked)
    run(core, 1)
    st = core.status(TOK["quant"], gang)
    assert (st["info"]["workers"], st["info"]["resize_to"]) == (2, 2)           # growing
    (new_island, _), = st["info"]["extra"]
    base_islands = {i for i, g in st["placement"]} - {new_island} or {new_island}
    assert new_island not in {i for i, _ in backend.runners[backend._key(gang)].placement}, "setup: other island"
    backend.unavailable[new_island] = 4.0
    run(core, 1)
    st = core.status(TOK["quant"], gang)
    assert st["state"] == "RUNNING" and st["attempts"] == 0 and st["info"]["workers"] == 1
    assert st["reason_code"] == "elastic_shrink" and "island of its new workers was lost" in st["reason"]
    clock.advance(5)
    run(core, 3)
    st = core.status(TOK["quant"], gang)
    assert (st["state"], st["info"]["workers"], st["attempts"]) == ("RUNNING", 1, 0)
    assert {i for i, _ in st["placement"]} <= base_islands


def test_a_preemption_of_the_whole_gang_during_a_resize_wins(tmp_path):
    """A gang being grown and then preempted whole is requeued once, at its base, and never
    restarted by the resize in between (the preemption's deadline is later than the resize's)."""
    core, backend, clock, _, ledger = make(tmp_path, defaults={"preemption_grace_s": 1.0, "max_retries": 1})
    core.submit(TOK["fx"], "fx", spec(4, workers="per_gpu"))
    blocked = core.submit(TOK["fx"], "fx", spec(4))["job_id"]
    gang = core.submit(TOK["quant"], "quant", spec(8, workers=(4, 8), priority="batch"))["job_id"]
    run(core, 3)
    assert core.status(TOK["quant"], gang)["info"]["workers"] == 4
    core.cancel(TOK["fx"], blocked)
    run(core, 1)                                    # grows: the old runner is asked to stop (1 s)
    assert core.status(TOK["quant"], gang)["info"]["resize_to"] == 8
    clock.advance(0.5)
    core.submit(TOK["risk"], "risk", spec(8, workers="per_gpu"))     # reclaims its pool: all of the gang
    core.submit(TOK["equities"], "equities", spec(4, workers="per_gpu"))
    run(core, 1)
    st = core.status(TOK["quant"], gang)
    assert st["preempt_deadline"] is not None
    starts, key = backend.start_count(gang), backend._key(gang)
    clock.advance(0.7)                              # the resize's deadline passes, not the preemption's
    run(core, 2)
    assert (backend.start_count(gang), backend._key(gang)) == (starts, key)   # no restart meanwhile
    clock.advance(1.0)
    run(core, 1)
    st = core.status(TOK["quant"], gang)
    assert st["attempts"] == 1 and st["info"]["workers"] == 4 and "resize_to" not in st["info"]
