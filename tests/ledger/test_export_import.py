"""`rayfin ledger export` / `import` move a live ledger between SQLite and PostgreSQL unchanged."""
from __future__ import annotations

import pytest

from rayfin.cli import main
from rayfin.controller.ledger import JobRecord, SqliteLedger
from rayfin.controller.ledger_io import read_snapshot
from rayfin.controller.ledger_pg import PostgresLedger
from rayfin.errors import LedgerError


def fill(led) -> None:
    for i, (desk, kind, state) in enumerate([("fx", "callable", "SUCCEEDED"), ("risk", "entrypoint", "RUNNING"),
                                             ("rates", "serving", "RUNNING"), ("fx", "callable", "PENDING")]):
        job = JobRecord(job_id=f"{desk}-{i:04x}", desk=desk, name=f"job {i} \u00e9", kind=kind, gpus=1.5 + i,
                        priority=i % 3, comm="allreduce", state=state, submitted_at=100.0 + i, max_retries=2,
                        attempts=i % 2, placement=((f"n{i}-i0", 1.0), (f"n{i}-i1", 0.5 + i)),
                        payload=bytes(range(256)) * (i + 1), result=b"\x00" if state == "SUCCEEDED" else None,
                        info={"gen": i, "entrypoint": "python -m jobs.var_mc", "env": {"A": "1"}})
        led.put_job(job, ("submitted", f"{job.gpus:g} GPUs"), ts=100.0 + i)
    led.record(200.0, "", "fx", "refused", "", "over quota", {"gpus": 64})
    led.put_kv("autoscale_state", b'{"pools": {}}')


def test_sqlite_to_postgres_and_back_through_the_cli(tmp_path, postgres_server, monkeypatch, capsys):
    src_path = tmp_path / "src.db"
    src = SqliteLedger(src_path)
    fill(src)
    before = src.snapshot()
    src.close()
    monkeypatch.setenv("RAYFIN_TEST_PG_PASSWORD", postgres_server.password)
    pg_url = postgres_server.create_database("roundtrip")
    pg = ["--ledger", pg_url, "--password-env", "RAYFIN_TEST_PG_PASSWORD"]

    assert main(["ledger", "export", str(tmp_path / "a.jsonl"), "--ledger", str(src_path)]) == 0
    assert main(["ledger", "import", str(tmp_path / "a.jsonl"), *pg]) == 0
    assert main(["ledger", "export", str(tmp_path / "b.jsonl"), *pg]) == 0
    assert main(["ledger", "import", str(tmp_path / "b.jsonl"), "--ledger", str(tmp_path / "back.db")]) == 0
    out = capsys.readouterr().out
    assert "imported from" in out and "4 jobs, 5 events, 1 kv entries" in out

    in_pg = PostgresLedger(pg_url, password=postgres_server.password)
    assert in_pg.snapshot() == before          # every field, blob, event number and kv entry
    # the imported ledger goes on as a ledger: new events number after the imported ones
    in_pg.record(300.0, "", "", "controller_recovered", "", "")
    assert in_pg.events(since=300.0)[0].seq > before.events[-1].seq
    in_pg.close()
    back = SqliteLedger(tmp_path / "back.db")
    assert back.snapshot() == before
    assert read_snapshot(tmp_path / "a.jsonl") == read_snapshot(tmp_path / "b.jsonl") == before
    # a second import into the same ledger is refused, not merged
    assert main(["ledger", "import", str(tmp_path / "a.jsonl"), "--ledger", str(tmp_path / "back.db")]) == 1
    assert "already holds 4 jobs" in capsys.readouterr().err


def test_a_truncated_export_is_refused(tmp_path):
    led = SqliteLedger(tmp_path / "l.db")
    fill(led)
    assert main(["ledger", "export", str(tmp_path / "x.jsonl"), "--ledger", str(tmp_path / "l.db")]) == 0
    text = (tmp_path / "x.jsonl").read_text().splitlines()
    (tmp_path / "cut.jsonl").write_text("\n".join(text[:3]) + "\n")
    with pytest.raises(LedgerError, match="incomplete"):
        read_snapshot(tmp_path / "cut.jsonl")
    target = SqliteLedger(tmp_path / "t.db")
    assert main(["ledger", "import", str(tmp_path / "cut.jsonl"), "--ledger", str(tmp_path / "t.db")]) == 1
    assert target.jobs() == []


def test_a_password_in_the_ledger_url_is_a_config_error(capsys):
    assert main(["ledger", "export", "x.jsonl", "--ledger", "postgresql://rayfin:secret@db:5432/rayfin"]) == 2
    err = capsys.readouterr().err
    assert "controller.ledger" in err and "must not contain a password" in err and "secret" not in err


def test_serving_reservations_and_entrypoint_text_travel_in_an_export(tmp_path):
    from rayfin.controller.ledger_io import export_ledger, import_ledger
    from rayfin.controller.records import ServingReservation

    src = SqliteLedger(tmp_path / "src.db")
    src.put_job(JobRecord(job_id="fx-0001", desk="fx", name="cmd", kind="entrypoint", gpus=1, priority=1, comm="none",
                          state="PENDING", submitted_at=1.0, payload="python -m jobs.var_mc --paths 10"),
                ("submitted", "1 GPUs"))
    src.put_serving(ServingReservation("pricer", "fx", 2, 0.5, "n0-i0", 2.0, "fits"), ("serving_reserved", "fits"), 2.0)
    snap = export_ledger(src, tmp_path / "x.jsonl")
    assert read_snapshot(tmp_path / "x.jsonl") == snap
    dst = SqliteLedger(tmp_path / "dst.db")
    import_ledger(dst, tmp_path / "x.jsonl")
    assert dst.snapshot() == snap
    assert dst.get_job("fx-0001").payload == "python -m jobs.var_mc --paths 10"
    assert [r.model for r in dst.serving()] == ["pricer"]


def test_an_export_from_before_serving_and_codes_loads(tmp_path):
    # version 1 file of schema version 2: no serving lines, no counts for them, events without codes
    import json

    lines = [{"format": "rayfin-ledger", "version": 1, "schema_version": 2, "exported_at": 0, "source": "old"},
             {"job": {"job_id": "serve-pricer", "desk": "fx", "name": "pricer", "kind": "serving", "gpus": 1.0,
                      "priority": 2, "comm": "none", "state": "RUNNING", "submitted_at": 1.0, "started_at": 1.0,
                      "placement": [["n0-i0", 1.0]], "payload": None, "result": None, "reason": "fits",
                      "info": {"replicas": 2, "gpus_per_replica": 0.5}}},
             {"event": {"seq": 1, "ts": 1.0, "job_id": "serve-pricer", "desk": "fx", "kind": "serving_reserved",
                        "state": "RUNNING", "reason": "fits", "data": {}}},
             {"end": {"jobs": 1, "events": 1, "kv": 0}}]
    (tmp_path / "old.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    led = SqliteLedger(tmp_path / "l.db")
    assert main(["ledger", "import", str(tmp_path / "old.jsonl"), "--ledger", str(tmp_path / "l.db")]) == 0
    assert led.jobs() == [] and [(r.model, r.gpus) for r in led.serving()] == [("pricer", 1.0)]
    assert led.events()[0].reason_code == ""
