"""The ledger on PostgreSQL: what a bank's platform team backs up, replicates and audits.

psycopg 3 with a connection pool (the controller answers SDK calls on many threads while its
cycle writes). Each `put_job` (the job row and its audit event) is one transaction; a commit is
durable before the caller is told, as with SQLite's synchronous=FULL. The schema comes from
migrations/postgresql/NNNN_*.sql, applied under an advisory lock so that two controllers
starting at once do not both migrate. The audit table refuses UPDATE, DELETE and TRUNCATE in a
trigger, whoever connects.

Connections are checked when taken from the pool, so a ledger outlives a database restart or
fail-over: the call that finds a dead connection gets a fresh one. Connections run in
autocommit: `put_job` writes the job row and its event in one statement (a CTE), atomic by
itself, in one round trip.
"""
from __future__ import annotations

from typing import Any, Iterable
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import IsolationLevel
from psycopg_pool import ConnectionPool, PoolTimeout

from rayfin.controller.ledger import (EVENT_COLUMNS, EVENT_INSERT, JOB_COLUMNS, SERVING_COLUMNS, SNAPSHOT_TABLES,
                                      Event, JobEvent, JobRecord, LedgerSnapshot, LogLine, ServingReservation, _logs,
                                      _results, chunks_to_drop, counts_query, counts_table, event_from_row, event_row,
                                      event_values, events_query, job_event, job_from_row, job_row, jobs_query,
                                      logs_query, require_empty, require_schema, serving_event, serving_from_row,
                                      serving_row, tail_lines, upgrade)
from rayfin.controller.migrations import migrations
from rayfin.errors import LedgerError
from rayfin.reasons import ReasonCode

# Any constant works; it only has to be the same for every rayfin that migrates this database.
_MIGRATION_LOCK = 0x72617966696E  # "rayfin"
_JSON_COLS = {"placement", "info"}
_UPSERT = (f"INSERT INTO jobs({','.join(JOB_COLUMNS)}) VALUES("
           + ",".join("%s::jsonb" if c in _JSON_COLS else "%s" for c in JOB_COLUMNS) + ") "
           "ON CONFLICT (job_id) DO UPDATE SET "
           + ",".join(f"{c}=EXCLUDED.{c}" for c in JOB_COLUMNS if c != "job_id"))
_EVENT_VALUES = ",".join("%s::jsonb" if c == "data" else "%s" for c in EVENT_INSERT)
_INSERT_EVENT = f"INSERT INTO events({','.join(EVENT_INSERT)}) VALUES({_EVENT_VALUES})"
# The job row and its audit event in one statement: atomic on its own, one round trip.
_UPSERT_WITH_EVENT = (f"WITH j AS ({_UPSERT} RETURNING 1) INSERT INTO events({','.join(EVENT_INSERT)}) "
                      f"SELECT {_EVENT_VALUES} FROM j")
_UPSERT_SERVING = (f"INSERT INTO serving({','.join(SERVING_COLUMNS)}) "
                   f"VALUES({','.join(['%s'] * len(SERVING_COLUMNS))}) ON CONFLICT (model) DO UPDATE SET "
                   + ",".join(f"{c}=EXCLUDED.{c}" for c in SERVING_COLUMNS if c != "model"))


def redact(url: str) -> str:
    """The URL as it may be shown: no password, even if one slipped in."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class PostgresLedger:
    """The `Ledger` protocol on PostgreSQL (psycopg 3, psycopg_pool)."""

    def __init__(self, url: str, *, password: str | None = None, pool_size: int = 4,
                 connect_timeout_s: float = 10.0) -> None:
        self.url = redact(url)
        # Autocommit: a single statement is its own transaction (one round trip, no BEGIN/COMMIT);
        # the operations that need several statements open one explicitly.
        kwargs: dict[str, Any] = {"connect_timeout": max(1, int(connect_timeout_s)),
                                  "application_name": "rayfin-ledger", "autocommit": True}
        if password is not None:
            kwargs["password"] = password
        # One plain connection first: its error says why (bad password, no such database)
        # where the pool would only report that it timed out.
        try:
            psycopg.connect(url, **kwargs).close()
        except psycopg.Error as exc:
            raise LedgerError(f"cannot connect to the PostgreSQL ledger at {self.url}: {_first_line(exc)}; to fix: "
                              "check the URL in controller.ledger, that the server is up, and the password "
                              "source (controller.ledger_password_env or _file)", ledger=self.url,
                              reason="unreachable") from None
        self._pool = ConnectionPool(url, kwargs=kwargs, min_size=1, max_size=pool_size, open=False,
                                    check=ConnectionPool.check_connection, name="rayfin-ledger",
                                    timeout=connect_timeout_s)
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout as exc:
            self._pool.close()
            raise LedgerError(f"cannot connect to the PostgreSQL ledger at {self.url} within {connect_timeout_s:g}s "
                              f"({_first_line(exc)}); to fix: check the URL in controller.ledger, that the "
                              "server is up, and the password source", ledger=self.url,
                              reason="unreachable") from None
        self.schema_version = self._migrate()

    # -- plumbing --
    def _conn(self) -> Any:
        return self._pool.connection()

    def _migrate(self) -> int:
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS rayfin_schema_migrations(version INTEGER PRIMARY KEY, "
                         "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            done = {r[0] for r in conn.execute("SELECT version FROM rayfin_schema_migrations").fetchall()}
            for mig in migrations("postgresql"):
                if mig.version in done:
                    continue
                # DDL is transactional here: a migration and its record land together or not at all.
                conn.execute(mig.sql)
                conn.execute("INSERT INTO rayfin_schema_migrations(version, name) VALUES(%s, %s)",
                             (mig.version, mig.name))
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM rayfin_schema_migrations").fetchone()
        return int(row[0])

    # -- jobs --
    def put_job(self, job: JobRecord, event: JobEvent | None = None, ts: float | None = None) -> None:
        """Upsert a job; with `event=(kind, reason)` also append an audit event, in one transaction."""
        with self._conn() as conn:
            if event is None:
                conn.execute(_UPSERT, job_row(job))
            else:
                conn.execute(_UPSERT_WITH_EVENT, job_row(job) + job_event(job, event, ts))

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._conn() as conn:
            row = conn.execute(f"SELECT {','.join(JOB_COLUMNS)} FROM jobs WHERE job_id=%s", (job_id,)).fetchone()
        return job_from_row(row) if row else None

    def jobs(self, *, desk: str | None = None, states: Iterable[str] | None = None,
             limit: int | None = None, blobs: bool = True) -> list[JobRecord]:
        q, args = jobs_query(desk, states, limit, blobs, "%s")
        with self._conn() as conn:
            rows = conn.execute(q, args).fetchall()
        return [job_from_row(r) for r in rows]

    def counts(self, states: Iterable[str], exclude_kind: str | None = None) -> dict[str, dict[str, int]]:
        q, args = counts_query(states, exclude_kind, "%s")
        with self._conn() as conn:
            rows = conn.execute(q, args).fetchall()
        return counts_table(rows)

    # -- audit events --
    def record(self, ts: float, job_id: str, desk: str, kind: str, state: str, reason: str,
               data: dict[str, Any] | None = None, code: ReasonCode | None = None) -> None:
        with self._conn() as conn:
            conn.execute(_INSERT_EVENT, event_values(ts, job_id, desk, kind, state, reason, data, code))

    def events(self, *, desk: str | None = None, job_id: str | None = None, since: float | None = None,
               until: float | None = None, kinds: Iterable[str] | None = None, limit: int = 1000) -> list[Event]:
        q, args = events_query(desk, job_id, since, until, kinds, limit, "%s")
        with self._conn() as conn:
            rows = conn.execute(q, args).fetchall()
        return [event_from_row(r) for r in rows]

    # -- serving reservations --
    def put_serving(self, res: ServingReservation, event: tuple[str, str], ts: float) -> None:
        with self._conn() as conn, conn.transaction():
            conn.execute(_UPSERT_SERVING, serving_row(res))
            conn.execute(_INSERT_EVENT, serving_event(res, res.model, res.desk, event, ts))

    def drop_serving(self, model: str, event: tuple[str, str, ReasonCode], ts: float) -> None:
        with self._conn() as conn, conn.transaction():
            row = conn.execute("DELETE FROM serving WHERE model=%s RETURNING desk", (model,)).fetchone()
            conn.execute(_INSERT_EVENT, serving_event(None, model, row[0] if row else "", event, ts))

    def serving(self) -> list[ServingReservation]:
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {','.join(SERVING_COLUMNS)} FROM serving ORDER BY model").fetchall()
        return [serving_from_row(r) for r in rows]

    # -- kv --
    def put_kv(self, key: str, value: bytes) -> None:
        with self._conn() as conn:
            conn.execute("INSERT INTO kv(key, value) VALUES(%s, %s) ON CONFLICT (key) DO UPDATE SET value=EXCLUDED.value",
                         (key, value))

    def get_kv(self, key: str) -> bytes | None:
        with self._conn() as conn:
            row = conn.execute("SELECT value FROM kv WHERE key=%s", (key,)).fetchone()
        return bytes(row[0]) if row else None

    # -- gang outputs --
    def put_results(self, job_id: str, results: Iterable[bytes | None]) -> None:
        rows = [(job_id, r, v) for r, v in enumerate(results)]
        with self._conn() as conn, conn.transaction():
            conn.execute("DELETE FROM results WHERE job_id=%s", (job_id,))
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO results(job_id, rank, value) VALUES(%s,%s,%s)", rows)

    def results(self, job_id: str) -> list[bytes | None]:
        with self._conn() as conn:
            rows = conn.execute("SELECT value FROM results WHERE job_id=%s ORDER BY rank", (job_id,)).fetchall()
        return [None if r[0] is None else bytes(r[0]) for r in rows]

    def append_logs(self, job_id: str, chunks: Iterable[tuple[int, str]], ts: float, max_bytes: int) -> None:
        rows = [(job_id, int(r), ts, t) for r, t in chunks if t]
        if not rows:
            return
        with self._conn() as conn, conn.transaction():
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO logs(job_id, rank, ts, text) VALUES(%s,%s,%s,%s)", rows)
            for rank in {r[1] for r in rows}:
                sizes = conn.execute("SELECT seq, LENGTH(text) FROM logs WHERE job_id=%s AND rank=%s "
                                     "ORDER BY seq DESC", (job_id, rank)).fetchall()
                cut = chunks_to_drop(sizes, max_bytes)
                if cut is not None:
                    conn.execute("DELETE FROM logs WHERE job_id=%s AND rank=%s AND seq<=%s", (job_id, rank, cut))

    def logs(self, job_id: str, rank: int | None = None, tail: int | None = None) -> list[LogLine]:
        q, args = logs_query(job_id, rank, "%s")
        with self._conn() as conn:
            rows = conn.execute(q, args).fetchall()
        return tail_lines((LogLine(r[0], r[1], r[2]) for r in rows), tail)

    # -- backup and restore --
    def snapshot(self) -> LedgerSnapshot:
        """All rows as of one instant: a REPEATABLE READ, read-only transaction sees one snapshot
        of the database for all three tables while the controller goes on writing."""
        with self._conn() as conn:
            conn.isolation_level = IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            try:
                with conn.transaction():
                    jobs = conn.execute(f"SELECT {','.join(JOB_COLUMNS)} FROM jobs ORDER BY submitted_at, job_id")
                    jobs = tuple(job_from_row(r) for r in jobs.fetchall())
                    events = conn.execute(f"SELECT {','.join(EVENT_COLUMNS)} FROM events ORDER BY seq").fetchall()
                    kv = conn.execute("SELECT key, value FROM kv ORDER BY key").fetchall()
                    results = conn.execute("SELECT job_id, rank, value FROM results ORDER BY job_id, rank").fetchall()
                    logs = conn.execute("SELECT seq, job_id, rank, ts, text FROM logs ORDER BY seq").fetchall()
                    serving = conn.execute(f"SELECT {','.join(SERVING_COLUMNS)} FROM serving "
                                           "ORDER BY model").fetchall()
            finally:
                conn.isolation_level = None
                conn.read_only = None
        return LedgerSnapshot(self.schema_version, jobs, tuple(event_from_row(r) for r in events),
                              tuple((k, bytes(v)) for k, v in kv), _results(results), _logs(logs),
                              tuple(serving_from_row(r) for r in serving))

    def restore(self, snapshot: LedgerSnapshot) -> None:
        """Load a snapshot into this (empty) ledger in one transaction; event numbers are kept
        and the sequence moved past them."""
        require_schema(snapshot, self.schema_version, self.url)
        snapshot = upgrade(snapshot)
        with self._conn() as conn, conn.transaction():
            conn.execute(f"LOCK TABLE {', '.join(SNAPSHOT_TABLES)} IN EXCLUSIVE MODE")
            require_empty({t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in SNAPSHOT_TABLES},
                          self.url)
            with conn.cursor() as cur:
                cur.executemany(_UPSERT, [job_row(j) for j in snapshot.jobs])
                cur.executemany(f"INSERT INTO events({','.join(EVENT_COLUMNS)}) VALUES("
                                + ",".join("%s::jsonb" if c == "data" else "%s" for c in EVENT_COLUMNS) + ")",
                                [event_row(e) for e in snapshot.events])
                cur.executemany("INSERT INTO kv(key, value) VALUES(%s, %s)", list(snapshot.kv))
                cur.executemany("INSERT INTO results(job_id, rank, value) VALUES(%s,%s,%s)", list(snapshot.results))
                cur.executemany("INSERT INTO logs(seq, job_id, rank, ts, text) VALUES(%s,%s,%s,%s,%s)",
                                list(snapshot.logs))
                cur.executemany(_UPSERT_SERVING, [serving_row(r) for r in snapshot.serving])
            for table in ("events", "logs"):   # numbering goes on after the restored rows
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'seq'), "
                             f"GREATEST((SELECT MAX(seq) FROM {table}), 1), (SELECT COUNT(*) > 0 FROM {table}))")

    def tables(self) -> set[str]:
        with self._conn() as conn:
            rows = conn.execute("SELECT table_name FROM information_schema.tables "
                                "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'").fetchall()
        return {r[0] for r in rows} - {"rayfin_schema_migrations"}

    def close(self) -> None:
        self._pool.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
