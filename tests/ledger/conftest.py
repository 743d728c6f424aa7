"""The ledger contract suite runs every test once per backend: SQLite (a file) and PostgreSQL
(a database on the session's real server, tests/conftest.py). A new Ledger method gets its
test here and runs on both."""
from __future__ import annotations

import itertools
import sqlite3
from dataclasses import dataclass
from typing import Callable

import pytest

from rayfin.controller.ledger import Ledger, SqliteLedger

BACKENDS = ("sqlite", "postgresql")
_databases = itertools.count(1)


@dataclass
class Backend:
    """Opens ledgers of one kind: `new()` an empty one, `reopen()` the last one again (a new
    process on the same storage), `tamper(sql)` runs SQL from another client connection."""

    name: str
    new: Callable[[], Ledger]
    reopen: Callable[[], Ledger]
    tamper: Callable[[str], None]


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Backend:
    opened: list[Ledger] = []
    last: dict[str, object] = {}

    def keep(led: Ledger) -> Ledger:
        opened.append(led)
        return led

    if request.param == "sqlite":
        def new() -> Ledger:
            last["path"] = tmp_path / f"ledger{len(opened)}.db"
            return keep(SqliteLedger(last["path"]))

        def reopen() -> Ledger:
            return keep(SqliteLedger(last["path"]))

        def tamper(sql: str) -> None:
            db = sqlite3.connect(last["path"], isolation_level=None)
            try:
                db.execute(sql)
            finally:
                db.close()
    else:
        import psycopg

        from rayfin.controller.ledger_pg import PostgresLedger

        server = request.getfixturevalue("postgres_server")

        def new() -> Ledger:
            last["url"] = server.create_database(f"contract_{next(_databases)}")
            return keep(PostgresLedger(last["url"], password=server.password))

        def reopen() -> Ledger:
            return keep(PostgresLedger(last["url"], password=server.password))

        def tamper(sql: str) -> None:
            with psycopg.connect(last["url"], password=server.password, autocommit=True) as conn:
                conn.execute(sql)

    yield Backend(request.param, new, reopen, tamper)
    for led in opened:
        try:
            led.close()
        except Exception:  # noqa: BLE001 - closed by the test already
            pass


@pytest.fixture
def ledger(backend) -> Ledger:
    return backend.new()
