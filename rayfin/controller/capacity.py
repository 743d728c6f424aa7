"""The capacity loop: asks Ray's autoscaler for capacity ahead of forecast demand, per desk
pool, once per forecast bin. The planner is pure (`rayfin.autoscale.step`); its state is
persisted in the ledger so a restarted controller keeps its history. The adapter to Ray and the
gauges are injected: the controller actor passes rayfin.controller.autoscale_ray's, tests fakes,
so this module imports no Ray."""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Protocol

from rayfin.autoscale import AutoscaleState, CapacityRequest, Observations, parse_autoscaling, step
from rayfin.config import RayfinConfig
from rayfin.controller.ledger import Ledger
from rayfin.errors import RayfinError

log = logging.getLogger("rayfin.controller")


class CapacityAdapter(Protocol):
    def apply(self, request: CapacityRequest) -> Any: ...


class CapacityLoop:
    KEY = "autoscale_state"

    def __init__(self, config: RayfinConfig, ledger: Ledger, adapter: CapacityAdapter,
                 record: Callable[[CapacityRequest], None]) -> None:
        self.settings = parse_autoscaling(config.autoscaling)
        self.ledger = ledger
        raw = ledger.get_kv(self.KEY)
        self.state = AutoscaleState.from_dict(json.loads(raw)) if raw else AutoscaleState()
        self.adapter = adapter
        self.record = record
        self.next_at = 0.0
        self.last_request: CapacityRequest | None = None

    def due(self, now: float) -> bool:
        return self.settings.enabled and now >= self.next_at

    def step(self, demand: dict[str, float], now: float) -> None:
        self.next_at = now + self.settings.forecast.bin_s
        request, self.state = step(self.state, Observations(pool_demand_gpus=demand), now, self.settings)
        self.ledger.put_kv(self.KEY, json.dumps(self.state.to_dict()).encode())
        self.last_request = request
        try:
            self.adapter.apply(request)
            self.record(request)
        except RayfinError as exc:  # an autoscaler that is not there must not stop scheduling
            log.warning("capacity request not sent: %s", exc)


__all__ = ["CapacityLoop", "CapacityAdapter"]
