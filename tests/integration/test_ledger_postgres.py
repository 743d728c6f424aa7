"""The live controller's ledger is the configured database: what a desk submits is in it."""
from __future__ import annotations

import os

from tests.support.cluster import LEDGER_PASSWORD_ENV


def test_the_controller_writes_jobs_and_audit_events_to_the_configured_ledger(rayfin_env, connect_desk,
                                                                              ledger_target):
    fx = connect_desk("fx")
    job = fx.submit(sum, [1, 2, 3], gpus=1, name="ledger-check")
    assert job.result(timeout=120) == 6
    if ledger_target.startswith("postgresql://"):
        from rayfin.controller.ledger_pg import PostgresLedger

        led = PostgresLedger(ledger_target, password=os.environ[LEDGER_PASSWORD_ENV])
    else:
        from rayfin.controller.ledger import SqliteLedger

        led = SqliteLedger(ledger_target)
    try:
        row = led.get_job(job.job_id)
        assert (row.desk, row.state, row.name) == ("fx", "SUCCEEDED", "ledger-check") and row.result
        kinds = [e.kind for e in led.events(job_id=job.job_id)]
        assert kinds[0] == "submitted" and len(kinds) >= 3
    finally:
        led.close()
    if os.environ.get("RAYFIN_TEST_LEDGER", "postgresql") != "sqlite":
        assert ledger_target.startswith("postgresql://"), "the integration cluster should run on PostgreSQL"
