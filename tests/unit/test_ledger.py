import sqlite3

import pytest

from rayfin.controller.ledger import JobRecord, SqliteLedger


def rec(job_id="fx-1", state="PENDING", **kw):
    return JobRecord(job_id=job_id, desk="fx", name="n", kind="callable", gpus=2, priority=1, comm="none",
                     state=state, submitted_at=10.0, payload=b"p", **kw)


def test_survives_reopen_and_keeps_payload(tmp_path):
    path = tmp_path / "l.db"
    led = SqliteLedger(path)
    led.put_job(rec(placement=(("n0-i0", 2.0),)), ("submitted", "2 GPUs"))
    led.close()
    again = SqliteLedger(path)
    job = again.get_job("fx-1")
    assert job.payload == b"p" and job.placement == (("n0-i0", 2.0),) and job.state == "PENDING"
    assert [e.kind for e in again.events(job_id="fx-1")] == ["submitted"]


def test_wal_mode(tmp_path):
    led = SqliteLedger(tmp_path / "l.db")
    assert led._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_events_are_append_only(tmp_path):
    led = SqliteLedger(tmp_path / "l.db")
    led.record(1.0, "fx-1", "fx", "admitted", "ADMITTED", "fits")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        led._db.execute("UPDATE events SET reason='edited'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        led._db.execute("DELETE FROM events")


def test_events_query_by_desk_and_time(tmp_path):
    led = SqliteLedger(tmp_path / "l.db")
    for t, desk in [(1, "fx"), (2, "risk"), (3, "fx"), (4, "fx")]:
        led.record(float(t), f"{desk}-{t}", desk, "admitted", "ADMITTED", "ok")
    assert [e.ts for e in led.events(desk="fx", since=2, until=3.5)] == [3.0]
    assert len(led.events(desk="risk")) == 1


def test_jobs_filter(tmp_path):
    led = SqliteLedger(tmp_path / "l.db")
    led.put_job(rec("fx-1"))
    led.put_job(rec("fx-2", state="SUCCEEDED"))
    assert [j.job_id for j in led.jobs(states=["PENDING"])] == ["fx-1"]
    assert len(led.jobs(desk="fx")) == 2 and led.jobs(desk="risk") == []
