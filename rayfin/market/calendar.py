"""Trading sessions of one exchange, from `exchange_calendars` (holidays and early closes included).

    cal = MarketCalendar.get("XNYS")
    cal.session(date(2025, 11, 28))   # Session(open=14:30Z, close=18:00Z, early_close=True)
    cal.session(date(2025, 12, 25))   # None: a holiday

Times are timezone-aware datetimes in UTC; `cal.tz` is the exchange's zone (America/New_York for
XNYS), used to read "HH:MM" and calendar dates. The library covers about 20 years back and one
year ahead of today by default; a date outside that is a `CalendarError`, never a guess.

Offsets like "open-30m" or "close+2h" (`MarketOffset`) are relative to a session's real open and
close, so an early close moves them with it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from enum import Enum
from functools import lru_cache
from zoneinfo import ZoneInfo

from rayfin.market.errors import CalendarError

UTC = timezone.utc


@dataclass(frozen=True)
class Session:
    date: date          # the session's date in the exchange's zone
    open: datetime      # UTC
    close: datetime     # UTC
    early_close: bool = False

    @property
    def hours(self) -> float:
        return (self.close - self.open).total_seconds() / 3600.0


class Anchor(str, Enum):
    OPEN = "open"
    CLOSE = "close"


_OFFSET_RE = re.compile(r"^\s*(open|close)\s*(?:([+-])\s*(\d+(?:\.\d+)?)\s*([smh]))?\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class MarketOffset:
    """A time relative to a session: `anchor` plus `offset_s` (negative: before)."""

    anchor: Anchor
    offset_s: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "MarketOffset":
        m = _OFFSET_RE.match(text or "")
        if not m:
            raise ValueError(f"a market offset is 'open' or 'close' with an optional signed amount in s, m or h "
                             f"(e.g. 'open-30m', 'close+2h'); got {text!r}")
        anchor, sign, amount, unit = m.groups()
        off = 0.0 if amount is None else float(amount) * _UNIT_S[unit] * (-1 if sign == "-" else 1)
        return cls(Anchor(anchor), off)

    def at(self, session: Session) -> datetime:
        base = session.open if self.anchor is Anchor.OPEN else session.close
        return base + timedelta(seconds=self.offset_s)

    def __str__(self) -> str:
        if not self.offset_s:
            return self.anchor.value
        s = abs(self.offset_s)
        amount = f"{s / 3600:g}h" if s % 3600 == 0 else f"{s / 60:g}m" if s % 60 == 0 else f"{s:g}s"
        return f"{self.anchor.value}{'-' if self.offset_s < 0 else '+'}{amount}"


def valid_exchanges() -> list[str]:
    import exchange_calendars as xc
    return sorted(xc.get_calendar_names(include_aliases=False))


class MarketCalendar:
    """Sessions of one exchange. Build with `MarketCalendar.get(code)` (cached per code)."""

    def __init__(self, exchange: str, xcal) -> None:
        self.exchange = exchange
        self._xc = xcal
        self.tz = ZoneInfo(str(xcal.tz))
        self.first = xcal.first_session.date()
        self.last = xcal.last_session.date()
        self._early = frozenset(d.date() for d in xcal.early_closes)

    @classmethod
    def get(cls, exchange: str) -> "MarketCalendar":
        return _cached(exchange)

    def _check(self, d: date) -> None:
        if not self.first <= d <= self.last:
            raise CalendarError(f"calendar.exchange: {self.exchange} covers {self.first} to {self.last}; "
                                f"got a date outside it ({d})", path="calendar.exchange",
                                problems=[("calendar.exchange", d.isoformat(), f"{self.first} to {self.last}")])

    def session(self, d: date) -> Session | None:
        """The session on local date `d`, or None (weekend, holiday)."""
        import pandas as pd
        self._check(d)
        ts = pd.Timestamp(d)
        if not self._xc.is_session(ts):
            return None
        o = self._xc.session_open(ts).to_pydatetime().astimezone(UTC)
        c = self._xc.session_close(ts).to_pydatetime().astimezone(UTC)
        return Session(d, o, c, d in self._early)

    def sessions(self, start: date, end: date) -> tuple[Session, ...]:
        """Sessions with start <= date <= end."""
        out, d = [], start
        while d <= end:
            s = self.session(d)
            if s is not None:
                out.append(s)
            d += timedelta(days=1)
        return tuple(out)

    def local_date(self, t: datetime) -> date:
        return _aware(t).astimezone(self.tz).date()

    def next_session(self, t: datetime, anchor: Anchor = Anchor.OPEN) -> Session:
        """The first session whose `anchor` (open or close) is after `t`."""
        d = self.local_date(t) - timedelta(days=1)
        for _ in range(30):
            s = self.session(d)
            if s is not None and (s.open if anchor is Anchor.OPEN else s.close) > _aware(t):
                return s
            d += timedelta(days=1)
        raise CalendarError(f"calendar.exchange: no {self.exchange} session within 30 days after {t}",
                            path="calendar.exchange")

    def previous_session(self, t: datetime) -> Session:
        """The last session that opened at or before `t`."""
        d = self.local_date(t)
        for _ in range(30):
            s = self.session(d)
            if s is not None and s.open <= _aware(t):
                return s
            d -= timedelta(days=1)
        raise CalendarError(f"calendar.exchange: no {self.exchange} session within 30 days before {t}",
                            path="calendar.exchange")

    def local_midnight(self, d: date) -> datetime:
        return datetime(d.year, d.month, d.day, tzinfo=self.tz).astimezone(UTC)


@lru_cache(maxsize=16)
def _cached(exchange: str) -> MarketCalendar:
    import exchange_calendars as xc
    try:
        return MarketCalendar(exchange, xc.get_calendar(exchange))
    except (xc.errors.InvalidCalendarName, KeyError, ValueError) as exc:
        hint = ("valid codes: python -c 'import exchange_calendars as xc; print(xc.get_calendar_names())' "
                "(e.g. XNYS, XLON, XTKS, XHKG, XFRA)")
        raise CalendarError(f"calendar.exchange: unknown exchange {exchange!r} ({type(exc).__name__}); {hint}",
                            path="calendar.exchange",
                            problems=[("calendar.exchange", exchange, hint)]) from None


def _aware(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError(f"times must be timezone-aware (got naive {t.isoformat()}); use datetime(..., tzinfo=UTC)")
    return t
