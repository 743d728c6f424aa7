"""Predictive Ray Serve autoscaling policy (Ray 2.60 public `AutoscalingPolicy`).

Each Serve control-loop tick the policy
  1. feeds the deployment's load, `ctx.total_num_requests` (ongoing = running + queued), to an
     online forecaster (daily + weekly seasonality, level-shift detection; rayfin.forecast)
     whose state lives in `ctx.policy_state["forecast"]`;
  2. predicts the `quantile` peak of that load over the next `lead_time_s` (a replica's start
     time);
  3. sets replicas = ceil(max(load now, forecast) / target_ongoing_requests), up at once, down
     only after `downscale_hold_s` below one replica fewer with a `downscale_band` margin,
     never above the desk's quota (`quota_replicas`) or the deployment's max_replicas.

Use it with Serve's own delays off, since the policy does its own smoothing:

    from serve_apps.autoscaling_policy import predictive_autoscaling_config
    @serve.deployment(autoscaling_config=predictive_autoscaling_config(
        min_replicas=1, max_replicas=8, desk="fx", quota_replicas=6, lead_time_s=60))

or by import path: `AutoscalingPolicy(policy_function="serve_apps.autoscaling_policy:PredictivePolicy",
policy_kwargs={...})`, or the plain function `serve_apps.autoscaling_policy:predictive_policy`
(all defaults). `market` (`{"exchange": "XNYS", "quota_plan": {...the config's quota_plan...}, "gpus_per_replica":
0.25}`) pre-warms for the quota plan: the desk's serving GPUs in the window in force one
`lead_time_s` ahead (rayfin.market.in_force: the next window's from a replica's start time before
the switch) set a floor of ceil(gpus / gpus_per_replica) replicas, within min and max replicas.
The calendar is deterministic, so the policy needs no call to the controller.
`market.open_floor` (`{"headroom": 0.2, "sessions": 3, "window_s": 1800}`) also pre-warms the
open from the last sessions' opens: the policy keeps, in its state, the most replicas each
session's first `window_s` asked for (load / target), and from `lead_time_s` before an open to the
end of its window holds at least (1 + headroom) x the highest of the last `sessions`
(rayfin.market.serving_floor, the rule the market benchmark's serving floor uses).

`initial_state` (a `ForecastState.to_dict()` or `LibraryState.to_dict()`) seeds
the forecaster with history the rayfin controller persisted, so a redeploy or a Serve controller
restart loses nothing.

`forecaster` picks the model behind the one pure interface (rayfin.forecast.choice): "rayfin"
(the default, rayfin's own online model) or a statsforecast model ("autoets", ...;
rayfin.forecast.library) refitted every `library["refit_bins"]` bins (default: hourly) with the
fitted ETS recursion between refits. On the dev trace AutoETS won the fold-honest choice at
1-minute bins (docs/autoscaling.md); the default stays "rayfin" so that a deployment without
the `forecast` extra (statsforecast) keeps working.
"""
from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Any

from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

from rayfin.autoscale.replicas import ReplicaParams, decide_replicas
from rayfin.forecast import ForecastParams
from rayfin.forecast.choice import (Forecaster, check_kind, forecaster_from_dict, forecaster_predict,
                                    forecaster_update, make_forecaster)
from rayfin.forecast.conformal import ConformalParams, ConformalState, conformal_init, observe
from rayfin.forecast.library import LibraryParams, LibraryState
from rayfin.forecast.model import ForecastState
from rayfin.market.calendar import Anchor, MarketCalendar
from rayfin.market.in_force import QuotaClock
from rayfin.market.plan import QuotaPlan
from rayfin.market.serving_floor import FloorParams, serving_floor

STATE_KEY = "forecast"
CONFORMAL_KEY = "conformal"


class PredictivePolicy:
    """Serve instantiates it once with `policy_kwargs` and calls it every tick."""

    def __init__(self, desk: str = "", lead_time_s: float = 60.0, quantile: float = 0.9,
                 target_ongoing_requests: float | None = None, quota_replicas: int | None = None,
                 downscale_hold_s: float = 120.0, downscale_band: float = 0.1,
                 forecast: dict[str, Any] | None = None, initial_state: dict[str, Any] | None = None,
                 miss_budget: float | None = None, calibration_lr: float = 0.05,
                 market: dict[str, Any] | None = None, forecaster: str = "rayfin",
                 library: dict[str, Any] | None = None):
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must be in (0, 1); got {quantile}")
        # forecaster: "rayfin" (rayfin.forecast.model) or a library model ("autoets",
        # "autoets_snaive", ...; rayfin.forecast.library) behind the same interface; `library`
        # overrides its LibraryParams (default: refit AutoETS hourly, ETS recursion between).
        self.kind = check_kind(forecaster)
        self.library = {"refit_bins": max(1, int(round(3600.0 / float((forecast or {}).get("bin_s", 60.0))))),
                        **(library or {})}
        bad = set(self.library) - set(LibraryParams.__dataclass_fields__) - {"model"}
        if bad:
            raise ValueError(f"library: unknown field(s) {sorted(bad)}")
        # miss_budget set: the margin is calibrated online (rayfin.forecast.conformal) so that the
        # share of forecast bins the load exceeds tracks it; `quantile` is then only a fallback.
        self.conformal = (ConformalParams(budget=float(miss_budget), lr=float(calibration_lr))
                          if miss_budget is not None else None)
        self.desk = desk
        self.lead_time_s = float(lead_time_s)
        self.quantile = float(quantile)
        self.target = target_ongoing_requests
        self.quota_replicas = quota_replicas
        self.downscale_hold_s = float(downscale_hold_s)
        self.downscale_band = float(downscale_band)
        self.params = ForecastParams(**(forecast or {}))
        self.forecast = dict(forecast or {})
        self.initial_state = initial_state
        self.market = _market_clock(market, self.lead_time_s) if market else None
        self.gpus_per_replica = float((market or {}).get("gpus_per_replica", 1.0))
        if self.gpus_per_replica <= 0:
            raise ValueError(f"market.gpus_per_replica must be > 0; got {self.gpus_per_replica}")
        of = (market or {}).get("open_floor")
        if of is not None:
            bad = set(of) - {"headroom", "sessions", "window_s"}
            if bad:
                raise ValueError(f"market.open_floor: unknown field(s) {sorted(bad)}; allowed: headroom, sessions, "
                                 "window_s")
        self.open_floor = (FloorParams(headroom=float(of.get("headroom", 0.2)), sessions=int(of.get("sessions", 3)),
                                       lead_s=self.lead_time_s, open_window_s=float(of.get("window_s", 1800.0)))
                           if of is not None and self.market is not None else None)
        self._opens: tuple[float, float] | None = None

    def _opens_around(self, now: float) -> tuple[float, float]:
        """The last open at or before `now` and the next one, from the calendar once per session
        (not every tick)."""
        c = self._opens
        if c is None or not c[0] <= now < c[1]:
            assert self.market is not None
            t = datetime.fromtimestamp(now, timezone.utc)
            c = self._opens = (self.market.cal.previous_session(t).open.timestamp(),
                               self.market.cal.next_session(t, Anchor.OPEN).open.timestamp())
        return c

    def open_window_floor(self, now: float, replicas_needed: float, state: dict[str, Any]) -> int:
        """The open's floor (replicas) and the open peaks kept in `state`: from `lead_time_s`
        before an open to the end of its window, (1 + headroom) x the highest open peak of the last
        sessions; inside the window the current need is folded into this session's peak, which
        joins the history once the window is over. 0 outside, or without `market.open_floor`."""
        p = self.open_floor
        if p is None or self.market is None:
            return 0
        last, nxt = self._opens_around(now)
        peaks = list(state.get("open_peaks") or [])
        cur = state.get("open_current")
        if cur is not None and now >= cur[0] + p.open_window_s:      # that open's window is over
            peaks = (peaks + [cur[1]])[-max(p.sessions, 1):]
            cur = None
        if last <= now < last + p.open_window_s:
            cur = [last, max(replicas_needed, cur[1] if cur is not None and cur[0] == last else 0.0)]
        state["open_peaks"], state["open_current"] = peaks, cur
        if last <= now < last + p.open_window_s or nxt - p.lead_s <= now < nxt:
            return serving_floor(0.0, 0.0, peaks, True, float("inf"), p).gpus
        return 0

    def market_floor(self, now: float) -> tuple[int, str | None]:
        """Replicas the quota plan reserves for the desk one lead time ahead, and that window's name."""
        if self.market is None:
            return 0, None
        f = self.market.at(datetime.fromtimestamp(now, timezone.utc))
        gpus = float(f.serving_gpus.get(self.desk, 0.0))
        return math.ceil(gpus / self.gpus_per_replica - 1e-9), f.effective.value

    def _forecaster(self, policy_state: dict[str, Any]) -> Forecaster:
        fs = policy_state.get(STATE_KEY)
        if isinstance(fs, (ForecastState, LibraryState)):
            return fs
        if isinstance(fs, dict):
            return forecaster_from_dict(fs)
        if self.initial_state:
            return forecaster_from_dict(self.initial_state)
        return make_forecaster(self.kind, self.forecast, self.library)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        state = dict(ctx.policy_state or {})
        now = ctx.current_time if ctx.current_time is not None else time.time()
        load = float(ctx.total_num_requests or 0.0)
        fs = forecaster_update(self._forecaster(state), now, load)
        z = None
        if self.conformal is not None:
            cs = state.get(CONFORMAL_KEY)
            cs = (ConformalState.from_dict(cs) if isinstance(cs, dict)
                  else cs if isinstance(cs, ConformalState) else conformal_init(self.conformal))
            cs = observe(cs, now, load, fs, max(1, math.ceil(self.lead_time_s / fs.params.bin_s)))
            state[CONFORMAL_KEY] = cs
            z = cs.theta
        pred = forecaster_predict(fs, self.lead_time_s, self.quantile, now=now, z=z)
        target = self.target or ctx.config.get_target_ongoing_requests()
        floor, window = self.market_floor(now)
        floor = max(floor, self.open_window_floor(now, load / float(target), state))
        lo, hi = int(ctx.capacity_adjusted_min_replicas), int(ctx.capacity_adjusted_max_replicas)
        params = ReplicaParams(
            load_per_replica=float(target),
            min_replicas=min(hi, max(lo, floor)),
            max_replicas=hi,
            quota_replicas=self.quota_replicas,
            downscale_hold_s=self.downscale_hold_s,
            downscale_band=self.downscale_band,
        )
        d = decide_replicas(load, pred.peak, int(ctx.target_num_replicas), now, params,
                            state.get("below_since"))
        state.update({STATE_KEY: fs, "below_since": d.below_since, "forecast_load": pred.peak,
                      "current_load": load, "reason": d.reason, "desk": self.desk})
        if window is not None:
            state.update({"market_window": window, "market_floor": floor})
        return d.replicas, state


def _market_clock(market: dict[str, Any], lead_s: float) -> QuotaClock:
    plan = QuotaPlan.model_validate(market.get("quota_plan") or {})
    return QuotaClock(MarketCalendar.get(str(market.get("exchange", "XNYS"))), plan, {}, lead_s)


_DEFAULT = PredictivePolicy()


def predictive_policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    """The policy with default settings, for `policy_function="serve_apps.autoscaling_policy:predictive_policy"`."""
    return _DEFAULT(ctx)


def predictive_autoscaling_config(*, min_replicas: int = 1, max_replicas: int = 8,
                                  target_ongoing_requests: float = 2.0, look_back_period_s: float = 10.0,
                                  **policy_kwargs: Any):
    """An `AutoscalingConfig` running `PredictivePolicy` with Serve's own delays off."""
    return AutoscalingConfig(
        min_replicas=min_replicas, max_replicas=max_replicas,
        target_ongoing_requests=target_ongoing_requests, look_back_period_s=look_back_period_s,
        upscale_delay_s=0.0, downscale_delay_s=0.0,
        policy=AutoscalingPolicy(policy_function=f"{__name__}:PredictivePolicy", policy_kwargs=policy_kwargs),
    )
