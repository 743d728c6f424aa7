"""rayfin on the market's clock: calendar, quota plans, deadlines, chargeback, audit replay.

Pure (no Ray): the controller, config and CLI wiring is a separate step (docs/market.md).
"""
from rayfin.market.calendar import Anchor, MarketCalendar, MarketOffset, Session
from rayfin.market.errors import CalendarError, DeadlineInfeasible
from rayfin.market.plan import (FitCode, FitReport, MarketSettings, QuotaPlan, Window, WindowName, WindowQuota,
                                check_fits, format_day, next_switch, parse_market, quotas_in, timeline, window_at,
                                windows_of)

__all__ = ["Anchor", "CalendarError", "DeadlineInfeasible", "FitCode", "FitReport", "MarketCalendar", "MarketOffset",
           "MarketSettings", "QuotaPlan", "Session", "Window", "WindowName", "WindowQuota", "check_fits", "format_day",
           "next_switch", "parse_market", "quotas_in", "timeline", "window_at", "windows_of"]
