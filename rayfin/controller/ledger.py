"""Durable ledger: every accepted submission, state change and decision, written before it is
acknowledged. Two backends behind one `Ledger` protocol: SQLite in WAL mode (the embedded
default, `controller.ledger_path`) and PostgreSQL (`controller.ledger: postgresql://...`,
rayfin/controller/ledger_pg.py). Both build their schema from the versioned SQL files in
rayfin/controller/migrations/ and pass one contract suite (tests/ledger).

Tables
    jobs    one row per job (its spec, payload, state, placement, result)
    events  append-only audit trail: every admission, refusal, preemption, state change, with
            its reason text and code; queryable by desk and time. The database refuses UPDATE
            and DELETE.
    serving one row per serving deployment holding GPUs (rayfin.controller.records.ServingReservation)
    kv      small blobs of controller state (e.g. forecaster state)
    results every rank's return value of a gang job (rank 0's is also jobs.result)
    logs    each rank's output, in chunks, bounded per (job, rank) to the newest `max_bytes`
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Union

from rayfin.controller.migrations import migrations
from rayfin.controller.records import (Event, JobKind, JobRecord, LedgerSnapshot, LogLine,  # noqa: F401 (re-export)
                                       ServingReservation)
from rayfin.errors import ConfigError, LedgerError
from rayfin.policy.model import JobState
from rayfin.reasons import ReasonCode, code_of

if TYPE_CHECKING:
    from rayfin.config import ControllerConfig

# The audit event `put_job` appends with the job row: (kind, reason text), with the reason's
# code as a third element when it is not the job's own `reason_code`.
JobEvent = Union[tuple[str, str], tuple[str, str, ReasonCode]]


class Ledger(Protocol):
    """What the controller needs from durable storage. Implementations: `SqliteLedger` (the
    embedded default) and `rayfin.controller.ledger_pg.PostgresLedger`. Both pass the contract
    suite in tests/ledger; a new method goes here, in both, and gets a contract test there."""

    schema_version: int

    def put_job(self, job: JobRecord, event: JobEvent | None = None, ts: float | None = None) -> None: ...
    def get_job(self, job_id: str) -> JobRecord | None: ...
    def jobs(self, *, desk: str | None = None, states: Iterable[str] | None = None,
             limit: int | None = None, blobs: bool = True) -> list[JobRecord]: ...
    def counts(self, states: Iterable[str], exclude_kind: str | None = None) -> dict[str, dict[str, int]]: ...
    def record(self, ts: float, job_id: str, desk: str, kind: str, state: str, reason: str,
               data: dict[str, Any] | None = None, code: ReasonCode | None = None) -> None: ...
    def put_serving(self, res: ServingReservation, event: tuple[str, str], ts: float) -> None: ...
    def drop_serving(self, model: str, event: tuple[str, str, ReasonCode], ts: float) -> None: ...
    def serving(self) -> list[ServingReservation]: ...
    def events(self, *, desk: str | None = None, job_id: str | None = None, since: float | None = None,
               until: float | None = None, kinds: Iterable[str] | None = None,
               limit: int = 1000) -> list[Event]: ...
    def put_kv(self, key: str, value: bytes) -> None: ...
    def get_kv(self, key: str) -> bytes | None: ...
    def put_results(self, job_id: str, results: Iterable[bytes | None]) -> None: ...
    def results(self, job_id: str) -> list[bytes | None]: ...
    def append_logs(self, job_id: str, chunks: Iterable[tuple[int, str]], ts: float, max_bytes: int) -> None: ...
    def logs(self, job_id: str, rank: int | None = None, tail: int | None = None) -> list["LogLine"]: ...
    def snapshot(self) -> "LedgerSnapshot": ...
    def restore(self, snapshot: "LedgerSnapshot") -> None: ...
    def tables(self) -> set[str]: ...
    def close(self) -> None: ...


# The tables a snapshot carries. A contract test checks that every table of the schema is here,
# so a migration that adds a table cannot be forgotten by export/import.
SNAPSHOT_TABLES = ("jobs", "events", "kv", "results", "logs", "serving")
# The schema version that moved serving reservations out of the jobs table (see `upgrade`).
SERVING_TABLE_VERSION = 3


def tail_lines(chunks: Iterable[LogLine], tail: int | None) -> list[LogLine]:
    """Split chunks into lines and keep the last `tail` of them (all when None)."""
    lines = [LogLine(c.rank, c.ts, line) for c in chunks for line in c.text.splitlines()]
    return lines if tail is None else lines[-tail:] if tail > 0 else []


def logs_query(job_id: str, rank: int | None, mark: str) -> tuple[str, list[Any]]:
    q = f"SELECT rank, ts, text FROM logs WHERE job_id={mark}"
    args: list[Any] = [job_id]
    if rank is not None:
        q += f" AND rank={mark}"
        args.append(rank)
    return q + " ORDER BY seq", args


def chunks_to_drop(sizes_newest_first: Iterable[tuple[int, int]], max_bytes: int) -> int | None:
    """Given (seq, length) of one rank's chunks, newest first: the seq at and below which the
    chunks go so the rest fit in `max_bytes` (the newest chunk is always kept), or None."""
    kept = 0
    for k, (seq, n) in enumerate(sizes_newest_first):
        kept += n
        if kept > max_bytes and k > 0:
            return seq
    return None


# -- one row codec and one set of queries for every backend ----------------------------------
JOB_COLUMNS = ("job_id", "desk", "name", "kind", "gpus", "priority", "comm", "state", "submitted_at",
               "max_retries", "attempts", "reason", "started_at", "finished_at", "placement",
               "preempt_deadline", "payload", "result", "error", "info")
EVENT_COLUMNS = ("seq", "ts", "job_id", "desk", "kind", "state", "reason", "data", "reason_code")
SERVING_COLUMNS = ("model", "desk", "replicas", "gpus_per_replica", "island", "reserved_at", "reason", "reason_code")
# Columns `record` and `put_job` write (seq is the database's).
EVENT_INSERT = EVENT_COLUMNS[1:]


def job_row(job: JobRecord) -> tuple[Any, ...]:
    """The values of `JOB_COLUMNS` for a job; the JSON columns as JSON text."""
    return (job.job_id, job.desk, job.name, job.kind, job.gpus, job.priority, job.comm, job.state,
            job.submitted_at, job.max_retries, job.attempts, job.reason, job.started_at, job.finished_at,
            json.dumps([list(p) for p in job.placement]), job.preempt_deadline, job.payload, job.result,
            job.error, json.dumps(job.stored_info(), default=str))


def _json(value: Any, empty: Any) -> Any:
    """A JSON column as read back: text from SQLite, already decoded from PostgreSQL's jsonb."""
    if value is None:
        return empty
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def job_from_row(row: Iterable[Any]) -> JobRecord:
    d = dict(zip(JOB_COLUMNS, row))
    d["placement"] = tuple((str(i), float(g)) for i, g in _json(d["placement"], []))
    d["info"] = _json(d["info"], {})
    d["reason"] = d["reason"] or ""
    d["error"] = d["error"] or ""
    for blob in ("payload", "result"):
        if d[blob] is not None and not isinstance(d[blob], str):
            d[blob] = bytes(d[blob])   # PostgreSQL hands back memoryview; an entrypoint is text
    return JobRecord(**d)


def event_from_row(r: tuple[Any, ...]) -> Event:
    return Event(int(r[0]), float(r[1]), r[2] or "", r[3] or "", r[4], r[5] or "", r[6] or "", _json(r[7], {}),
                 r[8] or "")


def event_row(e: Event) -> tuple[Any, ...]:
    return (e.seq, e.ts, e.job_id, e.desk, e.kind, e.state, e.reason, json.dumps(e.data, default=str),
            e.reason_code)


def event_values(ts: float, job_id: str, desk: str, kind: str, state: str, reason: str,
                 data: dict[str, Any] | None, code: ReasonCode | str | None) -> tuple[Any, ...]:
    """The values of `EVENT_INSERT` for one audit event."""
    code_text = code.value if isinstance(code, ReasonCode) else (code or "")
    return (ts, job_id, desk, kind, state, reason, json.dumps(data or {}, default=str), code_text)


def job_event(job: JobRecord, event: JobEvent, ts: float | None) -> tuple[Any, ...]:
    """The values of `EVENT_INSERT` for the audit event `put_job` appends."""
    kind, reason = event[0], event[1]
    code = event[2] if len(event) > 2 else job.reason_code
    when = ts if ts is not None else (job.finished_at or job.started_at or job.submitted_at)
    data = {"gpus": job.gpus, "placement": job.placement, "attempts": job.attempts}
    if job.state.value in ("ADMITTED", "RUNNING"):   # who lent this admission's borrowed GPUs (chargeback)
        data["lenders"] = [list(x) for x in job.lenders]
    return event_values(when, job.job_id, job.desk, kind, job.state.value, reason, data, code)


def serving_row(r: ServingReservation) -> tuple[Any, ...]:
    return (r.model, r.desk, r.replicas, r.gpus_per_replica, r.island, r.reserved_at, r.reason, r.reason_code.value)


def serving_from_row(r: Iterable[Any]) -> ServingReservation:
    d = dict(zip(SERVING_COLUMNS, r))
    return ServingReservation(str(d["model"]), str(d["desk"]), int(d["replicas"]), float(d["gpus_per_replica"]),
                              str(d["island"]), float(d["reserved_at"]), d["reason"] or "",
                              code_of(d["reason_code"]))


def serving_event(r: ServingReservation | None, model: str, desk: str, event: JobEvent,
                  ts: float) -> tuple[Any, ...]:
    """The audit event of a reservation made or dropped (job id "serve-<model>", as it always was)."""
    code = event[2] if len(event) > 2 else (r.reason_code if r else ReasonCode.SERVING_RELEASED)
    data: dict[str, Any] = {"model": model}
    if r is not None:
        data.update(gpus=r.gpus, replicas=r.replicas, gpus_per_replica=r.gpus_per_replica, island=r.island,
                    lenders=[list(x) for x in r.lenders])
    return event_values(ts, f"serve-{model}", desk, event[0], "", event[1], data, code)


def upgrade(snapshot: LedgerSnapshot) -> LedgerSnapshot:
    """A snapshot from before the serving table, as the current schema holds it: reservations
    that were RUNNING jobs of kind "serving" become serving rows; the others were history and
    live on in the audit trail. Migration 0003 does the same inside a database."""
    if snapshot.schema_version >= SERVING_TABLE_VERSION:
        return snapshot
    jobs, serving = [], list(snapshot.serving)
    for j in snapshot.jobs:
        if j.kind is not JobKind.SERVING:
            jobs.append(j)
        elif j.state is JobState.RUNNING and j.placement:
            replicas = int(j.info.get("replicas", 1))
            per = float(j.info.get("gpus_per_replica", j.gpus / max(1, replicas)))
            serving.append(ServingReservation(j.name, j.desk, replicas, per, j.placement[0][0],
                                              j.started_at or j.submitted_at, j.reason))
    return LedgerSnapshot(snapshot.schema_version, tuple(jobs), snapshot.events, snapshot.kv, snapshot.results,
                          snapshot.logs, tuple(serving))


def jobs_query(desk: str | None, states: Iterable[str] | None, limit: int | None, blobs: bool,
               mark: str) -> tuple[str, list[Any]]:
    """The SELECT of `Ledger.jobs`; `mark` is the driver's placeholder ('?' or '%s')."""
    cols = JOB_COLUMNS if blobs else tuple("NULL" if c in ("payload", "result") else c for c in JOB_COLUMNS)
    q, args = f"SELECT {','.join(cols)} FROM jobs WHERE 1=1", []
    if desk is not None:
        q += f" AND desk={mark}"
        args.append(desk)
    if states is not None:
        st = list(states)
        q += f" AND state IN ({','.join([mark] * len(st))})" if st else " AND 1=0"
        args.extend(st)
    q += " ORDER BY submitted_at, job_id"
    if limit:
        q += f" LIMIT {int(limit)}"
    return q, args


def counts_query(states: Iterable[str], exclude_kind: str | None, mark: str) -> tuple[str, list[Any]]:
    st = list(states)
    q = f"SELECT desk, state, COUNT(*) FROM jobs WHERE state IN ({','.join([mark] * len(st))})" if st \
        else "SELECT desk, state, COUNT(*) FROM jobs WHERE 1=0"
    args: list[Any] = list(st)
    if exclude_kind is not None:
        q += f" AND kind != {mark}"
        args.append(exclude_kind)
    return q + " GROUP BY desk, state", args


def counts_table(rows: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for desk, state, n in rows:
        out.setdefault(desk, {})[state] = int(n)
    return out


def events_query(desk: str | None, job_id: str | None, since: float | None, until: float | None,
                 kinds: Iterable[str] | None, limit: int, mark: str) -> tuple[str, list[Any]]:
    q, args = f"SELECT {','.join(EVENT_COLUMNS)} FROM events WHERE 1=1", []
    for col, op, val in (("desk", "=", desk), ("job_id", "=", job_id), ("ts", ">=", since), ("ts", "<=", until)):
        if val is not None:
            q += f" AND {col}{op}{mark}"
            args.append(val)
    if kinds is not None:
        ks = list(kinds)
        q += f" AND kind IN ({','.join([mark] * len(ks))})" if ks else " AND 1=0"
        args.extend(ks)
    return q + f" ORDER BY seq LIMIT {int(limit)}", args


def require_empty(held: dict[str, int], where: str) -> None:
    """A snapshot is restored only into an empty ledger: the audit trail cannot be merged into
    or overwritten (it is append-only), and a half-merged job table would be neither ledger."""
    if any(held.values()):
        what = ", ".join(f"{n} {t}" for t, n in held.items() if n)
        raise LedgerError(f"cannot import into {where}: it already holds {what}; to fix: import into a new, "
                          "empty ledger", ledger=where, reason="not empty")


def require_schema(snapshot: LedgerSnapshot, version: int, where: str) -> None:
    if snapshot.schema_version > version:
        raise LedgerError(f"the snapshot has schema version {snapshot.schema_version} but {where} is at "
                          f"{version}; to fix: import with the rayfin release that exported it or a newer one",
                          ledger=where, reason="schema too new")


_INSERT_EVENT = f"INSERT INTO events({','.join(EVENT_INSERT)}) VALUES({','.join('?' * len(EVENT_INSERT))})"


class SqliteLedger:
    """SQLite (WAL, synchronous=FULL) ledger. Thread-safe: one connection behind a lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = str(path)
        if p != ":memory:":
            p = os.path.expanduser(p)
            Path(p).parent.mkdir(parents=True, exist_ok=True)
        self.path = p
        self._lock = threading.Lock()
        self._db = sqlite3.connect(p, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss: acknowledged == durable
        self.schema_version = self._migrate()

    def _migrate(self) -> int:
        """Apply the migrations above `PRAGMA user_version`, each with its version bump in one
        transaction (an immediate one, so two processes opening one file do not both migrate)."""
        with self._lock:
            for mig in migrations("sqlite"):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    if self._db.execute("PRAGMA user_version").fetchone()[0] >= mig.version:
                        self._db.execute("COMMIT")
                        continue
                    # executescript would commit first; run the file statement by statement instead.
                    for stmt in _statements(mig.sql):
                        self._db.execute(stmt)
                    self._db.execute(f"PRAGMA user_version={mig.version}")
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the connection's lock: committed at the end, rolled back
        if anything in it raised."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- jobs --
    def put_job(self, job: JobRecord, event: JobEvent | None = None, ts: float | None = None) -> None:
        """Upsert a job; with `event=(kind, reason)` also append an audit event, in one transaction."""
        with self._write() as db:
            db.execute(f"INSERT OR REPLACE INTO jobs({','.join(JOB_COLUMNS)}) "
                       f"VALUES({','.join('?' * len(JOB_COLUMNS))})", job_row(job))
            if event is not None:
                db.execute(_INSERT_EVENT, job_event(job, event, ts))

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {','.join(JOB_COLUMNS)} FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return job_from_row(row) if row else None

    def jobs(self, *, desk: str | None = None, states: Iterable[str] | None = None,
             limit: int | None = None, blobs: bool = True) -> list[JobRecord]:
        """Jobs in submission order. `blobs=False` leaves payload and result out (listings)."""
        q, args = jobs_query(desk, states, limit, blobs, "?")
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        return [job_from_row(r) for r in rows]

    def counts(self, states: Iterable[str], exclude_kind: str | None = None) -> dict[str, dict[str, int]]:
        """{desk: {state: n}} for the given states, counted by the database."""
        q, args = counts_query(states, exclude_kind, "?")
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        return counts_table(rows)

    # -- audit events --
    def record(self, ts: float, job_id: str, desk: str, kind: str, state: str, reason: str,
               data: dict[str, Any] | None = None, code: ReasonCode | None = None) -> None:
        with self._lock:
            self._db.execute(_INSERT_EVENT, event_values(ts, job_id, desk, kind, state, reason, data, code))

    def events(self, *, desk: str | None = None, job_id: str | None = None, since: float | None = None,
               until: float | None = None, kinds: Iterable[str] | None = None, limit: int = 1000) -> list[Event]:
        q, args = events_query(desk, job_id, since, until, kinds, limit, "?")
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        return [event_from_row(r) for r in rows]

    # -- serving reservations --
    def put_serving(self, res: ServingReservation, event: tuple[str, str], ts: float) -> None:
        """Upsert a reservation and append its audit event, in one transaction."""
        with self._write() as db:
            db.execute(f"INSERT OR REPLACE INTO serving({','.join(SERVING_COLUMNS)}) "
                       f"VALUES({','.join('?' * len(SERVING_COLUMNS))})", serving_row(res))
            db.execute(_INSERT_EVENT, serving_event(res, res.model, res.desk, event, ts))

    def drop_serving(self, model: str, event: tuple[str, str, ReasonCode], ts: float) -> None:
        """Remove a reservation (if held) and append its audit event, in one transaction."""
        with self._write() as db:
            row = db.execute("SELECT desk FROM serving WHERE model=?", (model,)).fetchone()
            db.execute("DELETE FROM serving WHERE model=?", (model,))
            db.execute(_INSERT_EVENT, serving_event(None, model, row[0] if row else "", event, ts))

    def serving(self) -> list[ServingReservation]:
        with self._lock:
            rows = self._db.execute(f"SELECT {','.join(SERVING_COLUMNS)} FROM serving ORDER BY model").fetchall()
        return [serving_from_row(r) for r in rows]

    # -- kv --
    def put_kv(self, key: str, value: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv(key, value) VALUES(?, ?)", (key, value))

    def get_kv(self, key: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    # -- gang outputs --
    def put_results(self, job_id: str, results: Iterable[bytes | None]) -> None:
        rows = [(job_id, r, v) for r, v in enumerate(results)]
        with self._write() as db:
            db.execute("DELETE FROM results WHERE job_id=?", (job_id,))
            db.executemany("INSERT INTO results(job_id, rank, value) VALUES(?,?,?)", rows)

    def results(self, job_id: str) -> list[bytes | None]:
        with self._lock:
            rows = self._db.execute("SELECT value FROM results WHERE job_id=? ORDER BY rank", (job_id,)).fetchall()
        return [None if r[0] is None else bytes(r[0]) for r in rows]

    def append_logs(self, job_id: str, chunks: Iterable[tuple[int, str]], ts: float, max_bytes: int) -> None:
        """Append output chunks; then drop each touched rank's oldest chunks beyond `max_bytes`."""
        rows = [(job_id, int(r), ts, t) for r, t in chunks if t]
        if not rows:
            return
        with self._write() as db:
            db.executemany("INSERT INTO logs(job_id, rank, ts, text) VALUES(?,?,?,?)", rows)
            for rank in {r[1] for r in rows}:
                sizes = db.execute("SELECT seq, LENGTH(text) FROM logs WHERE job_id=? AND rank=? "
                                   "ORDER BY seq DESC", (job_id, rank)).fetchall()
                cut = chunks_to_drop(sizes, max_bytes)
                if cut is not None:
                    db.execute("DELETE FROM logs WHERE job_id=? AND rank=? AND seq<=?", (job_id, rank, cut))

    def logs(self, job_id: str, rank: int | None = None, tail: int | None = None) -> list[LogLine]:
        q, args = logs_query(job_id, rank, "?")
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        return tail_lines((LogLine(r[0], r[1], r[2]) for r in rows), tail)

    # -- backup and restore --
    def snapshot(self) -> LedgerSnapshot:
        """All rows as of one instant: one read transaction (WAL keeps writers going meanwhile)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                rows = self._db.execute(f"SELECT {','.join(JOB_COLUMNS)} FROM jobs ORDER BY submitted_at, job_id")
                jobs = tuple(job_from_row(r) for r in rows.fetchall())
                events = self._db.execute(f"SELECT {','.join(EVENT_COLUMNS)} FROM events ORDER BY seq").fetchall()
                kv = self._db.execute("SELECT key, value FROM kv ORDER BY key").fetchall()
                results = self._db.execute("SELECT job_id, rank, value FROM results ORDER BY job_id, rank").fetchall()
                logs = self._db.execute("SELECT seq, job_id, rank, ts, text FROM logs ORDER BY seq").fetchall()
                serving = self._db.execute(f"SELECT {','.join(SERVING_COLUMNS)} FROM serving ORDER BY model").fetchall()
            finally:
                self._db.execute("COMMIT")
        return LedgerSnapshot(self.schema_version, jobs, tuple(event_from_row(r) for r in events),
                              tuple((k, bytes(v)) for k, v in kv), _results(results), _logs(logs),
                              tuple(serving_from_row(r) for r in serving))

    def restore(self, snapshot: LedgerSnapshot) -> None:
        """Load a snapshot into this (empty) ledger, in one transaction; event numbers kept."""
        require_schema(snapshot, self.schema_version, self.path)
        snapshot = upgrade(snapshot)
        with self._write() as db:
            require_empty({t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in SNAPSHOT_TABLES},
                          self.path)
            db.executemany(f"INSERT INTO jobs({','.join(JOB_COLUMNS)}) VALUES({','.join('?' * len(JOB_COLUMNS))})",
                           [job_row(j) for j in snapshot.jobs])
            db.executemany(f"INSERT INTO events({','.join(EVENT_COLUMNS)}) "
                           f"VALUES({','.join('?' * len(EVENT_COLUMNS))})", [event_row(e) for e in snapshot.events])
            db.executemany("INSERT INTO kv(key, value) VALUES(?, ?)", list(snapshot.kv))
            db.executemany("INSERT INTO results(job_id, rank, value) VALUES(?,?,?)", list(snapshot.results))
            db.executemany("INSERT INTO logs(seq, job_id, rank, ts, text) VALUES(?,?,?,?,?)", list(snapshot.logs))
            db.executemany(f"INSERT INTO serving({','.join(SERVING_COLUMNS)}) "
                           f"VALUES({','.join('?' * len(SERVING_COLUMNS))})",
                           [serving_row(r) for r in snapshot.serving])

    def tables(self) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                    "AND name NOT LIKE 'sqlite_%'").fetchall()
        return {r[0] for r in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _results(rows: Iterable[tuple[Any, ...]]) -> tuple[tuple[str, int, bytes | None], ...]:
    return tuple((str(j), int(r), None if v is None else bytes(v)) for j, r, v in rows)


def _logs(rows: Iterable[tuple[Any, ...]]) -> tuple[tuple[int, str, int, float, str], ...]:
    return tuple((int(q), str(j), int(r), float(t), str(x)) for q, j, r, t, x in rows)


def _statements(script: str) -> list[str]:
    """Split a migration file into statements (sqlite3 runs one per execute). A CREATE TRIGGER
    body holds ';' of its own and ends with 'END;'."""
    out, buf = [], ""
    for line in script.splitlines():
        if line.strip().startswith("--"):
            continue
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


# -- choosing a backend ------------------------------------------------------------------------
def is_postgres_url(value: str | None) -> bool:
    return value is not None and value.split("://", 1)[0] in ("postgresql", "postgres")


def ledger_password(controller: "ControllerConfig", environ: dict[str, str] | None = None) -> str | None:
    """The PostgreSQL password, from the environment variable or file the config names (never
    from the config itself). None when neither is named: libpq's own sources then apply
    (PGPASSWORD, ~/.pgpass, or no password for trust/peer authentication)."""
    env = os.environ if environ is None else environ
    if controller.ledger_password_env:
        value = env.get(controller.ledger_password_env)
        if not value:
            raise ConfigError(f"controller.ledger_password_env: environment variable "
                              f"{controller.ledger_password_env!r} is not set (or empty) in the controller's "
                              "process; to fix: export it before `rayfin up`, or name a file in "
                              "controller.ledger_password_file", path="controller.ledger_password_env")
        return value
    if controller.ledger_password_file:
        path = Path(os.path.expanduser(controller.ledger_password_file))
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"controller.ledger_password_file: cannot read {str(path)!r} ({exc.strerror}); to "
                              "fix: create it (mode 0600) with the password on one line",
                              path="controller.ledger_password_file") from None
        if not value:
            raise ConfigError(f"controller.ledger_password_file: {str(path)!r} is empty",
                              path="controller.ledger_password_file")
        return value
    return None


def open_ledger(controller: "ControllerConfig") -> Ledger:
    """The ledger the config selects: PostgreSQL when `controller.ledger` is a postgresql:// URL,
    else SQLite at `controller.ledger_path`."""
    if controller.ledger is not None and is_postgres_url(controller.ledger):
        # Imported here: ledger_pg imports this module, and psycopg is only needed for PostgreSQL.
        from rayfin.controller.ledger_pg import PostgresLedger

        return PostgresLedger(controller.ledger, password=ledger_password(controller),
                              pool_size=controller.ledger_pool_size)
    return SqliteLedger(controller.ledger_path)


__all__ = ["Ledger", "SqliteLedger", "JobEvent", "JobKind", "JobRecord", "Event", "ServingReservation", "LogLine",
           "LedgerSnapshot", "SNAPSHOT_TABLES", "JOB_COLUMNS", "EVENT_COLUMNS", "SERVING_COLUMNS", "open_ledger",
           "is_postgres_url", "ledger_password", "upgrade"]
