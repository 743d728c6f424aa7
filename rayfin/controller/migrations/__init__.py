"""Versioned ledger schema, one SQL file per migration and per database.

    migrations/sqlite/0001_initial.sql        migrations/postgresql/0001_initial.sql
    migrations/sqlite/0002_<what>.sql         migrations/postgresql/0002_<what>.sql

A ledger applies, in order and each in one transaction, the files whose version is above the
one the database records (SQLite: `PRAGMA user_version`; PostgreSQL: the
`rayfin_schema_migrations` table). To change the schema, add the next file to both folders;
never edit one that has shipped. Both folders must hold the same versions (a unit test checks).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

DIALECTS = ("sqlite", "postgresql")
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> tuple[Migration, ...]:
    """The migrations of `dialect`, in version order; versions run 1, 2, ... with no gap."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown ledger dialect {dialect!r}; allowed: {', '.join(DIALECTS)}")
    found = []
    for entry in resources.files(__name__).joinpath(dialect).iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    expected = list(range(1, len(found) + 1))
    if [mig.version for mig in found] != expected:
        raise ValueError(f"ledger migrations for {dialect} must be numbered 0001, 0002, ... with no gap or "
                         f"repeat; found {[mig.version for mig in found]}")
    return tuple(found)


def latest_version(dialect: str) -> int:
    return len(migrations(dialect))
