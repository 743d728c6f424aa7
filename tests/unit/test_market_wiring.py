"""Issue 18 wiring: the calendar and quota plan in the config, `rayfin validate` / `quota-plan`,
and chargeback from a ledger (sums reconciled both ways against the ledger's own rows)."""
import json
import sqlite3
from datetime import datetime, timezone
from fractions import Fraction

import pytest

from rayfin import cli
from rayfin.config import DEFAULT_CONFIG, load_config, parse_config
from rayfin.controller.chargeback import UNATTRIBUTED, ledger_usage
from rayfin.controller.records import ServingReservation
from rayfin.errors import ConfigError
from rayfin.market.chargeback import GroupBy, chargeback, reconcile
from rayfin.reasons import ReasonCode
from tests.support.builders import config_data, controller_env

TOK = {d: f"{d}-demo-token" for d in ("equities", "fx", "risk", "admin")}


def spec(gpus=1, **kw):
    return {"kind": "callable", "payload": b"x", "gpus": gpus, **kw}


# ---- config --------------------------------------------------------------------------------------
def test_local_config_has_a_plan_that_fits():
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.calendar is not None and cfg.calendar.exchange == "XNYS"
    assert cfg.market is not None and cfg.market.quota_plan.desks
    assert cli.quota_plan_problems(cfg) == ()


def test_plan_survives_the_dump_the_controller_actor_is_given():
    """A window that leaves borrowing_limit out keeps the desk's; an explicit null is no limit.
    The config reaches the controller actor as model_dump(mode="json") -> parse_config."""
    from rayfin.market.plan import WindowName, quotas_in
    from rayfin.policy.model import DeskQuota
    data = {**config_data(), "calendar": {"exchange": "XNYS"},
            "quota_plan": {"desks": {"fx": {"eod": {"nominal_gpus": 2}, "overnight": {"borrowing_limit": None}}}}}
    cfg = parse_config(data)
    again = parse_config(cfg.model_dump(mode="json"))
    base = {d.name: DeskQuota.from_config(d) for d in cfg.desks}
    for w in WindowName:
        assert quotas_in(again.quota_plan, base, w) == quotas_in(cfg.quota_plan, base, w), w
    assert quotas_in(again.quota_plan, base, WindowName.EOD)["fx"].borrowing_limit == base["fx"].borrowing_limit
    assert quotas_in(again.quota_plan, base, WindowName.OVERNIGHT)["fx"].borrowing_limit is None


def test_bad_exchange_is_a_config_error_naming_the_field_and_the_fix():
    with pytest.raises(ConfigError) as err:
        parse_config({**config_data(), "calendar": {"exchange": "NOPE"}})
    assert "calendar.exchange" in str(err.value) and "get_calendar_names" in str(err.value)


def test_plan_without_calendar_and_unknown_window_are_refused():
    with pytest.raises(ConfigError, match="quota_plan needs a calendar"):
        parse_config({**config_data(), "quota_plan": {"desks": {"fx": {"eod": {"nominal_gpus": 1}}}}})
    with pytest.raises(ConfigError, match="quota_plan.desks.fx"):
        parse_config({**config_data(), "calendar": {"exchange": "XNYS"},
                      "quota_plan": {"desks": {"fx": {"lunch": {"nominal_gpus": 1}}}}})


def test_validate_reports_a_window_over_the_fleet(tmp_path, capsys):
    import yaml
    data = {**config_data(), "calendar": {"exchange": "XNYS"},
            "quota_plan": {"desks": {"fx": {"eod": {"nominal_gpus": 1000}}, "ghost": {"eod": {"weight": 2}}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "[nominal_over_fleet] eod:" in err and "[unknown_desk]" in err


def test_quota_plan_prints_an_early_close_day(capsys):
    assert cli.main(["quota-plan", "--config", str(DEFAULT_CONFIG), "--date", "2025-11-28"]) == 0
    out = capsys.readouterr().out
    assert "early close" in out and "eod              13:00 19:00" in out
    assert cli.main(["quota-plan", "--config", str(DEFAULT_CONFIG), "--date", "2025-11-27"]) == 0   # Thanksgiving
    assert "no session" in capsys.readouterr().out


def test_borrowed_gpus_ride_on_the_last_admission_only():
    from rayfin.controller.chargeback import usage_records
    from rayfin.controller.records import Event

    def ev(seq, ts, state):
        return Event(seq, ts, "j", "fx", "x", state, "", {"gpus": 4, "placement": [["n0-i0", 4]]})
    recs = usage_records([ev(1, 0, "ADMITTED"), ev(2, 10, "PENDING"), ev(3, 20, "RUNNING"), ev(4, 50, "SUCCEEDED")],
                         until=100, node_pool={"n0": "general"}, borrowed={"j": 2})
    assert [(r.start.timestamp(), r.end.timestamp(), dict(r.borrowed), r.pool) for r in recs] == [
        (0, 10, {}, "general"), (20, 50, {UNATTRIBUTED: 2}, "general")]


# ---- chargeback from the ledger --------------------------------------------------------------------
def _direct_gpu_seconds(db, since, until):
    """Straight from the ledger's rows (SQL, no rayfin code): a job holds `gpus` from the event
    that puts it in ADMITTED/RUNNING until one that takes it out; a serving model from its
    `serving_reserved` event until the next event of that model."""
    held, total = {}, Fraction(0)
    rows = sqlite3.connect(db).execute("SELECT ts, job_id, kind, state, data FROM events ORDER BY seq").fetchall()
    for ts, job_id, kind, state, data in rows:
        gpus = json.loads(data).get("gpus") or 0
        serving = job_id.startswith("serve-")
        on = (kind == "serving_reserved") if serving else state in ("ADMITTED", "RUNNING")
        if job_id in held and (serving or not on):
            t0, g = held.pop(job_id)
            total += Fraction(g) * Fraction(max(0.0, min(ts, until) - max(t0, since)))
        if on and job_id not in held:
            held[job_id] = (ts, gpus)
    for t0, g in held.values():
        total += Fraction(g) * Fraction(max(0.0, until - max(t0, since)))
    return total


@pytest.fixture
def run_ledger(tmp_path):
    core, backend, clock, ledger = controller_env(tmp_path)

    def run(n=1, dt=60.0):
        for _ in range(n):
            core.cycle()
            clock.advance(dt)

    small = core.submit(TOK["risk"], "risk", spec(2))["job_id"]
    borrower = core.submit(TOK["equities"], "equities", spec(8, priority="batch", workers="per_gpu"))["job_id"]
    run(3)
    backend.finish(small)
    run(2)
    lender = core.submit(TOK["fx"], "fx", spec(4))["job_id"]       # reclaims fx's nominal from equities
    run(1)
    backend.finish(borrower)
    run(4)
    ledger.put_serving(ServingReservation("pricer", "equities", 2, 0.5, "n0-i0", clock()),
                       ("serving_reserved", "test"), ts=clock())
    run(3)
    ledger.drop_serving("pricer", ("cancelled", "test", ReasonCode.SERVING_RELEASED), ts=clock())
    run(2)
    return tmp_path / "ledger.db", ledger, clock, {"small": small, "borrower": borrower, "lender": lender}


def _utc(ts):
    return datetime.fromtimestamp(ts, tz=timezone.utc)


@pytest.mark.parametrize("window", [(0.0, None), (1100.0, 1500.0)])
def test_chargeback_reconciles_with_the_ledger_rows(run_ledger, window):
    db, ledger, clock, ids = run_ledger
    since, until = window[0], window[1] or clock()
    records = ledger_usage(ledger, until=until)
    by_desk = chargeback(records, _utc(since), _utc(until), {"default": 2.0}, GroupBy.DESK)
    direct = _direct_gpu_seconds(db, since, until) / 3600
    assert direct > 0 and by_desk.total.gpu_h == sum(r.gpu_h for r in by_desk.rows)
    assert abs(float(by_desk.total.gpu_h) - float(direct)) < 1e-9      # the report == the ledger's rows
    assert reconcile(by_desk, records)                                  # rows == total == records, exactly
    assert by_desk.total.cost == 2 * by_desk.total.gpu_h
    for by in GroupBy:
        rep = chargeback(records, _utc(since), _utc(until), {"default": 2.0}, by)
        assert rep.total.gpu_h == by_desk.total.gpu_h and reconcile(rep, records)


def test_chargeback_splits_batch_serving_preempted_and_borrowed(run_ledger):
    _, ledger, clock, ids = run_ledger
    records = ledger_usage(ledger, until=clock())
    rep = {r.key: r for r in chargeback(records, _utc(0), _utc(clock()), {"default": 1.0}).rows}
    assert rep["equities"].serving_gpu_h == Fraction(1) * Fraction(180, 3600)    # 1 GPU for 3 cycles of 60 s
    assert rep["equities"].preempted_gpu_h > 0 and rep["equities"].borrowed_gpu_h > 0
    # the scheduler named the lender: fx, the other desk of equities' pool (not `(unattributed)`)
    assert UNATTRIBUTED not in rep and rep["fx"].lent_gpu_h == rep["equities"].borrowed_gpu_h
    assert rep["risk"].batch_gpu_h > 0 and rep["fx"].batch_gpu_h > 0 and rep["fx"].preempted_gpu_h == 0


def test_chargeback_cli_json_matches_the_ledger(run_ledger, capsys):
    db, _, clock, _ = run_ledger
    until = clock()
    assert cli.main(["chargeback", "--ledger", str(db), "--since", "0", "--until", str(until),
                     "--format", "json", "--by", "job"]) == 0
    out = json.loads(capsys.readouterr().out)
    direct = float(_direct_gpu_seconds(db, 0.0, until) / 3600)
    assert abs(out["total"]["gpu_hours"] - round(direct, 6)) < 1e-6
    assert abs(sum(r["gpu_hours"] for r in out["rows"]) - out["total"]["gpu_hours"]) < 1e-5


def test_chargeback_cli_never_creates_a_ledger(tmp_path, capsys):
    missing = tmp_path / "nope.db"
    assert cli.main(["chargeback", "--ledger", str(missing), "--since", "0"]) == 2
    assert "no ledger at" in capsys.readouterr().err and not missing.exists()
