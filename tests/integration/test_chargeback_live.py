"""Chargeback of a short live run from the API equals the ledger's event rows summed with plain
SQL (no rayfin code), lender included."""
from __future__ import annotations

import json
import os
import time
from fractions import Fraction

from tests.support.cluster import LEDGER_PASSWORD_ENV
from tests.support.jobs import hold

# Consecutive events of a job: it holds `gpus` from an event in ADMITTED/RUNNING to the next one.
PAIRS = ("SELECT job_id, desk, state, ts, LEAD(ts) OVER (PARTITION BY job_id ORDER BY seq), data "
         "FROM events WHERE ts <= {mark} ORDER BY seq")


def _rows(ledger_target: str, until: float) -> list[tuple]:
    if ledger_target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(ledger_target, password=os.environ[LEDGER_PASSWORD_ENV]) as db:
            return db.execute(PAIRS.format(mark="%s"), (until,)).fetchall()
    import sqlite3

    with sqlite3.connect(ledger_target) as db:
        return db.execute(PAIRS.format(mark="?"), (until,)).fetchall()


def _sql_sums(ledger_target: str, since: float, until: float):
    """(GPU-hours per job, GPU-hours per (lender, borrower)) over [since, until), exact."""
    per_job: dict[str, Fraction] = {}
    flows: dict[tuple[str, str], Fraction] = {}
    for job_id, desk, state, ts, next_ts, data in _rows(ledger_target, until):
        if state not in ("ADMITTED", "RUNNING"):
            continue
        data = json.loads(data) if isinstance(data, (str, bytes)) else data
        held_s = Fraction(max(0.0, min(next_ts if next_ts is not None else until, until) - max(ts, since)))
        per_job[job_id] = per_job.get(job_id, Fraction(0)) + Fraction(data["gpus"]) * held_s / 3600
        for lender, g in data.get("lenders") or ():
            flows[(lender, desk)] = flows.get((lender, desk), Fraction(0)) + Fraction(g) * held_s / 3600
    return per_job, flows


def test_chargeback_from_the_api_matches_the_ledger_rows(connect_desk, ledger_target):
    eq, fx, admin = connect_desk("equities"), connect_desk("fx"), connect_desk(None)
    since = time.time()
    # equities (nominal 4) runs 6 GPUs of the general pool: 2 above nominal, lent by fx (the
    # other desk of that pool), while fx runs 1 of its own.
    borrower = eq.submit(hold, 1.0, gpus=6, workers=2, dist_backend=None, priority="batch", name="cb-borrower")
    own = fx.submit(hold, 1.0, gpus=1, name="cb-own")
    assert borrower.result(timeout=120) == "done" and own.result(timeout=120) == "done"
    until = time.time()
    report = admin.chargeback(since, until, by="job")
    per_job, flows = _sql_sums(ledger_target, since, until)

    mine = {r.key: r for r in report.rows if r.key in (borrower.job_id, own.job_id)}
    assert set(mine) == {borrower.job_id, own.job_id}
    for job_id, row in mine.items():
        assert abs(row.gpu_hours - float(per_job[job_id])) < 2e-6, job_id
    assert mine[borrower.job_id].borrowed_gpu_hours > 0
    assert abs(report.total.batch_gpu_hours - float(sum(per_job.values()))) < 1e-5
    api_flows = {(f.lender, f.borrower): f.gpu_hours for f in report.flows}
    assert ("fx", "equities") in api_flows                   # the lender is named
    assert api_flows.keys() == {k for k, v in flows.items() if v > 0}
    for k, v in flows.items():
        assert abs(api_flows.get(k, 0.0) - float(v)) < 2e-6, k
    # a desk sees its own: fx's row has what it lent, and no equities row
    fx_view = fx.chargeback(since, until)
    assert [r.key for r in fx_view.rows] == ["fx"]
    assert abs(fx_view.rows[0].lent_gpu_hours - float(sum(v for (lender, _), v in flows.items()
                                                           if lender == "fx"))) < 2e-6
