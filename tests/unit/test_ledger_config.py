"""Choosing and configuring the ledger (no server needed): URL checks, password sources,
migration files. The behaviour of both backends is tests/ledger's contract suite."""
from __future__ import annotations

import pytest

from rayfin.config import ControllerConfig, load_config
from rayfin.controller.ledger import SqliteLedger, ledger_password, open_ledger
from rayfin.controller.migrations import DIALECTS, migrations
from rayfin.errors import ConfigError
from rayfin.up import with_ledger


@pytest.mark.parametrize("url, problem", [
    ("postgresql://rayfin:hunter2@db:5432/rayfin", "must not contain a password"),
    ("postgresql://rayfin@db/rayfin?password=hunter2", "must not contain a password"),
    ("postgresql:///rayfin", "must name a host"),
    ("postgresql://rayfin@db:99999/rayfin", "not a valid URL"),
])
def test_bad_ledger_urls_are_config_errors_naming_the_field(url, problem):
    with pytest.raises(ConfigError) as err:
        with_ledger(load_config("configs/test.yaml"), url)
    assert err.value.path == "controller.ledger" and problem in str(err.value)
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize("url", ["mysql://rayfin@db/rayfin", "/var/lib/rayfin/ledger.db"])
def test_ledger_field_takes_only_postgresql_urls(url):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must be a postgresql://"):
        ControllerConfig.model_validate({"ledger": url})


def test_good_url_and_one_password_source():
    c = ControllerConfig(ledger="postgresql://rayfin@db.internal:5432/rayfin", ledger_password_env="PGPW")
    assert c.ledger.endswith("/rayfin") and c.ledger_password_env == "PGPW"
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not both"):
        ControllerConfig(ledger="postgresql://r@db/r", ledger_password_env="A", ledger_password_file="/f")
    with pytest.raises(ValidationError, match="apply to a PostgreSQL ledger"):
        ControllerConfig(ledger_password_env="A")


def test_password_from_env_or_file_never_the_config(tmp_path):
    c = ControllerConfig(ledger="postgresql://r@db/r", ledger_password_env="RAYFIN_PW")
    assert ledger_password(c, {"RAYFIN_PW": "s3cret"}) == "s3cret"
    with pytest.raises(ConfigError, match="RAYFIN_PW.*not set") as err:
        ledger_password(c, {})
    assert err.value.path == "controller.ledger_password_env"
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    assert ledger_password(ControllerConfig(ledger="postgresql://r@db/r", ledger_password_file=str(f)), {}) == "from-file"
    with pytest.raises(ConfigError, match="cannot read") as err:
        ledger_password(ControllerConfig(ledger="postgresql://r@db/r", ledger_password_file=str(tmp_path / "no")), {})
    assert err.value.path == "controller.ledger_password_file"
    # neither named: libpq's own sources (PGPASSWORD, ~/.pgpass, trust) decide
    assert ledger_password(ControllerConfig(ledger="postgresql://r@db/r"), {}) is None


def test_sqlite_stays_the_default(tmp_path):
    cfg = with_ledger(load_config("configs/test.yaml"), str(tmp_path / "l.db"))
    assert cfg.controller.ledger is None
    led = open_ledger(cfg.controller)
    assert isinstance(led, SqliteLedger) and led.path == str(tmp_path / "l.db")
    led.close()
    pg = with_ledger(cfg, "postgresql://rayfin@db/rayfin", password_env="X")
    assert pg.controller.ledger == "postgresql://rayfin@db/rayfin" and pg.controller.ledger_password_env == "X"
    assert with_ledger(pg, str(tmp_path / "m.db")).controller.ledger is None


def test_both_dialects_have_the_same_migrations():
    versions = {d: [(m.version, m.name) for m in migrations(d)] for d in DIALECTS}
    assert versions["sqlite"] == versions["postgresql"] and versions["sqlite"][0] == (1, "initial")


def test_an_old_unversioned_sqlite_ledger_is_adopted(tmp_path):
    import sqlite3

    # a ledger file written before migrations existed: tables present, user_version 0
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript(migrations("sqlite")[0].sql)
    db.execute("INSERT INTO kv(key, value) VALUES('k', x'01')")
    db.commit()
    db.close()
    led = SqliteLedger(tmp_path / "old.db")
    assert led.schema_version == len(migrations("sqlite")) and led.get_kv("k") == b"\x01"
