"""Job lifecycle corners found by review (each test fails on the code before its fix):
a victim that never started, a victim lost before it ran, lost starts and admit timeouts, a
re-adopted job's start, and a growth that turns into a shrink."""
from __future__ import annotations

from rayfin.controller.core import ControllerCore
from rayfin.controller.ledger import SqliteLedger
from tests.support.builders import config, controller_env
from tests.unit.test_deadlines_controller import TOK as DTOK, make, spec as gang_spec

TOK = {d: f"{d}-demo-token" for d in ("equities", "fx", "risk", "admin")}


def spec(gpus: int = 1, **kw):
    return {"kind": "callable", "payload": b"x", "gpus": gpus, **kw}


def borrow_then_reclaim(tmp_path, *, started: bool):
    """equities borrows fx's share in two 4-GPU jobs whose runners have not reported running
    (`started`: their runners were started; else their groups are still coming up); then fx asks
    for its GPUs back, and one of the two is the victim."""
    core, backend, clock, ledger = controller_env(tmp_path)
    a = core.submit(TOK["equities"], "equities", spec(4))["job_id"]
    b = core.submit(TOK["equities"], "equities", spec(4))["job_id"]
    core.cycle()
    for j in (a, b):
        assert core.status(TOK["equities"], j)["state"] == "ADMITTED"
        if not started:
            backend.never_ready(j)
    if started:
        core.cycle()                       # groups ready: runners started ...
        for j in (a, b):
            assert backend.start_count(j) == 1
            backend.stall(j)               # ... but still bringing their workers up
    fx = core.submit(TOK["fx"], "fx", spec(4))["job_id"]
    core.cycle()
    return core, backend, clock, (a, b), fx


def requeues(core, job_id: str) -> list[str]:
    return [e.kind for e in core.state.ledger.events(job_id=job_id, limit=1000) if e.kind.startswith("requeue")]


def test_a_victim_whose_runner_never_started_is_requeued_at_once_free_and_never_started(tmp_path):
    core, backend, clock, (a, b), fx = borrow_then_reclaim(tmp_path, started=False)
    st = {j: core.status(TOK["equities"], j) for j in (a, b)}
    victims = [j for j in (a, b) if st[j]["state"] == "PENDING"]
    assert len(victims) == 1, st
    v = victims[0]
    rec = core.state.active[v]
    assert rec.preempt_deadline is None and rec.attempts == 0 and not rec.placement
    assert "requeued before start: preempted" in rec.reason
    assert backend.was_released(v) and backend.start_count(v) == 0
    core.cycle()                           # fx's job is placed on what the victim held, at once
    assert core.status(TOK["fx"], fx)["state"] in ("ADMITTED", "RUNNING")
    assert backend.start_count(v) == 0


def test_a_victim_lost_before_it_ran_leaves_the_queue_without_its_preemption(tmp_path):
    core, backend, clock, (a, b), fx = borrow_then_reclaim(tmp_path, started=True)
    victims = [j for j in (a, b) if core.state.active[j].preempt_deadline is not None]
    assert len(victims) == 1
    v = victims[0]
    backend.lose(v, "worker died at start")
    core.cycle()
    rec = core.state.active[v]
    assert rec.attempts == 0 and rec.state.value in ("PENDING", "ADMITTED")
    assert requeues(core, v) == ["requeued"]
    # a deadline carried into its next admission would stop it at once (PREEMPTED, never run)
    assert (rec.preempt_deadline, rec.preempt_reason, rec.preempted_for) == (None, "", None)


def test_an_admit_timeout_stays_free_after_charged_lost_starts(tmp_path):
    core, backend, clock, _ = controller_env(tmp_path)
    job = core.submit(TOK["fx"], "fx", spec(1, retries=2))["job_id"]
    core.cycle()
    for _ in range(4):                     # 3 free lost starts, the 4th charged
        core.cycle()
        backend.lose(job, "worker died at start")
        core.cycle()
        clock.advance(core.cordon_s + 1)
    st = core.status(TOK["fx"], job)
    assert (st["attempts"], st["state"]) == (1, "ADMITTED")
    assert core.state.active[job].info["lost_starts"] == 4
    backend.never_ready(job)               # this admission's group never comes up
    starts = backend.start_count(job)
    clock.advance(core.admit_timeout_s + 1)
    core.cycle()
    assert backend.start_count(job) == starts
    rec = core.state.active[job]
    assert rec.attempts == 1 and requeues(core, job)[-1] == "requeued"
    last = [e for e in core.state.ledger.events(job_id=job, limit=1000) if e.kind == "requeued"][-1]
    assert "not started within" in last.reason
    assert rec.info["lost_starts"] == 4    # not counted: no runner was started


def test_a_job_readopted_as_running_is_dated_from_its_admission_not_the_restart(tmp_path):
    core, backend, clock, ledger = controller_env(tmp_path)
    job = core.submit(TOK["fx"], "fx", spec(1, name="train"))["job_id"]
    core.cycle()                           # admitted
    core.cycle()                           # group ready: its runner started
    started = clock()
    assert backend.start_count(job) == 1 and core.status(TOK["fx"], job)["state"] == "ADMITTED"
    ledger.close()                         # the controller dies before it sees it running
    clock.advance(3600)
    again = ControllerCore(config(), SqliteLedger(tmp_path / "ledger.db"), backend, clock=clock)
    again.recover()
    rec = again.state.active[job]
    assert rec.state.value == "RUNNING" and rec.started_at is not None
    assert rec.started_at <= started       # not the restart's time: the hour it ran counts
    assert again.state.work_at_stake_s(rec) >= 3600


def test_a_growth_turned_shrink_gives_back_the_new_workers_at_once(tmp_path):
    core, backend, clock, _, ledger = make(tmp_path)
    toks = DTOK
    for d, g in (("equities", 3), ("risk", 4), ("fx", 4)):
        core.submit(toks[d], d, gang_spec(g, workers="per_gpu"))
    blocked = core.submit(toks["fx"], "fx", gang_spec(1))["job_id"]      # fx may not borrow: it waits
    gang = core.submit(toks["quant"], "quant", gang_spec(2, workers=(1, 2)))["job_id"]
    for _ in range(3):
        core.cycle()
    assert core.status(toks["quant"], gang)["state"] == "RUNNING"
    core.cancel(toks["fx"], blocked)
    core.cycle()
    st = core.status(toks["quant"], gang)
    assert (st["info"]["workers"], st["info"]["resize_to"]) == (2, 2)             # growing
    (new_island, _), = st["info"]["extra"]
    core.submit(toks["fx"], "fx", gang_spec(1))    # work waits again, inside the growth's grace
    core.cycle()
    st = core.status(toks["quant"], gang)
    assert (st["info"]["resize_to"], st["info"]["workers"], st["info"].get("extra") or []) == (1, 1, [])
    assert st["gpus"] == 1
    backend.unavailable[new_island] = 4.0          # the never-used island goes: the gang is fine
    core.cycle()
    st = core.status(toks["quant"], gang)
    assert st["state"] != "FAILED", st["reason"]


def test_a_stop_is_asked_only_once_the_ledger_knows_why(tmp_path):
    """A controller dying between asking a stop and recording it would, after its restart, take
    the job's return at its checkpoint for its end (SUCCEEDED with a partial result)."""
    core, backend, clock, ledger = controller_env(tmp_path)
    seen: list[tuple[str, float | None]] = []
    ask = backend.request_stop

    def request_stop(key: str) -> None:
        row = ledger.get_job(key.split("~")[0])
        seen.append((key, row.preempt_deadline if row else None))
        ask(key)

    backend.request_stop = request_stop      # type: ignore[method-assign]
    a = core.submit(TOK["equities"], "equities", spec(4))["job_id"]
    b = core.submit(TOK["equities"], "equities", spec(4))["job_id"]
    for _ in range(3):
        core.cycle()
    assert {core.status(TOK["equities"], j)["state"] for j in (a, b)} == {"RUNNING"}
    core.submit(TOK["fx"], "fx", spec(4))
    core.cycle()
    assert len(seen) == 1 and seen[0][1] is not None, seen


def test_a_group_readopted_after_a_long_restart_gets_a_fresh_admit_timeout(tmp_path):
    core, backend, clock, ledger = controller_env(tmp_path)
    job = core.submit(TOK["fx"], "fx", spec(1))["job_id"]
    core.cycle()
    backend.never_ready(job)
    ledger.close()
    clock.advance(core.admit_timeout_s + 60)     # the controller was down longer than the timeout
    again = ControllerCore(config(), SqliteLedger(tmp_path / "ledger.db"), backend, clock=clock)
    assert job in again.recover()["adopted"]
    again.cycle()
    rec = again.state.active[job]
    assert rec.state.value == "ADMITTED" and not requeues(again, job)
    backend._ready.add(rec.key)                  # its group comes up: it starts
    again.cycle()
    assert backend.start_count(job) == 1


def test_an_impostor_the_backend_killed_is_audited_on_the_next_cycle(tmp_path):
    core, backend, clock, ledger = controller_env(tmp_path)
    job = core.submit(TOK["risk"], "risk", spec(1))["job_id"]
    found = [{"key": f"{job}~1", "job_id": job, "name": f"job-{job}~1-0123456789ab", "namespace": "rayfin-desk-risk",
              "actor_id": "ab" * 14, "why": "a wrong answer to the challenge"}]
    backend.take_impostors = lambda: [found.pop()] if found else []    # type: ignore[attr-defined]
    core.cycle()
    core.cycle()
    (e,) = [e for e in ledger.events(job_id=job, limit=100) if e.kind == "runner_impostor"]
    assert e.desk == "risk" and e.reason_code == "impostor" and "without the job's secret" in e.reason
    assert e.data["actor_id"] == "ab" * 14
