"""Chargeback by lender: the scheduler attributes borrowed GPUs to the desks that lent them
(rayfin.policy.quota.attribute_lenders), the controller stores it on the job and its admission
event, the ledger adapter charges it, and the API / SDK / CLI report it (same numbers), with
rates from the config's `chargeback:` section."""
import json
import sqlite3
from datetime import datetime, timezone
from fractions import Fraction

import pytest
from fastapi.testclient import TestClient

from rayfin import cli
from rayfin.api.app import build_app
from rayfin.config import parse_config
from rayfin.controller.chargeback import UNATTRIBUTED, ledger_report, ledger_usage, usage_records
from rayfin.controller.ledger import job_from_row, job_row
from rayfin.controller.records import Event, JobKind, JobRecord
from rayfin.errors import ConfigError, Forbidden
from rayfin.market.chargeback import ChargebackSettings, GroupBy, chargeback, reconcile
from rayfin.policy import DeskQuota, JobState, schedule
from rayfin.policy.quota import UNOWNED, attribute_lenders, lendable
from rayfin.sdk import Client
from tests.support.api import CorePort
from tests.support.builders import config, config_data, controller_env
from tests.support.policy import by_id, pend, run, snap, topo

TOK = {d: f"{d}-demo-token" for d in ("equities", "fx", "risk", "quant", "admin")}


def _q(name, nominal, lend=None, pools=("general",)):
    return DeskQuota(name, float(nominal), None, lend, 1.0, frozenset(pools))


# a: the borrower; b, e share its pool; c lends from the risk pool only; z never lends
DESKS = {"a": _q("a", 4), "b": _q("b", 4, 4), "c": _q("c", 8, 2, ("risk",)), "e": _q("e", 2),
         "z": _q("z", 2, 0)}


# ---- the rule, table-driven ---------------------------------------------------------------------
@pytest.mark.parametrize("case, above, usage, capacity, placed, want", [
    ("same-pool lenders first", 2, {"a": 4}, 20, {"general"}, {"b": 4 / 3, "e": 2 / 3}),
    ("placed in risk: the risk desk lends", 2, {"a": 4}, 20, {"risk"}, {"c": 2}),
    ("tier 1 short: the rest from others", 5, {"a": 4, "b": 2, "e": 2}, 20, {"general"}, {"b": 2, "c": 2,
                                                                                          UNOWNED: 1}),
    ("lending_limit caps a lender", 3, {"a": 4}, 20, {"risk"}, {"c": 2, "b": 0.666667, "e": 0.333333}),
    ("unowned spare first, net of what is borrowed", 5, {"a": 4, "b": 5}, 24, {"general"},
     {UNOWNED: 3, "e": 2}),
    ("a third each, to the micro-GPU, summing exactly", 1, {"a": 4, "b": 3}, 20, {"general"},
     {"b": 0.333333, "e": 0.666667}),
    ("nothing above nominal", 0, {"a": 1}, 20, {"general"}, {}),
])
def test_attribute_lenders(case, above, usage, capacity, placed, want):
    got = dict(attribute_lenders("a", above, DESKS, usage, capacity, placed))
    assert got.keys() == want.keys(), case
    for k in want:
        assert abs(got[k] - want[k]) <= 1e-6, (case, got)
    micro = sum(round(Fraction(g) * 10 ** 6) for g in got.values())
    assert micro == round(Fraction(above) * 10 ** 6), case              # sums to `above` exactly
    for k, g in got.items():
        if k != UNOWNED:
            assert g <= lendable(DESKS[k], usage.get(k, 0.0)) + 1e-9, case   # within lending_limit
    assert "a" not in got and "z" not in got
    assert list(got) == sorted(got)                                       # deterministic order


def test_the_scheduler_carries_lenders_on_the_admission():
    t = topo(islands=(4, 4))           # 16 GPUs, one pool
    quotas = {"a": _q("a", 4), "b": _q("b", 8), "c": _q("c", 4)}
    d = by_id(schedule(snap(t, quotas, running=[run("c1", "c", ("n1-i1", 2.0))],
                            pending=[pend("big", "a", 6)])).admits)["big"]
    assert d.borrowed == 2
    # b lends 8 unused, c 2 unused: in proportion 4:1
    assert d.lenders == (("b", 1.6), ("c", 0.4))
    within = by_id(schedule(snap(t, quotas, pending=[pend("small", "a", 4)])).admits)["small"]
    assert within.borrowed == 0 and within.lenders == ()


def test_lenders_are_stored_under_info_and_old_rows_load():
    job = JobRecord("fx-1", "fx", "j", JobKind.CALLABLE, 4.0, 1, "none", JobState.RUNNING, 0.0, borrowed=2.0,
                    lenders=(("equities", 1.5), (UNOWNED, 0.5)))
    row = job_row(job)
    info = json.loads(row[-1])
    assert info["lenders"] == [["equities", 1.5], [UNOWNED, 0.5]] and info["borrowed"] == 2.0
    back = job_from_row(row)
    assert back.lenders == job.lenders and "lenders" not in back.info and back == job
    old = list(row)
    old[-1] = json.dumps({"borrowed": 2.0})       # a row written before lenders existed
    assert job_from_row(old).lenders == () and job_from_row(old).borrowed == 2.0


# ---- the controller: attribution through the ledger ----------------------------------------------
def spec(gpus=1, **kw):
    return {"kind": "callable", "payload": b"x", "gpus": gpus, **kw}


@pytest.fixture
def borrowed_run(tmp_path):
    """equities (nominal 4, general pool) runs 6 GPUs: 2 lent by fx, the other desk of the
    general pool; then a fx job of 2 within nominal. Advances 60 s per cycle."""
    core, backend, clock, ledger = controller_env(tmp_path)
    t0 = clock()
    big = core.submit(TOK["equities"], "equities", spec(6, priority="batch", workers="per_gpu"))["job_id"]
    for _ in range(3):
        core.cycle()
        clock.advance(60)
    backend.finish(big)
    own = core.submit(TOK["fx"], "fx", spec(2))["job_id"]
    for _ in range(2):
        core.cycle()
        clock.advance(60)
    backend.finish(own)
    core.cycle()
    clock.advance(60)
    return core, ledger, clock, t0, tmp_path / "ledger.db", {"big": big, "own": own}


def _sql_flows(db, since, until):
    """GPU-hours per (lender, borrower) straight from the event rows (plain SQL + JSON): a job's
    admission event names its lenders; it holds them until it leaves ADMITTED/RUNNING."""
    rows = sqlite3.connect(db).execute(
        "SELECT ts, job_id, desk, state, json_extract(data, '$.lenders') FROM events ORDER BY seq").fetchall()
    held, out = {}, {}
    for ts, job_id, desk, state, lenders in rows:
        on = state in ("ADMITTED", "RUNNING")
        if job_id in held and not on:
            t0, d, ls = held.pop(job_id)
            for lender, g in ls:
                out[(lender, d)] = out.get((lender, d), 0) + g * (min(ts, until) - max(t0, since)) / 3600
        if on and job_id not in held:
            held[job_id] = (ts, desk, json.loads(lenders or "[]"))
    return out


def test_chargeback_names_the_lender_and_matches_the_ledger_rows(borrowed_run):
    core, ledger, clock, t0, db, ids = borrowed_run
    big = ledger.get_job(ids["big"])
    assert big.borrowed == 2 and big.lenders == (("fx", 2.0),)
    rep = ledger_report(ledger, core.config, t0, clock())
    rows = {r.key: r for r in rep.rows}
    assert UNATTRIBUTED not in rows
    assert rows["fx"].lent_gpu_h == rows["equities"].borrowed_gpu_h == Fraction(2 * 180, 3600)
    assert [(f.lender, f.borrower, f.gpu_h) for f in rep.flows] == [("fx", "equities", Fraction(2 * 180, 3600))]
    assert _sql_flows(db, t0, clock()) == {("fx", "equities"): pytest.approx(0.1)}
    assert reconcile(rep, ledger_usage(ledger, until=clock()))


def test_api_and_sdk_match_the_cli_and_a_desk_sees_only_its_own(borrowed_run, capsys):
    core, ledger, clock, t0, db, ids = borrowed_run
    until = clock()
    tc = TestClient(build_app(CorePort(core)))

    def client(desk):
        return Client(desk, TOK[desk or "admin"], "http://testserver", transport=tc._transport, retry_s=0)

    admin = client(None).chargeback(t0, until)
    assert cli.main(["chargeback", "--config", "configs/test.yaml", "--ledger", str(db), "--since", str(t0),
                     "--until", str(until), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r.key, r.gpu_hours, r.lent_gpu_hours, r.borrowed_gpu_hours, r.cost) for r in admin.rows] == \
        [(r["desk"], r["gpu_hours"], r["lent_gpu_hours"], r["borrowed_gpu_hours"], r["cost"]) for r in out["rows"]]
    assert admin.total.gpu_hours == out["total"]["gpu_hours"] > 0
    assert [(f.lender, f.borrower, f.gpu_hours) for f in admin.flows] == [("fx", "equities", 0.1)]
    # fx sees its own row (with what it lent), not equities'
    fx = client("fx").chargeback(datetime.fromtimestamp(t0, tz=timezone.utc), until)
    assert [r.key for r in fx.rows] == ["fx"] and fx.row("fx").lent_gpu_hours == 0.1
    assert fx.total.gpu_hours == fx.row("fx").gpu_hours and fx.flows == admin.flows
    with pytest.raises(Forbidden):
        client("fx").chargeback(t0, until, desk="equities")
    eq = client("equities").chargeback(t0, until, by="job")
    assert [r.key for r in eq.rows] == [ids["big"]] and eq.rows[0].borrowed_gpu_hours == 0.1


# ---- rates -----------------------------------------------------------------------------------------
def test_rates_from_config_price_each_pool(borrowed_run):
    core, ledger, clock, t0, db, ids = borrowed_run
    cfg = config(chargeback={"rates": {"general": 2.5, "default": 4.0}})
    rep = ledger_report(ledger, cfg, t0, clock())
    assert rep.total.cost == Fraction(5, 2) * rep.total.gpu_h     # every job ran in the general pool
    assert cfg.chargeback.rates_for(["general", "risk"]) == {"general": 2.5, "risk": 4.0}


@pytest.mark.parametrize("rates, field", [
    ({"general": 1.0}, "no rate for pool(s) ['risk']"),
    ({"nowhere": 1.0, "default": 1.0}, "unknown pool(s) ['nowhere']"),
    ({"default": -1}, "finite and >= 0"),
    ({}, "at least one rate"),
])
def test_bad_rates_are_config_errors_naming_the_field(rates, field):
    with pytest.raises(ConfigError) as err:
        parse_config({**config_data(), "chargeback": {"rates": rates}})
    assert "chargeback" in str(err.value) and field in str(err.value)


def test_without_the_section_cost_is_gpu_hours():
    assert ChargebackSettings().rates_for(["general"]) == {"general": 1.0}


# ---- old ledgers and the plot ----------------------------------------------------------------------
def test_an_old_ledger_without_lenders_still_charges_unattributed():
    def ev(seq, ts, state, **data):
        return Event(seq, ts, "j", "fx", "x", state, "", {"gpus": 4, "placement": [["n0-i0", 4]], **data})
    old = usage_records([ev(1, 0, "ADMITTED"), ev(2, 50, "SUCCEEDED")], until=100, borrowed={"j": 2})
    assert [dict(r.borrowed) for r in old] == [{UNATTRIBUTED: 2}]
    new = usage_records([ev(1, 0, "ADMITTED", lenders=[]), ev(2, 10, "PENDING"),
                         ev(3, 20, "ADMITTED", lenders=[["rates", 1.5], [UNOWNED, 0.5]]), ev(4, 50, "SUCCEEDED")],
                        until=100, borrowed={"j": 2})
    assert [dict(r.borrowed) for r in new] == [{}, {"rates": 1.5, UNOWNED: 0.5}]


def test_plot_writes_a_png(borrowed_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    core, ledger, clock, t0, db, ids = borrowed_run
    png = tmp_path / "cb.png"
    assert cli.main(["chargeback", "--config", "configs/test.yaml", "--ledger", str(db), "--since", str(t0),
                     "--until", str(clock()), "--by", "job", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert f"plot: {png}" in capsys.readouterr().err


def test_desk_view_of_the_pure_report():
    h = lambda x: datetime.fromtimestamp(x * 3600, tz=timezone.utc)  # noqa: E731
    from rayfin.market.chargeback import UsageRecord, WorkKind
    recs = [UsageRecord("e1", "equities", WorkKind.BATCH, "general", 6, h(0), h(2), borrowed={"fx": 2}),
            UsageRecord("r1", "risk", WorkKind.BATCH, "risk", 4, h(0), h(1), borrowed={"rates": 1}),
            UsageRecord("f1", "fx", WorkKind.SERVING, "general", 1, h(0), h(1))]
    full = chargeback(recs, h(0), h(2), {"general": 1, "risk": 1})
    fx = chargeback(recs, h(0), h(2), {"general": 1, "risk": 1}, desk="fx")
    assert [r.key for r in fx.rows] == ["fx"]
    assert fx.rows[0] == next(r for r in full.rows if r.key == "fx")
    assert fx.rows[0].lent_gpu_h == 4 and [(f.lender, f.borrower) for f in fx.flows] == [("fx", "equities")]
    eq_jobs = chargeback(recs, h(0), h(2), {"general": 1, "risk": 1}, GroupBy.JOB, desk="equities")
    assert [r.key for r in eq_jobs.rows] == ["e1"] and eq_jobs.total.gpu_h == 12


def test_a_serving_reservation_that_borrows_names_its_lenders(tmp_path):
    core, backend, clock, ledger = controller_env(tmp_path)
    t0 = clock()
    job = core.submit(TOK["equities"], "equities", spec(4, workers="per_gpu"))["job_id"]   # its whole nominal
    core.cycle()
    core.reserve_serving(TOK["admin"], "pricer", "equities", 2, 1.0)                    # 2 GPUs above it
    clock.advance(1800)
    core.release_serving(TOK["admin"], "pricer")
    backend.finish(job)
    core.cycle()
    reserved = [e for e in ledger.events(job_id="serve-pricer") if e.kind == "serving_reserved"]
    assert reserved[0].data["lenders"] == [["fx", 2.0]]
    rep = {r.key: r for r in ledger_report(ledger, core.config, t0, clock()).rows}
    assert rep["equities"].serving_gpu_h == 1 and rep["equities"].borrowed_gpu_h == 1   # 2 GPUs x 30 min
    assert rep["fx"].lent_gpu_h == 1 and UNATTRIBUTED not in rep
