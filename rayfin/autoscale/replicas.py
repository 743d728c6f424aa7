"""Replica (or bundle) count from current and forecast load, with hysteresis. Pure arithmetic.

    need = max(current_load, forecast_load) / load_per_replica
    want = clamp(ceil(need - slack), min_replicas, min(max_replicas, quota_replicas))

Scale up at once: the forecast already looked one lead time ahead, waiting would waste it.
Scale down only when (a) one replica fewer would still leave `downscale_band` headroom,
need <= (current - 1) * (1 - band), so the count does not flap around an integer boundary, and
(b) that has held for `downscale_hold_s` without interruption. A count above the cap (quota
lowered) comes down at once.

The Serve policy uses it for replicas (load = ongoing requests); the capacity planner uses it
for GPU bundles of a pool (load = GPUs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

_EPS = 1e-9


@dataclass(frozen=True)
class ReplicaParams:
    load_per_replica: float
    min_replicas: int = 0
    max_replicas: int = 1_000_000
    quota_replicas: int | None = None       # the desk's quota, in replicas
    downscale_hold_s: float = 120.0
    downscale_band: float = 0.1
    slack: float = 0.0                       # fraction of a replica ignored when rounding up

    def __post_init__(self) -> None:
        if self.load_per_replica <= 0:
            raise ValueError(f"load_per_replica must be > 0; got {self.load_per_replica}")
        if self.min_replicas < 0 or self.max_replicas < self.min_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas; got {self.min_replicas}, {self.max_replicas}")

    @property
    def cap(self) -> int:
        cap = self.max_replicas if self.quota_replicas is None else min(self.max_replicas, self.quota_replicas)
        return max(cap, 0)


@dataclass(frozen=True)
class ReplicaDecision:
    replicas: int
    need: float                              # fractional replicas the larger load needs
    reasons: tuple[str, ...]
    below_since: float | None                # start of the current run of "could scale down"

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def decide_replicas(current_load: float, forecast_load: float, current_replicas: int, now: float,
                    params: ReplicaParams, below_since: float | None = None) -> ReplicaDecision:
    load = max(current_load, forecast_load, 0.0)
    driver = "forecast" if forecast_load > current_load else "current"
    need = load / params.load_per_replica
    cap = params.cap
    want = math.ceil(need - params.slack - _EPS)
    why = [f"need max(current {current_load:.3g}, forecast {forecast_load:.3g}) / "
           f"{params.load_per_replica:g} = {need:.3g} ({driver} load)"]
    if want > cap:
        why.append(f"capped at {cap} (max_replicas {params.max_replicas}, quota {params.quota_replicas})")
        want = cap
    if want < min(params.min_replicas, cap):
        want = min(params.min_replicas, cap)
        why.append(f"raised to min_replicas {want}")
    if current_replicas > cap:
        return ReplicaDecision(cap, need, (*why, f"down to cap {cap} now (over quota)"), None)
    if want > current_replicas:
        return ReplicaDecision(want, need, (*why, f"up {current_replicas} -> {want} now"), None)
    if want == current_replicas:
        return ReplicaDecision(current_replicas, need, (*why, "hold"), None)
    # want < current: hysteresis
    if need > (current_replicas - 1) * (1 - params.downscale_band) + _EPS:
        return ReplicaDecision(current_replicas, need,
                               (*why, f"hold {current_replicas}: within {params.downscale_band:.0%} band"), None)
    since = now if below_since is None else below_since
    waited = now - since
    if waited + _EPS >= params.downscale_hold_s:
        return ReplicaDecision(want, need, (*why, f"down {current_replicas} -> {want} after {waited:.0f}s lower"), None)
    return ReplicaDecision(current_replicas, need,
                           (*why, f"hold {current_replicas}: lower for {waited:.0f}s of {params.downscale_hold_s:.0f}s"),
                           since)
