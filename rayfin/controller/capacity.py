"""The capacity loop: asks Ray's autoscaler for capacity ahead of forecast demand, per desk
pool, once per forecast bin. The planner is pure (`rayfin.autoscale.step`); its state is
persisted in the ledger so a restarted controller keeps its history. The adapter to Ray and the
gauges are injected: the controller actor passes rayfin.controller.autoscale_ray's, tests fakes,
so this module imports no Ray.

Each desk's serving request rate comes from the quota broker's admitted-request counters
(serve_apps/admission.py `LocalBroker.request_counts`), read once per bin by the injected
`read_counts` (None: serving is not up, and the planner sees no desk rates). `request_rates`
turns two readings into requests/s over the bin: pure arithmetic, the clock passed in."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from rayfin.autoscale import AutoscaleState, CapacityRequest, Observations, parse_autoscaling, step
from rayfin.config import RayfinConfig
from rayfin.controller.ledger import Ledger
from rayfin.errors import RayfinError

log = logging.getLogger("rayfin.controller")


class CapacityAdapter(Protocol):
    def apply(self, request: CapacityRequest) -> Any: ...


@dataclass(frozen=True)
class DeskCounts:
    """Requests admitted per desk since `since` (wall time, when the broker started counting)."""

    since: float
    counts: Mapping[str, int]


@dataclass(frozen=True)
class CountReading:
    """A `DeskCounts` and when (controller clock) it was read."""

    at: float
    counts: DeskCounts


def request_rates(previous: CountReading | None, current: DeskCounts, now: float,
                  max_gap_s: float) -> dict[str, float]:
    """Requests/s per desk between two readings of the broker's counters.

    Against the previous reading of the same broker (same `since`): the counts' increase over
    the time between the readings. Without one (the first reading, or a new broker whose counts
    started again from zero): the counts over the time since the broker started, when that is
    at most `max_gap_s` ago; an older broker's counts span too long to be a rate now, so they
    are only the baseline for the next reading (no rates).
    """
    if previous is not None and previous.counts.since == current.since:
        dt = now - previous.at
        before = previous.counts.counts
    elif 0.0 < now - current.since <= max_gap_s:
        dt = now - current.since
        before = {}
    else:
        return {}
    if dt <= 0:
        return {}
    return {d: max(0, n - before.get(d, 0)) / dt for d, n in sorted(current.counts.items())}


class CapacityLoop:
    KEY = "autoscale_state"

    def __init__(self, config: RayfinConfig, ledger: Ledger, adapter: CapacityAdapter,
                 record: Callable[[CapacityRequest], None],
                 read_counts: Callable[[], DeskCounts | None] | None = None) -> None:
        self.settings = parse_autoscaling(config.autoscaling)
        self.ledger = ledger
        raw = ledger.get_kv(self.KEY)
        self.state = AutoscaleState.from_dict(json.loads(raw)) if raw else AutoscaleState()
        self.adapter = adapter
        self.record = record
        self.next_at = 0.0
        self.last_request: CapacityRequest | None = None
        self.read_counts = read_counts
        self.last_counts: CountReading | None = None

    def due(self, now: float) -> bool:
        return self.settings.enabled and now >= self.next_at

    def desk_rates(self, now: float) -> dict[str, float]:
        """Each desk's request rate over the last bin; {} when serving is not up or unreadable."""
        if self.read_counts is None:
            return {}
        try:
            counts = self.read_counts()
        except Exception as exc:  # noqa: BLE001 - serving down or restarting must not stop scheduling
            log.warning("desk request counts not read: %s", exc)
            return {}
        if counts is None:
            return {}
        rates = request_rates(self.last_counts, counts, now, max_gap_s=2 * self.settings.forecast.bin_s)
        self.last_counts = CountReading(now, counts)
        return rates

    def step(self, demand: dict[str, float], now: float, floor: Mapping[str, float] | None = None) -> None:
        """One planning bin; `floor`: GPUs per pool to hold ready whatever the forecast (the next
        quota window's serving reservations, rayfin.controller.market_clock.prewarm_floor)."""
        self.next_at = now + self.settings.forecast.bin_s
        obs = Observations(pool_demand_gpus=demand, desk_request_rate=self.desk_rates(now),
                           floor_gpus=dict(floor or {}))
        request, self.state = step(self.state, obs, now, self.settings)
        self.ledger.put_kv(self.KEY, json.dumps(self.state.to_dict()).encode())
        self.last_request = request
        try:
            self.adapter.apply(request)
            self.record(request)
        except RayfinError as exc:  # an autoscaler that is not there must not stop scheduling
            log.warning("capacity request not sent: %s", exc)


__all__ = ["CapacityLoop", "CapacityAdapter", "CountReading", "DeskCounts", "request_rates"]
