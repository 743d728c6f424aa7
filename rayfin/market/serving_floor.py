"""How many GPUs the serving desk holds in market hours: the plan's reservation, raised ahead of a
forecast of the demand, with the GPUs taken from the batch desks' nominal quotas.

A quota plan reserves a fixed number of serving GPUs per window; on a day whose open asks for
two or three times that, the demand above the reservation can only borrow, and borrowing never
preempts, so it waits while batch jobs hold the GPUs (docs/market.md, "Serving demand at the
open"). The floor here is decided one `lead_s` (a preemption grace plus a replica's start) ahead
of each demand step from what is known then:

    live      the serving demand level observed at the decision time (the trailing mean the
              replicas are sized from; before the open, the pre-market traffic the gateway sees);
    seasonal  inside the open window only: the highest open-window demand of the last
              `sessions` sessions (the open is the day's peak on most days, and the level just
              before it says little on a day the open jumps);

    floor = min(max_share x fleet, ceil((1 + headroom) x max(live, seasonal)))

The serving desk's nominal is the floor or the plan's reservation, whichever is higher (`gpus`:
what it may reclaim), and the GPUs it holds ready are the floor alone (`warm_gpus`: idle
reservations cost the batch desks, so the plan's reservation is a guarantee, not a hold). Each
value is a `ServingFloor` carrying the reason that set it (`plan`, `live`, `seasonal` or
`capped`). `shift_quotas` moves the floor into the quota map: the
serving desk's nominal rises to it, and the batch desks' nominals shrink in proportion, so the
fleet's total is unchanged and the GPUs come back by the ordinary reclaim (one grace).

`choose_headroom` picks the headroom on tuning days only: the smallest of a grid whose floors
cover every open-window step of those days.

Pure: no clock, no Ray; callers pass the observations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum
from typing import Iterable, Mapping, Sequence

from rayfin.policy.model import DeskQuota


class FloorReason(str, Enum):
    PLAN = "plan"            # the plan's reservation is at least the forecast
    LIVE = "live"            # the observed level, with headroom
    SEASONAL = "seasonal"    # the recent opens' peak, with headroom (open window only)
    CAPPED = "capped"        # the forecast was above max_share of the fleet


@dataclass(frozen=True)
class FloorParams:
    headroom: float = 0.1
    sessions: int = 3                 # recent opens the seasonal term looks at
    lead_s: float = 120.0             # decided this long before the step (grace + replica start)
    open_window_s: float = 1800.0
    max_share: float = 0.75           # of the fleet, whatever the forecast says

    def __post_init__(self) -> None:
        if self.headroom < 0:
            raise ValueError(f"headroom must be >= 0, got {self.headroom}")
        if self.sessions < 0:
            raise ValueError(f"sessions must be >= 0, got {self.sessions}")
        if not 0 < self.max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], got {self.max_share}")


@dataclass(frozen=True)
class ServingFloor:
    gpus: int                         # the serving desk's nominal: at least the plan's reservation
    warm_gpus: int                    # GPUs to hold ready: the forecast with headroom (capped)
    reason: FloorReason
    forecast_gpus: float              # max(live, seasonal) before headroom


def seasonal_peak(past_open_peaks: Sequence[float], sessions: int) -> float:
    """The highest open-window demand of the last `sessions` sessions (0 with none)."""
    recent = list(past_open_peaks)[-sessions:] if sessions else []
    return max(recent, default=0.0)


def serving_floor(plan_gpus: float, live_gpus: float, past_open_peaks: Sequence[float], in_open_window: bool,
                  fleet_gpus: float, p: FloorParams = FloorParams()) -> ServingFloor:
    seasonal = seasonal_peak(past_open_peaks, p.sessions) if in_open_window else 0.0
    forecast = max(live_gpus, seasonal, 0.0)
    want = math.ceil((1.0 + p.headroom) * forecast - 1e-9)
    cap = math.floor(p.max_share * fleet_gpus) if math.isfinite(fleet_gpus) else math.inf
    plan = math.ceil(plan_gpus - 1e-9)
    warm = int(min(want, cap))
    if want <= plan:
        return ServingFloor(plan, warm, FloorReason.PLAN, forecast)
    if want > cap:
        return ServingFloor(max(plan, warm), warm, FloorReason.CAPPED, forecast)
    return ServingFloor(want, warm, FloorReason.SEASONAL if seasonal > live_gpus else FloorReason.LIVE, forecast)


def shift_quotas(quotas: Mapping[str, DeskQuota], serve_desk: str, floor_gpus: float,
                 donors: Iterable[str]) -> dict[str, DeskQuota]:
    """The quota map with `serve_desk`'s nominal raised to `floor_gpus` (never lowered) and the
    raise taken from `donors`' nominals in proportion to them (none goes below 0; the total is
    unchanged unless the donors hold less than the raise, when they all go to 0)."""
    out = dict(quotas)
    cur = out[serve_desk].nominal
    need = floor_gpus - cur
    if need <= 0:
        return out
    donors = [d for d in donors if d != serve_desk and out[d].nominal > 0]
    pool = sum(out[d].nominal for d in donors)
    if pool <= 0:
        return out
    take = min(need, pool)
    for d in donors:
        out[d] = replace(out[d], nominal=out[d].nominal * (1.0 - take / pool))
    out[serve_desk] = replace(out[serve_desk], nominal=cur + take)
    return out


def choose_headroom(opens: Sequence[tuple[float, float, Sequence[float]]], plan_gpus: float, fleet_gpus: float,
                    grid: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5), p: FloorParams = FloorParams()) -> float:
    """The smallest headroom of `grid` whose floors cover every step: `opens` holds, for each
    open-window step of the tuning days, (live level at the decision time, demand at the step,
    the past sessions' open peaks then). The last of the grid if none covers them all."""
    for h in grid:
        q = replace(p, headroom=h)
        if all(serving_floor(plan_gpus, live, past, True, fleet_gpus, q).gpus >= demand
               for live, demand, past in opens):
            return h
    return grid[-1]


__all__ = ["FloorParams", "FloorReason", "ServingFloor", "choose_headroom", "seasonal_peak", "serving_floor",
           "shift_quotas"]
