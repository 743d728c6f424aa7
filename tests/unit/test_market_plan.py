"""rayfin.market calendar and quota plans, on the library's XNYS calendar (no Ray, no clock).

XNYS: regular session 09:30-16:00 America/New_York (EST, UTC-5 in late November);
2025-11-28 closes early at 13:00; 2025-11-27 (Thanksgiving) and 2025-12-25 are holidays.
"""
from __future__ import annotations

import ast
import pathlib
from datetime import date, datetime, timezone

import pytest

from rayfin.errors import ConfigError
from rayfin.market import (CalendarError, FitCode, MarketCalendar, MarketOffset, QuotaPlan, WindowName, check_fits,
                           format_day, next_switch, parse_market, quotas_in, window_at, windows_of)
from rayfin.market.plan import WindowBounds
from rayfin.policy.model import DeskQuota

UTC = timezone.utc
XNYS = MarketCalendar.get("XNYS")
B = WindowBounds()
I, E, O, W = WindowName.INTRADAY, WindowName.EOD, WindowName.OVERNIGHT, WindowName.WEEKEND_HOLIDAY  # noqa: E741 - the windows by initial, as the tables below read


def _local(ws):
    return [(w.name, w.start.astimezone(XNYS.tz).strftime("%H:%M"), w.end.astimezone(XNYS.tz).strftime("%H:%M"))
            for w in ws]


@pytest.mark.parametrize("day, want", [
    # normal day: 00:00 overnight, open 09:30, close 16:00, eod to 16:00 + 6 h = 22:00, overnight to midnight
    (date(2025, 11, 25), [(O, "00:00", "09:30"), (I, "09:30", "16:00"), (E, "16:00", "22:00"), (O, "22:00", "00:00")]),
    # early close 13:00: intraday shrinks and eod moves to 13:00 + 6 h = 19:00
    (date(2025, 11, 28), [(O, "00:00", "09:30"), (I, "09:30", "13:00"), (E, "13:00", "19:00"), (O, "19:00", "00:00")]),
    # holidays and weekends: one weekend_holiday window, midnight to midnight
    (date(2025, 11, 27), [(W, "00:00", "00:00")]),
    (date(2025, 12, 25), [(W, "00:00", "00:00")]),
    (date(2025, 11, 29), [(W, "00:00", "00:00")]),
])
def test_windows_of_a_day(day, want):
    assert _local(windows_of(XNYS, B, day)) == want


def test_sessions_from_the_library():
    s = XNYS.session(date(2025, 11, 28))
    assert s.early_close and s.hours == 3.5     # 09:30 -> 13:00
    assert XNYS.session(date(2025, 11, 25)).hours == 6.5 and not XNYS.session(date(2025, 11, 25)).early_close
    assert XNYS.session(date(2025, 12, 25)) is None


@pytest.mark.parametrize("t, want_window, want_next", [
    # Tue 15:00 local = 20:00Z: intraday, next is eod at 16:00 local = 21:00Z
    (datetime(2025, 11, 25, 20, 0, tzinfo=UTC), I, (datetime(2025, 11, 25, 21, 0, tzinfo=UTC), E)),
    # Wed 23:00 local = Thu 04:00Z: overnight until Thanksgiving's midnight (05:00Z), then weekend_holiday
    (datetime(2025, 11, 27, 4, 0, tzinfo=UTC), O, (datetime(2025, 11, 27, 5, 0, tzinfo=UTC), W)),
    # Fri 28 12:00 local = 17:00Z: intraday of the early-close day; eod starts at 13:00 local = 18:00Z
    (datetime(2025, 11, 28, 17, 0, tzinfo=UTC), I, (datetime(2025, 11, 28, 18, 0, tzinfo=UTC), E)),
])
def test_window_at_and_next_switch(t, want_window, want_next):
    assert window_at(XNYS, B, t).name is want_window
    assert next_switch(XNYS, B, t) == want_next


def test_custom_bounds_move_with_the_session():
    b = WindowBounds(intraday_start="open-30m", intraday_end="close+15m", eod_end="close+4h")
    # early close 13:00: intraday 09:00 -> 13:15, eod 13:15 -> 17:00
    assert _local(windows_of(XNYS, b, date(2025, 11, 28)))[1:3] == [(I, "09:00", "13:15"), (E, "13:15", "17:00")]


@pytest.mark.parametrize("text, anchor, off", [("open", "open", 0.0), ("open-30m", "open", -1800.0),
                                               ("close+2h", "close", 7200.0), ("close + 90s", "close", 90.0)])
def test_market_offset_parse(text, anchor, off):
    m = MarketOffset.parse(text)
    assert (m.anchor.value, m.offset_s) == (anchor, off)


def test_bad_exchange_code_is_a_config_error_naming_the_field():
    with pytest.raises(CalendarError) as exc:
        MarketCalendar.get("XXXX")
    assert isinstance(exc.value, ConfigError) and exc.value.path == "calendar.exchange"
    assert "get_calendar_names" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        parse_market({"calendar": {"exchange": "NOPE"}}, "cfg.yaml")
    assert exc.value.path == "calendar.exchange" and "get_calendar_names" in str(exc.value)


def test_plan_validation_gives_field_paths():
    with pytest.raises(ConfigError) as exc:
        parse_market({"quota_plan": {"desks": {"risk": {"eod": {"nominal_gpus": -1}}}}})
    assert exc.value.path == "quota_plan.desks.risk.eod.nominal_gpus"
    with pytest.raises(ConfigError) as exc:
        parse_market({"quota_plan": {"desks": {"risk": {"lunch": {"nominal_gpus": 1}}}}})
    assert "quota_plan.desks.risk" in exc.value.path


BASE = {"eq": DeskQuota("eq", 24.0), "risk": DeskQuota("risk", 8.0), "serve": DeskQuota("serve", 0.0)}
PLAN = QuotaPlan.model_validate({"desks": {
    "risk": {"eod": {"nominal_gpus": 24, "borrowing_limit": 0}, "overnight": {"nominal_gpus": 16}},
    "eq": {"eod": {"nominal_gpus": 8}, "overnight": {"nominal_gpus": 16}, "intraday": {"nominal_gpus": 16}},
    "serve": {"intraday": {"nominal_gpus": 16, "serving": {"gpus": 16}}},
}})


def test_quotas_in_windows_override_only_what_they_set():
    q = quotas_in(PLAN, BASE, E)
    assert (q["risk"].nominal, q["risk"].borrowing_limit, q["eq"].nominal) == (24.0, 0.0, 8.0)
    assert quotas_in(PLAN, BASE, W) == BASE            # no weekend overrides: base quotas
    assert quotas_in(PLAN, BASE, O)["risk"].borrowing_limit is None   # not set in overnight: base (no limit)


@pytest.mark.parametrize("fleet, codes", [
    # intraday 16 + 8 + 16 = 40, eod 8 + 24 + 0 = 32, overnight 16 + 16 = 32, weekend 24 + 8 = 32
    (40, []),
    (32, [(FitCode.NOMINAL_OVER_FLEET, I)]),   # 40 > 32
    (30, [(FitCode.NOMINAL_OVER_FLEET, w) for w in (I, E, O, W)]),
])
def test_check_fits(fleet, codes):
    r = check_fits(PLAN, BASE, fleet)
    assert [(p.code, p.window) for p in r.problems] == codes and r.ok == (not codes)
    assert r.nominal_by_window[I] == 40.0


def test_check_fits_serving_over_nominal_and_unknown_desk():
    plan = QuotaPlan.model_validate({"desks": {"serve": {"intraday": {"serving": {"gpus": 4}}},   # nominal 0 < 4
                                               "fx": {"eod": {"nominal_gpus": 1}}}})
    codes = {(p.code, p.desk) for p in check_fits(plan, BASE, 100).problems}
    assert codes == {(FitCode.SERVING_OVER_NOMINAL, "serve"), (FitCode.UNKNOWN_DESK, "fx")}


def test_format_day_shows_the_early_close():
    text = format_day(PLAN, BASE, XNYS, date(2025, 11, 28))
    assert "close 13:00 (early close)" in text and "eod              13:00 19:00" in text
    assert "no session" in format_day(PLAN, BASE, XNYS, date(2025, 12, 25))


def test_market_core_imports_no_ray():
    for path in pathlib.Path("rayfin/market").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in names if m == "ray" or m.startswith("ray.")], path
