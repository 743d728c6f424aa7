"""The drill clock (`controller.clock_start`) goes on across controller restarts."""
from __future__ import annotations

from datetime import datetime, timezone

from rayfin.controller.clock import CLOCK_KEY, controller_clock
from rayfin.controller.ledger import SqliteLedger
from tests.support.builders import config


def _drill(start: datetime):
    cfg = config()
    return cfg.model_copy(update={"controller": cfg.controller.model_copy(update={"clock_start": start})})


def test_a_restarted_controller_keeps_the_drills_clock_going(tmp_path, monkeypatch):
    start = datetime(2025, 11, 28, 12, 55, tzinfo=timezone.utc)
    now = [1_000_000.0]
    monkeypatch.setattr("rayfin.controller.clock.time.time", lambda: now[0])
    ledger = SqliteLedger(tmp_path / "ledger.db")
    first = controller_clock(_drill(start), now[0], ledger)
    assert first() == start.timestamp()
    now[0] += 600                                    # ten minutes into the drill, it restarts
    again = controller_clock(_drill(start), now[0], SqliteLedger(tmp_path / "ledger.db"))
    assert again() == start.timestamp() + 600        # not back to clock_start
    assert ledger.get_kv(CLOCK_KEY)


def test_a_new_clock_start_starts_a_new_shift_and_real_time_is_untouched(tmp_path, monkeypatch):
    now = [2_000_000.0]
    monkeypatch.setattr("rayfin.controller.clock.time.time", lambda: now[0])
    ledger = SqliteLedger(tmp_path / "ledger.db")
    a = datetime(2025, 11, 28, 9, 0, tzinfo=timezone.utc)
    controller_clock(_drill(a), now[0], ledger)
    now[0] += 60
    b = datetime(2025, 12, 1, 9, 0, tzinfo=timezone.utc)
    assert controller_clock(_drill(b), now[0], ledger)() == b.timestamp()
    assert controller_clock(config(), now[0], ledger)() == now[0]


def test_a_new_session_on_an_old_ledger_starts_at_clock_start(tmp_path, monkeypatch):
    start = datetime(2025, 11, 28, 12, 55, tzinfo=timezone.utc)
    now = [3_000_000.0]
    monkeypatch.setattr("rayfin.controller.clock.time.time", lambda: now[0])
    ledger = SqliteLedger(tmp_path / "ledger.db")
    controller_clock(_drill(start), now[0], ledger, "run-1")
    now[0] += 86_400                                 # the drill run again the next day
    assert controller_clock(_drill(start), now[0], ledger, "run-2")() == start.timestamp()
    now[0] += 60                                     # ... and its controller restarted
    assert controller_clock(_drill(start), now[0], ledger, "run-2")() == start.timestamp() + 60
