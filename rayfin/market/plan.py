"""Quota plans that follow the market clock: per desk, quotas per window of the trading day.

Windows, in the exchange's zone, with bounds relative to each session's real open and close
(so an early close or a holiday moves them):

    intraday         [intraday_start, intraday_end)      default open -> close
    eod              [intraday_end, eod_end)             default close -> close+6h (cut at the next
                                                         session's intraday_start)
    overnight        the rest of the gap to the next session, on session days
    weekend_holiday  the same gap on local days that have no session (weekends, holidays:
                     local midnight to midnight)

A desk's `WindowQuota` overrides any of `nominal_gpus`, `borrowing_limit`, `lending_limit`,
`weight` and its serving quotas in that window; a field left unset keeps the desk's base value
(its `DeskQuota`, from the config's `desks:`). `check_fits` says, window by window, whether the
quotas still fit the fleet (sum of nominals <= GPUs, serving reservations within nominal).

Pure: the clock (`t`) is passed in; nothing here imports Ray.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from enum import Enum
from typing import Any, Mapping

from pydantic import (Field, SerializerFunctionWrapHandler, ValidationError, field_validator, model_serializer,
                      model_validator)

from rayfin.config_base import ConfigModel, config_error_from
from rayfin.market.calendar import MarketCalendar, MarketOffset, Session
from rayfin.market.errors import CalendarError
from rayfin.policy.model import DeskQuota

_DAY = timedelta(days=1)


class WindowName(str, Enum):
    INTRADAY = "intraday"
    EOD = "eod"
    OVERNIGHT = "overnight"
    WEEKEND_HOLIDAY = "weekend_holiday"


# ---- settings (pydantic: validated at the edge, errors with field paths) ----------------------

class _Model(ConfigModel):
    """The config's one base (frozen, a misspelt field is an error): these are config sections."""


class CalendarSettings(_Model):
    exchange: str = Field("XNYS", min_length=2, description="an exchange_calendars code, e.g. XNYS, XLON")

    @field_validator("exchange")
    @classmethod
    def _known(cls, v: str) -> str:
        from rayfin.market.calendar import valid_exchanges
        if v not in valid_exchanges():
            raise ValueError(f"unknown exchange code {v!r}; list the valid ones with "
                             "python -c 'import exchange_calendars as xc; print(xc.get_calendar_names())'")
        return v


class _Override(_Model):
    """Overrides: a field left out keeps the desk's base value, and a null one (borrowing_limit,
    lending_limit) means "no limit". Serialized with only the fields that were set, so a dump and
    re-parse (the controller actor gets its config that way) keeps that difference."""

    @model_serializer(mode="wrap")
    def _only_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


class ServingOverride(_Override):
    """Serving quotas of a desk in one window; unset fields keep the desk's configured ones."""

    gpus: float | None = Field(None, ge=0, description="GPUs reserved for the desk's inference replicas")
    requests_per_s: float | None = Field(None, gt=0)
    burst: int | None = Field(None, ge=1)
    max_in_flight: int | None = Field(None, ge=1)


class WindowQuota(_Override):
    nominal_gpus: float | None = Field(None, ge=0)
    borrowing_limit: float | None = Field(None, ge=0)
    lending_limit: float | None = Field(None, ge=0)
    weight: float | None = Field(None, gt=0, le=1000)
    serving: ServingOverride | None = None


class WindowBounds(_Model):
    intraday_start: str = "open"
    intraday_end: str = "close"
    eod_end: str = "close+6h"

    @field_validator("intraday_start", "intraday_end", "eod_end")
    @classmethod
    def _offset(cls, v: str) -> str:
        MarketOffset.parse(v)
        return v

    @model_validator(mode="after")
    def _order(self) -> "WindowBounds":
        # checked on a regular 6.5 h session: start < end <= eod_end
        s = Session(date(2025, 1, 2), datetime(2025, 1, 2, 14, 30), datetime(2025, 1, 2, 21, 0))
        a, b, c = (MarketOffset.parse(x).at(s) for x in (self.intraday_start, self.intraday_end, self.eod_end))
        if not a < b <= c:
            raise ValueError(f"window bounds must satisfy intraday_start < intraday_end <= eod_end on a regular "
                             f"session; got {self.intraday_start}, {self.intraday_end}, {self.eod_end}")
        return self


class QuotaPlan(_Model):
    """Per desk, per window: the quota overrides. Desks or windows not named keep base quotas."""

    bounds: WindowBounds = WindowBounds()
    desks: dict[str, dict[WindowName, WindowQuota]] = Field(default_factory=dict)


class MarketSettings(_Model):
    calendar: CalendarSettings = CalendarSettings()
    quota_plan: QuotaPlan = QuotaPlan()


def parse_market(data: Any, source: str = "<config>") -> MarketSettings:
    """Validate a mapping into MarketSettings; a ConfigError names every bad field's path."""
    try:
        return MarketSettings.model_validate(data or {})
    except ValidationError as exc:
        raise config_error_from(exc, source) from None


# ---- the timeline -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    name: WindowName
    start: datetime     # UTC
    end: datetime       # UTC, exclusive
    session: date | None = None   # the session the window belongs to (intraday, eod); None in gaps

    def __contains__(self, t: datetime) -> bool:
        return self.start <= t < self.end


def timeline(cal: MarketCalendar, bounds: WindowBounds, start: datetime, end: datetime) -> tuple[Window, ...]:
    """Windows covering [start, end), cut to it; neighbours of the same name are merged."""
    d0, d1 = cal.local_date(start) - timedelta(days=10), cal.local_date(end) + timedelta(days=10)
    d0, d1 = max(d0, cal.first), min(d1, cal.last)
    sessions = cal.sessions(d0, d1)
    if len(sessions) < 2:
        raise CalendarError(f"calendar.exchange: fewer than two {cal.exchange} sessions around {start} to {end}",
                            path="calendar.exchange")
    a_off, b_off, e_off = (MarketOffset.parse(x) for x in (bounds.intraday_start, bounds.intraday_end, bounds.eod_end))
    raw: list[Window] = []
    for s, nxt in zip(sessions, sessions[1:]):
        a, b = a_off.at(s), b_off.at(s)
        a_next = a_off.at(nxt)
        e = min(e_off.at(s), a_next)
        raw.append(Window(WindowName.INTRADAY, a, b, s.date))
        if e > b:
            raw.append(Window(WindowName.EOD, b, e, s.date))
        raw.extend(_gap(cal, e, a_next))
    out: list[Window] = []
    for w in raw:
        if w.end <= start or w.start >= end:
            continue
        w = replace(w, start=max(w.start, start), end=min(w.end, end))
        if out and out[-1].name is w.name and out[-1].end == w.start and w.name in (WindowName.OVERNIGHT,
                                                                                     WindowName.WEEKEND_HOLIDAY):
            out[-1] = replace(out[-1], end=w.end)
        else:
            out.append(w)
    return tuple(out)


def _gap(cal: MarketCalendar, a: datetime, b: datetime) -> list[Window]:
    """[a, b) between two sessions: local days without a session are weekend_holiday."""
    out, t = [], a
    while t < b:
        d = cal.local_date(t)
        midnight = min(cal.local_midnight(d + _DAY), b)
        name = WindowName.OVERNIGHT if cal.session(d) is not None else WindowName.WEEKEND_HOLIDAY
        out.append(Window(name, t, midnight))
        t = midnight
    return out


def windows_of(cal: MarketCalendar, bounds: WindowBounds, d: date) -> tuple[Window, ...]:
    """The windows of local date `d` (midnight to midnight in the exchange's zone)."""
    return timeline(cal, bounds, cal.local_midnight(d), cal.local_midnight(d + _DAY))


def window_at(cal: MarketCalendar, bounds: WindowBounds, t: datetime) -> Window:
    """The window in force at `t`, whole (not cut at t)."""
    for w in timeline(cal, bounds, t - timedelta(days=5), t + timedelta(days=5)):
        if t in w:
            return w
    raise CalendarError(f"no window at {t}", path="calendar.exchange")


def next_switch(cal: MarketCalendar, bounds: WindowBounds, t: datetime) -> tuple[datetime, WindowName]:
    """When the window in force at `t` ends, and the name of the one that follows."""
    ws = timeline(cal, bounds, t, t + timedelta(days=12))
    for w, nxt in zip(ws, ws[1:]):
        if t in w:
            return nxt.start, nxt.name
    raise CalendarError(f"no window switch within 12 days after {t}", path="calendar.exchange")


# ---- quotas in force --------------------------------------------------------------------------

def quotas_in(plan: QuotaPlan, base: Mapping[str, DeskQuota], window: WindowName) -> dict[str, DeskQuota]:
    """Each desk's DeskQuota in `window`: the base with the window's overrides applied, and the
    desk's largest ceiling over all windows (`plan_ceiling`, set where it is above this window's),
    so work that fits a later window waits for it rather than being refused."""
    ceilings: dict[str, float] = {}
    for w in WindowName:
        for name, q in _overridden(plan, base, w).items():
            ceilings[name] = max(ceilings.get(name, 0.0), q.max_gpus)
    out = _overridden(plan, base, window)
    return {name: replace(q, plan_ceiling=ceilings[name]) if ceilings[name] > q.max_gpus else q
            for name, q in out.items()}


def _overridden(plan: QuotaPlan, base: Mapping[str, DeskQuota], window: WindowName) -> dict[str, DeskQuota]:
    out = {}
    for name, q in base.items():
        o = plan.desks.get(name, {}).get(window)
        if o is None:
            out[name] = q
            continue
        out[name] = replace(q, nominal=q.nominal if o.nominal_gpus is None else float(o.nominal_gpus),
                            borrowing_limit=q.borrowing_limit if "borrowing_limit" not in o.model_fields_set
                            else o.borrowing_limit,
                            lending_limit=q.lending_limit if "lending_limit" not in o.model_fields_set
                            else o.lending_limit,
                            weight=q.weight if o.weight is None else float(o.weight))
    return out


def serving_gpus_in(plan: QuotaPlan, window: WindowName) -> dict[str, float]:
    """GPUs each desk reserves for serving in `window` (desks that set `serving.gpus` only)."""
    out = {}
    for name, per in plan.desks.items():
        o = per.get(window)
        if o is not None and o.serving is not None and o.serving.gpus is not None:
            out[name] = float(o.serving.gpus)
    return out


class FitCode(str, Enum):
    FITS = "fits"
    NOMINAL_OVER_FLEET = "nominal_over_fleet"
    SERVING_OVER_NOMINAL = "serving_over_nominal"
    UNKNOWN_DESK = "unknown_desk"


@dataclass(frozen=True)
class FitProblem:
    code: FitCode
    window: WindowName | None
    desk: str | None
    text: str


@dataclass(frozen=True)
class FitReport:
    problems: tuple[FitProblem, ...]
    nominal_by_window: Mapping[WindowName, float]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_fits(plan: QuotaPlan, base: Mapping[str, DeskQuota], fleet_gpus: float) -> FitReport:
    """Every window's quotas fit the fleet: sum of nominals <= fleet_gpus, and a desk's serving
    reservation <= its nominal in that window (serving GPUs are guaranteed, never borrowed)."""
    problems: list[FitProblem] = []
    for desk in plan.desks:
        if desk not in base:
            problems.append(FitProblem(FitCode.UNKNOWN_DESK, None, desk,
                                       f"quota_plan names desk {desk!r}, which is not configured; "
                                       f"configured desks: {', '.join(sorted(base))}"))
    totals = {}
    for w in WindowName:
        q = quotas_in(plan, base, w)
        total = sum(d.nominal for d in q.values())
        totals[w] = total
        if total > fleet_gpus + 1e-9:
            # e.g. eod: risk 300 + 5 desks x 60 = 600 > 568 GPUs
            problems.append(FitProblem(FitCode.NOMINAL_OVER_FLEET, w, None,
                                       f"{w.value}: nominal quotas add up to {total:g} GPUs but the fleet has "
                                       f"{fleet_gpus:g}; to fix: lower some desk's nominal_gpus in {w.value}"))
        for desk, g in serving_gpus_in(plan, w).items():
            if desk in q and g > q[desk].nominal + 1e-9:
                problems.append(FitProblem(FitCode.SERVING_OVER_NOMINAL, w, desk,
                                           f"{w.value}: desk {desk} reserves {g:g} serving GPUs above its nominal "
                                           f"{q[desk].nominal:g}; to fix: raise nominal_gpus or lower serving.gpus"))
    return FitReport(tuple(problems), totals)


def format_day(plan: QuotaPlan, base: Mapping[str, DeskQuota], cal: MarketCalendar, d: date) -> str:
    """The windows of local date `d` and each desk's quotas in them (for `rayfin quota-plan`)."""
    ws = windows_of(cal, plan.bounds, d)
    s = cal.session(d)
    head = (f"{cal.exchange} {d.isoformat()} ({cal.tz.key}): "
            + ("no session" if s is None else
               f"open {s.open.astimezone(cal.tz):%H:%M}, close {s.close.astimezone(cal.tz):%H:%M}"
               + (" (early close)" if s.early_close else "")))
    lines = [head]
    desks = sorted(base)
    lines.append(f"{'window':<16} {'from':>5} {'to':>5}  " + "  ".join(f"{n:>18}" for n in desks))
    for w in ws:
        q = quotas_in(plan, base, w.name)
        serve = serving_gpus_in(plan, w.name)
        cells = []
        for n in desks:
            b = "inf" if q[n].borrowing_limit is None else f"{q[n].borrowing_limit:g}"
            cell = f"{q[n].nominal:g}+{b}" + (f" s{serve[n]:g}" if n in serve else "")
            cells.append(f"{cell:>18}")
        end = w.end.astimezone(cal.tz)
        to = "24:00" if end.date() > d else f"{end:%H:%M}"
        lines.append(f"{w.name.value:<16} {w.start.astimezone(cal.tz):%H:%M} {to}  " + "  ".join(cells))
    lines.append("cells: nominal+borrowing_limit [sN: serving GPUs]")
    return "\n".join(lines)
