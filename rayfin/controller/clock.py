"""The controller's clock: real time, or a drill's shifted clock that survives restarts."""
from __future__ import annotations

import json
import time
from typing import Any, Callable

from rayfin.config import RayfinConfig

CLOCK_KEY = "controller_clock"


def controller_clock(config: RayfinConfig, started_at: float, ledger: Any = None,
                     session: str = "") -> Callable[[], float]:
    """Epoch seconds as the controller sees them: real time, or, with `controller.clock_start`
    (drills and tests), real time shifted so that the first start-up reads that instant. The
    shift is kept in the ledger (`CLOCK_KEY`): a restarted controller goes on from where the
    drill's clock is, not back to `clock_start` (every date in the ledger would be in its future:
    timeouts, graces and attained service would go wrong). A new `clock_start`, or a new
    `session` (a digest of the deploy key: one per `rayfin up`, kept by its supervisor's
    restarts), starts a new shift: a drill run again on an old ledger starts at `clock_start`."""
    start = config.controller.clock_start
    if start is None:
        return time.time
    offset = start.timestamp() - started_at
    if ledger is not None:
        raw = ledger.get_kv(CLOCK_KEY)
        try:
            saved = json.loads(raw) if raw else None
        except ValueError:
            saved = None
        if isinstance(saved, dict) and saved.get("clock_start") == start.isoformat() \
                and saved.get("session", "") == session and isinstance(saved.get("offset"), (int, float)):
            offset = float(saved["offset"])
        else:
            ledger.put_kv(CLOCK_KEY, json.dumps({"clock_start": start.isoformat(), "session": session,
                                                 "offset": offset}).encode())
    return lambda: time.time() + offset


__all__ = ["CLOCK_KEY", "controller_clock"]
