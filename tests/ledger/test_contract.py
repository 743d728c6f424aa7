"""One contract, two ledgers: every test runs on SQLite and on a real PostgreSQL."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from rayfin.controller.ledger import SNAPSHOT_TABLES, Event, JobRecord, LedgerSnapshot
from rayfin.controller.migrations import latest_version
from rayfin.errors import LedgerError


def rec(job_id="fx-1", state="PENDING", desk="fx", submitted_at=10.0, **kw):
    return JobRecord(job_id=job_id, desk=desk, name="n", kind=kw.pop("kind", "callable"), gpus=2, priority=1,
                     comm="none", state=state, submitted_at=submitted_at, payload=b"p", **kw)


FULL = rec(max_retries=3, attempts=1, reason="fits on n0-i0", started_at=11.5, finished_at=None,
           placement=(("n0-i0", 2.0), ("n1-i1", 0.5)), preempt_deadline=40.25, result=b"\x00\xffres",
           error="", info={"gen": 2, "nested": {"a": [1, 2.5, "x"]}, "ok": True, "none": None},
           borrowed=1.5, lenders=(("equities", 1.0), ("(unowned)", 0.5)))


def test_a_job_reads_back_field_for_field(ledger):
    ledger.put_job(FULL)
    assert ledger.get_job("fx-1") == FULL
    assert ledger.get_job("nope") is None


def test_put_job_upserts_and_appends_its_event_in_one_go(ledger):
    ledger.put_job(rec(), ("submitted", "2 GPUs"))
    ledger.put_job(rec(state="RUNNING", started_at=12.0), ("started", "on n0-i0"))
    ledger.put_job(rec(state="SUCCEEDED", started_at=12.0, finished_at=15.0), ("finished", "ok"), ts=99.0)
    assert ledger.get_job("fx-1").state == "SUCCEEDED"
    assert len(ledger.jobs()) == 1
    evs = ledger.events(job_id="fx-1")
    # the event time: ts when given, else finished_at, started_at, submitted_at (first set)
    assert [(e.kind, e.state, e.ts) for e in evs] == [("submitted", "PENDING", 10.0), ("started", "RUNNING", 12.0),
                                                       ("finished", "SUCCEEDED", 99.0)]
    assert evs[0].seq < evs[1].seq < evs[2].seq
    # a job holding GPUs (ADMITTED / RUNNING) also names who lent its borrowed ones (chargeback)
    assert evs[1].data == {"gpus": 2, "placement": [], "attempts": 0, "lenders": []}
    assert evs[0].data == evs[2].data == {"gpus": 2, "placement": [], "attempts": 0}
    ledger.put_job(rec(job_id="fx-2", state="ADMITTED", borrowed=1.0, lenders=(("rates", 1.0),)), ("admitted", "x"))
    assert ledger.events(job_id="fx-2")[0].data["lenders"] == [["rates", 1.0]]


def test_survives_reopen(backend):
    led = backend.new()
    led.put_job(FULL, ("submitted", "x"))
    led.put_kv("k", b"v")
    led.close()
    again = backend.reopen()
    assert again.get_job("fx-1") == FULL
    assert [e.kind for e in again.events()] == ["submitted"] and again.get_kv("k") == b"v"
    assert again.schema_version == latest_version(backend.name)


def test_jobs_filters_order_and_blobs(ledger):
    # ordered by submission time, then id bytewise ("fx-B" < "fx-a"), whatever the DB's locale
    ledger.put_job(rec("fx-a", submitted_at=5.0))
    ledger.put_job(rec("fx-B", submitted_at=5.0, state="RUNNING"))
    ledger.put_job(rec("fx-0", submitted_at=7.0, state="SUCCEEDED"))
    ledger.put_job(rec("risk-1", desk="risk", submitted_at=1.0))
    assert [j.job_id for j in ledger.jobs()] == ["risk-1", "fx-B", "fx-a", "fx-0"]
    assert [j.job_id for j in ledger.jobs(desk="fx")] == ["fx-B", "fx-a", "fx-0"]
    assert [j.job_id for j in ledger.jobs(states=["PENDING", "RUNNING"])] == ["risk-1", "fx-B", "fx-a"]
    assert ledger.jobs(states=[]) == [] and ledger.jobs(desk="equities") == []
    assert [j.job_id for j in ledger.jobs(limit=2)] == ["risk-1", "fx-B"]
    listed = ledger.jobs(desk="fx", states=["PENDING"], blobs=False)
    assert [(j.job_id, j.payload, j.result) for j in listed] == [("fx-a", None, None)]
    assert ledger.jobs(desk="fx", states=["PENDING"])[0].payload == b"p"


def test_counts_by_desk_and_state(ledger):
    for i, (desk, state, kind) in enumerate([("fx", "SUCCEEDED", "callable"), ("fx", "SUCCEEDED", "entrypoint"),
                                             ("fx", "FAILED", "callable"), ("risk", "SUCCEEDED", "callable"),
                                             ("risk", "SUCCEEDED", "serving"), ("fx", "PENDING", "callable")]):
        ledger.put_job(rec(f"{desk}-{i}", desk=desk, state=state, kind=kind))
    assert ledger.counts(["SUCCEEDED", "FAILED"]) == {"fx": {"SUCCEEDED": 2, "FAILED": 1}, "risk": {"SUCCEEDED": 2}}
    assert ledger.counts(["SUCCEEDED"], exclude_kind="serving") == {"fx": {"SUCCEEDED": 2}, "risk": {"SUCCEEDED": 1}}
    assert ledger.counts([]) == {}


def test_events_query_by_desk_job_time_kind_and_limit(ledger):
    for t, desk, kind in [(1, "fx", "admitted"), (2, "risk", "admitted"), (3, "fx", "refused"), (4, "fx", "admitted")]:
        ledger.record(float(t), f"{desk}-{t}", desk, kind, "ADMITTED", "ok", {"t": t})
    ledger.record(5.0, "", "", "controller_recovered", "", "{}", None)
    assert [e.ts for e in ledger.events(desk="fx", since=2, until=3.5)] == [3.0]
    assert [e.ts for e in ledger.events(desk="fx", kinds=["admitted"])] == [1.0, 4.0]
    assert ledger.events(kinds=[]) == []
    assert [e.job_id for e in ledger.events(job_id="risk-2")] == ["risk-2"]
    assert [e.ts for e in ledger.events(limit=2)] == [1.0, 2.0]
    last = ledger.events(since=5.0)[0]
    assert (last.job_id, last.desk, last.state, last.data) == ("", "", "", {})
    assert ledger.events(desk="risk")[0] == Event(ledger.events(desk="risk")[0].seq, 2.0, "risk-2", "risk", "admitted",
                                                  "ADMITTED", "ok", {"t": 2})


def test_kv_overwrites_and_keeps_bytes(ledger):
    assert ledger.get_kv("autoscale_state") is None
    ledger.put_kv("autoscale_state", b"\x00one")
    ledger.put_kv("autoscale_state", b"\x00two\xff")
    assert ledger.get_kv("autoscale_state") == b"\x00two\xff"


@pytest.mark.parametrize("sql", ["UPDATE events SET reason='edited'", "DELETE FROM events"])
def test_the_database_refuses_to_edit_the_audit_trail(backend, sql):
    led = backend.new()
    led.record(1.0, "fx-1", "fx", "admitted", "ADMITTED", "fits")
    with pytest.raises(Exception, match="append-only"):
        backend.tamper(sql)    # from another client: the database itself says no
    assert [e.reason for e in led.events()] == ["fits"]


def test_postgres_refuses_truncate_of_the_audit_trail(postgres_server):
    # TRUNCATE exists only in PostgreSQL (and skips row triggers): a statement trigger refuses it.
    import psycopg

    from rayfin.controller.ledger_pg import PostgresLedger

    url = postgres_server.create_database("truncate_check")
    led = PostgresLedger(url, password=postgres_server.password)
    led.record(1.0, "fx-1", "fx", "admitted", "ADMITTED", "fits")
    with psycopg.connect(url, password=postgres_server.password, autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="append-only"):
            conn.execute("TRUNCATE events")
    assert len(led.events()) == 1
    led.close()


def test_concurrent_writers_lose_nothing(ledger):
    def write(t: int) -> None:
        for i in range(25):
            ledger.put_job(rec(f"fx-{t}-{i}", submitted_at=float(i)), ("submitted", f"writer {t}"))
            ledger.get_job(f"fx-{t}-{i}")

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(ledger.jobs(blobs=False)) == 200
    assert len(ledger.events(kinds=["submitted"], limit=10_000)) == 200


def test_snapshot_then_restore_into_an_empty_ledger_is_identical(backend):
    src = backend.new()
    src.put_job(FULL, ("submitted", "x"))
    src.put_job(rec("risk-1", desk="risk", kind="serving", state="RUNNING"), ("serving_reserved", "2 replicas"), ts=3.0)
    src.record(4.0, "", "", "controller_recovered", "", "{}", {"adopted": 1})
    src.put_kv("autoscale_state", b"{}")
    src.put_results("fx-1", [b"r0", None, b"\x00r2"])
    src.append_logs("fx-1", [(0, "hello\n"), (2, "from rank 2\n")], 6.0, 1 << 20)
    snap = src.snapshot()
    assert isinstance(snap, LedgerSnapshot) and snap.schema_version == latest_version(backend.name)
    assert (len(snap.jobs), len(snap.events), len(snap.kv), len(snap.results), len(snap.logs)) == (2, 3, 1, 3, 2)
    dst = backend.new()
    dst.restore(snap)
    assert dst.snapshot() == snap
    # event and log numbers are kept, and new ones number on from them
    dst.record(5.0, "", "", "later", "", "")
    assert dst.events()[-1].seq > snap.events[-1].seq
    dst.append_logs("fx-1", [(1, "after\n")], 7.0, 1 << 20)
    assert [ln.text for ln in dst.logs("fx-1")] == ["hello", "from rank 2", "after"]


def test_gang_results_in_rank_order_and_replaced_whole(ledger):
    ledger.put_results("fx-1", [b"a", b"b", None])
    assert ledger.results("fx-1") == [b"a", b"b", None]
    ledger.put_results("fx-1", [b"only"])          # a retried gang's results replace the old ones
    assert ledger.results("fx-1") == [b"only"]
    assert ledger.results("nope") == []


def test_logs_by_rank_tail_and_bounded_per_rank(ledger):
    ledger.append_logs("fx-1", [(0, "a1\na2\n"), (1, "b1\n")], 1.0, 100)
    ledger.append_logs("fx-1", [(0, "a3\n")], 2.0, 100)
    assert [(ln.rank, ln.text) for ln in ledger.logs("fx-1")] == [(0, "a1"), (0, "a2"), (1, "b1"), (0, "a3")]
    assert [ln.text for ln in ledger.logs("fx-1", rank=0, tail=2)] == ["a2", "a3"]
    assert ledger.logs("fx-1", tail=0) == [] and ledger.logs("other") == []
    for i in range(30):                             # 30 x 10 bytes into a 100-byte bound
        ledger.append_logs("fx-1", [(1, f"line {i:03d}\n")], 3.0 + i, 100)
    kept = ledger.logs("fx-1", rank=1)
    assert sum(len(ln.text) + 1 for ln in kept) <= 100 and kept[-1].text == "line 029"
    assert [ln.text for ln in ledger.logs("fx-1", rank=0)] == ["a1", "a2", "a3"]   # another rank untouched


def test_restore_refuses_a_ledger_that_is_not_empty(backend):
    src = backend.new()
    src.put_job(FULL, ("submitted", "x"))
    dst = backend.new()
    dst.record(1.0, "", "", "something", "", "")
    with pytest.raises(LedgerError, match="already holds 1 events"):
        dst.restore(src.snapshot())
    assert dst.get_job("fx-1") is None


def test_a_snapshot_is_one_instant_under_concurrent_writes(ledger):
    # put_job writes a job and its event in one transaction: a consistent snapshot never has
    # one without the other, however the writes interleave with the read.
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            ledger.put_job(rec(f"fx-{i}", submitted_at=float(i)), ("submitted", "x"))
            i += 1

    th = threading.Thread(target=writer)
    th.start()
    try:
        snaps = [ledger.snapshot() for _ in range(5)]
    finally:
        stop.set()
        th.join()
    for snap in snaps:
        assert {j.job_id for j in snap.jobs} == {e.job_id for e in snap.events}
    assert len(snaps[-1].jobs) > 0


def test_every_table_travels_in_a_snapshot(ledger):
    # A migration that adds a table must add it to the snapshot (and to export/import) too.
    assert ledger.tables() == set(SNAPSHOT_TABLES)


# ---- reason codes and serving reservations (schema version 3) ----------------------------
def test_events_carry_the_code_of_their_reason(ledger):
    from rayfin.reasons import ReasonCode

    ledger.put_job(rec(reason_code=ReasonCode.QUEUED), ("submitted", "2 GPUs"))
    ledger.put_job(rec(state="FAILED", reason_code=ReasonCode.NODE_LOST), ("failed", "node n0 lost"))
    ledger.put_job(rec(state="FAILED", reason_code=ReasonCode.NODE_LOST), ("failed", "again", ReasonCode.RUNNER_LOST))
    ledger.record(5.0, "", "", "controller_recovered", "", "{}", None, ReasonCode.RECOVERED)
    ledger.record(6.0, "", "", "note", "", "no code")
    assert [e.reason_code for e in ledger.events()] == ["queued", "node_lost", "runner_lost", "recovered", ""]
    assert ledger.get_job("fx-1").reason_code is ReasonCode.NODE_LOST


def test_serving_reservations_are_their_own_rows(ledger):
    from rayfin.controller.records import ServingReservation
    from rayfin.reasons import ReasonCode

    res = ServingReservation("pricer", "fx", 2, 0.5, "n0-i0", 3.0, "within nominal quota (1/4)")
    ledger.put_serving(res, ("serving_reserved", res.reason), ts=3.0)
    assert ledger.serving() == [res] and res.gpus == 1.0 and ledger.jobs() == []
    bigger = ServingReservation("pricer", "fx", 4, 0.5, "n0-i1", 4.0)
    ledger.put_serving(bigger, ("serving_reserved", "more replicas"), ts=4.0)
    assert ledger.serving() == [bigger]
    ledger.drop_serving("pricer", ("cancelled", "serving deployment released", ReasonCode.SERVING_RELEASED), ts=5.0)
    assert ledger.serving() == []
    evs = ledger.events(job_id="serve-pricer")
    assert [(e.kind, e.desk, e.reason_code) for e in evs] == [("serving_reserved", "fx", "serving_reserved"),
                                                              ("serving_reserved", "fx", "serving_reserved"),
                                                              ("cancelled", "fx", "serving_released")]
    assert evs[0].data["gpus"] == 1.0 and evs[0].data["island"] == "n0-i0"


def test_serving_reservations_travel_in_a_snapshot(backend):
    from rayfin.controller.records import ServingReservation

    src = backend.new()
    res = ServingReservation("scorer", "risk", 1, 0.25, "n1-i0", 7.0, "fits")
    src.put_serving(res, ("serving_reserved", "fits"), ts=7.0)
    snap = src.snapshot()
    assert snap.serving == (res,)
    dst = backend.new()
    dst.restore(snap)
    assert dst.snapshot() == snap and dst.serving() == [res]


def test_a_snapshot_from_before_the_serving_table_moves_its_reservations(backend):
    # An export of schema version 2 held serving reservations as RUNNING jobs of kind "serving".
    old = LedgerSnapshot(2, (rec("serve-pricer", kind="serving", state="RUNNING", started_at=12.0,
                                 placement=(("n0-i0", 1.0),), info={"replicas": 2, "gpus_per_replica": 0.5}),
                             rec("serve-gone", kind="serving", state="CANCELLED"),
                             rec("fx-1")), (), ())
    dst = backend.new()
    dst.restore(old)
    assert [j.job_id for j in dst.jobs()] == ["fx-1"]
    [res] = dst.serving()
    assert (res.model, res.desk, res.replicas, res.gpus_per_replica, res.island, res.reserved_at) == \
        ("n", "fx", 2, 0.5, "n0-i0", 12.0)


def test_control_fields_are_typed_and_load_from_their_stored_keys(ledger):
    from rayfin.controller.records import JobKind
    from rayfin.policy import JobState

    job = rec(state="ADMITTED", generation=3, admitted_at=11.0, borrowed=2.0, preempted_for="fx-9", workers=2,
              dist_backend=None, progress=0.5, info={"node_id": "abc"})
    assert job.state is JobState.ADMITTED and job.kind is JobKind.CALLABLE and job.key == "fx-1~3"
    ledger.put_job(job)
    back = ledger.get_job("fx-1")
    assert back == job and back.info == {"node_id": "abc"}
    # a record as an older rayfin wrote it: control state inside info under its old keys
    legacy = rec("fx-2", info={"gen": 1, "admitted_at": 5.0, "borrowed": 1.0, "workers": 4, "dist_backend": "gloo"})
    assert (legacy.generation, legacy.admitted_at, legacy.borrowed, legacy.workers, legacy.dist_backend,
            legacy.info) == (1, 5.0, 1.0, 4, "gloo", {})
    assert job.public()["info"]["gen"] == 3 and job.public()["state"] == "ADMITTED"


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_version_2_ledger_migrates_its_serving_jobs(dialect, tmp_path, request):
    """A ledger written by rayfin before migration 0003: the serving reservation it held as a
    RUNNING job moves to the serving table, ended ones go (the audit trail keeps them), the
    audit events gain an empty reason code, and batch jobs stay as they were."""
    from rayfin.controller.ledger import JOB_COLUMNS, job_row
    from rayfin.controller.migrations import migrations

    rows = [job_row(rec("serve-pricer", kind="serving", state="RUNNING", started_at=12.0, placement=(("n0-i1", 1.0),),
                        info={"replicas": 2, "gpus_per_replica": 0.5})),
            job_row(rec("serve-old", kind="serving", state="CANCELLED")),
            job_row(rec("fx-1", info={"gen": 2, "workers": 2}))]
    cols = ",".join(JOB_COLUMNS)
    if dialect == "sqlite":
        from rayfin.controller.ledger import SqliteLedger, _statements

        path = tmp_path / "old.db"
        db = sqlite3.connect(path, isolation_level=None)
        for mig in migrations("sqlite")[:2]:
            for stmt in _statements(mig.sql):
                db.execute(stmt)
        db.execute("PRAGMA user_version=2")
        db.executemany(f"INSERT INTO jobs({cols}) VALUES({','.join('?' * len(JOB_COLUMNS))})", rows)
        db.execute("INSERT INTO events(ts, job_id, desk, kind, state, reason, data) "
                   "VALUES(1.0, 'serve-pricer', 'fx', 'serving_reserved', 'RUNNING', 'fits', '{}')")
        db.close()
        led = SqliteLedger(path)
    else:
        import psycopg

        from rayfin.controller.ledger_pg import PostgresLedger

        server = request.getfixturevalue("postgres_server")
        url = server.create_database("version_two")
        marks = ",".join("%s::jsonb" if c in ("placement", "info") else "%s" for c in JOB_COLUMNS)
        with psycopg.connect(url, password=server.password, autocommit=True) as conn:
            conn.execute("CREATE TABLE rayfin_schema_migrations(version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                         "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            for mig in migrations("postgresql")[:2]:
                conn.execute(mig.sql)
                conn.execute("INSERT INTO rayfin_schema_migrations(version, name) VALUES(%s, %s)",
                             (mig.version, mig.name))
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO jobs({cols}) VALUES({marks})", rows)
            conn.execute("INSERT INTO events(ts, job_id, desk, kind, state, reason, data) "
                         "VALUES(1.0, 'serve-pricer', 'fx', 'serving_reserved', 'RUNNING', 'fits', '{}')")
        led = PostgresLedger(url, password=server.password)
    try:
        assert led.schema_version == latest_version(dialect)
        assert [j.job_id for j in led.jobs()] == ["fx-1"]
        assert (led.get_job("fx-1").generation, led.get_job("fx-1").workers) == (2, 2)
        [res] = led.serving()
        assert (res.model, res.desk, res.replicas, res.gpus_per_replica, res.island, res.reserved_at) == \
            ("n", "fx", 2, 0.5, "n0-i1", 12.0)
        assert [(e.kind, e.reason_code) for e in led.events()] == [("serving_reserved", "")]
    finally:
        led.close()
