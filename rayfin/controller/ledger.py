"""Durable ledger: every accepted submission, state change and decision, written before it is
acknowledged. The embedded default is SQLite in WAL mode; `Ledger` is the interface a server
database would implement.

Tables
    jobs    one row per job (its spec, payload, state, placement, result)
    events  append-only audit trail: every admission, refusal, preemption, state change, with
            its reason; queryable by desk and time
    kv      small blobs of controller state (e.g. forecaster state)
    results every rank's return value of a gang job (rank 0's is also jobs.result)
    logs    each rank's output, in chunks, bounded per (job, rank) to the newest `max_bytes`
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Protocol

from rayfin.policy.model import JobState


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    desk: str
    name: str
    kind: str                 # "callable" | "entrypoint" | "serving"
    gpus: float
    priority: int
    comm: str
    state: str
    submitted_at: float
    max_retries: int = 0
    attempts: int = 0
    reason: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    placement: tuple[tuple[str, float], ...] = ()
    preempt_deadline: float | None = None
    payload: bytes | None = None
    result: bytes | None = None
    error: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def copy(self, **changes: Any) -> "JobRecord":
        return replace(self, **changes)

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)

    def public(self) -> dict[str, Any]:
        """What an SDK caller may see (no payload or result bytes)."""
        d = asdict(self)
        d.pop("payload")
        d.pop("result")
        d["placement"] = [list(p) for p in self.placement]
        return d


@dataclass(frozen=True)
class Event:
    seq: int
    ts: float
    job_id: str
    desk: str
    kind: str
    state: str
    reason: str
    data: dict[str, Any]


class Ledger(Protocol):
    def put_job(self, job: JobRecord, event: tuple[str, str] | None = None) -> None: ...
    def get_job(self, job_id: str) -> JobRecord | None: ...
    def jobs(self, *, desk: str | None = None, states: Iterable[str] | None = None,
             limit: int | None = None, blobs: bool = True) -> list[JobRecord]: ...
    def counts(self, states: Iterable[str], exclude_kind: str | None = None) -> dict[str, dict[str, int]]: ...
    def record(self, ts: float, job_id: str, desk: str, kind: str, state: str, reason: str,
               data: dict[str, Any] | None = None) -> None: ...
    def events(self, *, desk: str | None = None, job_id: str | None = None, since: float | None = None,
               until: float | None = None, kinds: Iterable[str] | None = None,
               limit: int = 1000) -> list[Event]: ...
    def put_kv(self, key: str, value: bytes) -> None: ...
    def get_kv(self, key: str) -> bytes | None: ...
    def put_results(self, job_id: str, results: Iterable[bytes | None]) -> None: ...
    def results(self, job_id: str) -> list[bytes | None]: ...
    def append_logs(self, job_id: str, chunks: Iterable[tuple[int, str]], ts: float, max_bytes: int) -> None: ...
    def logs(self, job_id: str, rank: int | None = None, tail: int | None = None) -> list[LogLine]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class LogLine:
    rank: int
    ts: float
    text: str


def tail_lines(chunks: Iterable[LogLine], tail: int | None) -> list[LogLine]:
    """Split chunks into lines and keep the last `tail` of them (all when None)."""
    lines = [LogLine(c.rank, c.ts, line) for c in chunks for line in c.text.splitlines()]
    return lines if tail is None else lines[-tail:] if tail > 0 else []


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs(
  job_id TEXT PRIMARY KEY, desk TEXT NOT NULL, name TEXT, kind TEXT, gpus REAL, priority INTEGER,
  comm TEXT, state TEXT NOT NULL, submitted_at REAL, max_retries INTEGER, attempts INTEGER,
  reason TEXT, started_at REAL, finished_at REAL, placement TEXT, preempt_deadline REAL,
  payload BLOB, result BLOB, error TEXT, info TEXT);
CREATE INDEX IF NOT EXISTS jobs_desk_state ON jobs(desk, state);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS events(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, job_id TEXT, desk TEXT, kind TEXT NOT NULL,
  state TEXT, reason TEXT, data TEXT);
CREATE INDEX IF NOT EXISTS events_desk_ts ON events(desk, ts);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id);
CREATE TRIGGER IF NOT EXISTS events_append_only_u BEFORE UPDATE ON events
  BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_append_only_d BEFORE DELETE ON events
  BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TABLE IF NOT EXISTS kv(key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS results(job_id TEXT NOT NULL, rank INTEGER NOT NULL, value BLOB,
  PRIMARY KEY(job_id, rank));
CREATE TABLE IF NOT EXISTS logs(seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, rank INTEGER NOT NULL,
  ts REAL NOT NULL, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS logs_job_rank ON logs(job_id, rank, seq);
"""

_COLS = ("job_id", "desk", "name", "kind", "gpus", "priority", "comm", "state", "submitted_at", "max_retries",
         "attempts", "reason", "started_at", "finished_at", "placement", "preempt_deadline", "payload", "result",
         "error", "info")


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
        self._db.executescript(_SCHEMA)

    # -- jobs --
    def put_job(self, job: JobRecord, event: tuple[str, str] | None = None, ts: float | None = None) -> None:
        """Upsert a job; with `event=(kind, reason)` also append an audit event, in one transaction."""
        row = (job.job_id, job.desk, job.name, job.kind, job.gpus, job.priority, job.comm, job.state,
               job.submitted_at, job.max_retries, job.attempts, job.reason, job.started_at, job.finished_at,
               json.dumps([list(p) for p in job.placement]), job.preempt_deadline, job.payload, job.result,
               job.error, json.dumps(job.info, default=str))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(f"INSERT OR REPLACE INTO jobs({','.join(_COLS)}) VALUES({','.join('?' * len(_COLS))})",
                                 row)
                if event is not None:
                    kind, reason = event
                    self._db.execute("INSERT INTO events(ts, job_id, desk, kind, state, reason, data) "
                                     "VALUES(?,?,?,?,?,?,?)",
                                     (ts if ts is not None else (job.finished_at or job.started_at or job.submitted_at),
                                      job.job_id, job.desk, kind, job.state, reason,
                                      json.dumps({"gpus": job.gpus, "placement": job.placement,
                                                  "attempts": job.attempts})))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @staticmethod
    def _job(row: tuple[Any, ...]) -> JobRecord:
        d = dict(zip(_COLS, row))
        d["placement"] = tuple((str(i), float(g)) for i, g in json.loads(d["placement"] or "[]"))
        d["info"] = json.loads(d["info"] or "{}")
        d["reason"] = d["reason"] or ""
        d["error"] = d["error"] or ""
        return JobRecord(**d)

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {','.join(_COLS)} FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def jobs(self, *, desk: str | None = None, states: Iterable[str] | None = None,
             limit: int | None = None, blobs: bool = True) -> list[JobRecord]:
        """Jobs in submission order. `blobs=False` leaves payload and result out (listings)."""
        cols = _COLS if blobs else tuple("NULL" if c in ("payload", "result") else c for c in _COLS)
        q, args = f"SELECT {','.join(cols)} FROM jobs WHERE 1=1", []
        if desk is not None:
            q += " AND desk=?"
            args.append(desk)
        if states is not None:
            st = list(states)
            q += f" AND state IN ({','.join('?' * len(st))})"
            args.extend(st)
        q += " ORDER BY submitted_at, job_id"
        if limit:
            q += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        return [self._job(r) for r in rows]

    def counts(self, states: Iterable[str], exclude_kind: str | None = None) -> dict[str, dict[str, int]]:
        """{desk: {state: n}} for the given states, counted by SQLite."""
        st = list(states)
        q = f"SELECT desk, state, COUNT(*) FROM jobs WHERE state IN ({','.join('?' * len(st))})"
        args: list[Any] = list(st)
        if exclude_kind is not None:
            q += " AND kind != ?"
            args.append(exclude_kind)
        with self._lock:
            rows = self._db.execute(q + " GROUP BY desk, state", args).fetchall()
        out: dict[str, dict[str, int]] = {}
        for desk, state, n in rows:
            out.setdefault(desk, {})[state] = n
        return out

    # -- audit events --
    def record(self, ts: float, job_id: str, desk: str, kind: str, state: str, reason: str,
               data: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._db.execute("INSERT INTO events(ts, job_id, desk, kind, state, reason, data) VALUES(?,?,?,?,?,?,?)",
                             (ts, job_id, desk, kind, state, reason, json.dumps(data or {}, default=str)))

    def events(self, *, desk: str | None = None, job_id: str | None = None, since: float | None = None,
               until: float | None = None, kinds: Iterable[str] | None = None, limit: int = 1000) -> list[Event]:
        q, args = "SELECT seq, ts, job_id, desk, kind, state, reason, data FROM events WHERE 1=1", []
        for col, op, val in (("desk", "=", desk), ("job_id", "=", job_id), ("ts", ">=", since), ("ts", "<=", until)):
            if val is not None:
                q += f" AND {col}{op}?"
                args.append(val)
        if kinds is not None:
            ks = list(kinds)
            q += f" AND kind IN ({','.join('?' * len(ks))})"
            args.extend(ks)
        q += f" ORDER BY seq LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        return [Event(r[0], r[1], r[2] or "", r[3] or "", r[4], r[5] or "", r[6] or "", json.loads(r[7] or "{}"))
                for r in rows]

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
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM results WHERE job_id=?", (job_id,))
            self._db.executemany("INSERT INTO results(job_id, rank, value) VALUES(?,?,?)", rows)
            self._db.execute("COMMIT")

    def results(self, job_id: str) -> list[bytes | None]:
        with self._lock:
            rows = self._db.execute("SELECT value FROM results WHERE job_id=? ORDER BY rank", (job_id,)).fetchall()
        return [r[0] for r in rows]

    def append_logs(self, job_id: str, chunks: Iterable[tuple[int, str]], ts: float, max_bytes: int) -> None:
        """Append output chunks; then drop each touched rank's oldest chunks beyond `max_bytes`."""
        rows = [(job_id, int(r), ts, t) for r, t in chunks if t]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO logs(job_id, rank, ts, text) VALUES(?,?,?,?)", rows)
            for rank in {r[1] for r in rows}:
                kept, cut = 0, None
                for k, (seq, n) in enumerate(self._db.execute("SELECT seq, LENGTH(text) FROM logs WHERE job_id=? "
                                                              "AND rank=? ORDER BY seq DESC", (job_id, rank)).fetchall()):
                    kept += n
                    if kept > max_bytes and k > 0:   # the newest chunk is always kept
                        cut = seq
                        break
                if cut is not None:
                    self._db.execute("DELETE FROM logs WHERE job_id=? AND rank=? AND seq<=?", (job_id, rank, cut))
            self._db.execute("COMMIT")

    def logs(self, job_id: str, rank: int | None = None, tail: int | None = None) -> list[LogLine]:
        q, args = "SELECT rank, ts, text FROM logs WHERE job_id=?", [job_id]
        if rank is not None:
            q += " AND rank=?"
            args.append(rank)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY seq", args).fetchall()
        return tail_lines((LogLine(r[0], r[1], r[2]) for r in rows), tail)

    def close(self) -> None:
        with self._lock:
            self._db.close()
