"""Online conformal calibration of the forecast margin toward a miss budget.

The forecaster's Gaussian quantile (z_q times its residual scale) is only as good as the
normal assumption; on a bursty, growing series the share of bins above the P90 drifts far from
10%. Instead of fixing q, the margin theta (in residual scales, in the forecaster's log space)
is tracked online so that the share of bins whose load exceeds the forecast made one lead
time earlier tracks `budget` (quantile tracking, Angelopoulos, Candes & Tibshirani, "Conformal
PID control", 2023; adaptive conformal inference, Gibbs & Candes, 2021):

    s_b     = (y_b - mu_b) / scale_b          y_b: log load of bin b; mu_b, scale_b: the median
                                              and residual scale forecast for b, h bins earlier
    miss_b  = 1 if s_b > theta else 0
    theta  += lr * (miss_b - budget)          clipped to [min_theta, max_theta]

Over any run of n bins the miss share is within (max_theta - min_theta) / (lr * n) of the
budget whatever the series does (the telescoping bound of quantile tracking), so the margin
widens on a volatile day and narrows on a calm one without a quantile being tuned.

Pure: `observe(state, t, value, forecast_state, horizon_bins)` returns a new frozen state; the
caller persists `to_dict()` next to the forecaster's. The margin is used through
`predict(..., z=state.theta)`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist
from typing import Any

from rayfin.forecast.library import LibraryState, library_predict
from rayfin.forecast.model import ForecastState, predict


@dataclass(frozen=True)
class ConformalParams:
    budget: float = 0.1          # target share of bins above the lead-time forecast
    lr: float = 0.05             # margin step per bin, in residual scales
    min_theta: float = -1.0
    max_theta: float = 6.0

    def __post_init__(self) -> None:
        if not 0.0 < self.budget < 1.0:
            raise ValueError(f"budget must be in (0, 1); got {self.budget}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if self.min_theta >= self.max_theta:
            raise ValueError(f"need min_theta < max_theta; got {self.min_theta}, {self.max_theta}")

    def start(self) -> float:
        """The Gaussian margin for the budget: where tracking starts."""
        return min(self.max_theta, max(self.min_theta, NormalDist().inv_cdf(1.0 - self.budget)))


@dataclass(frozen=True)
class ConformalState:
    params: ConformalParams
    theta: float
    bin_index: int | None = None                         # bin being accumulated
    acc_sum: float = 0.0
    acc_n: int = 0
    pending: tuple[tuple[int, float, float], ...] = ()   # (target bin, mu, scale) awaiting that bin
    bins: int = 0                                        # bins scored so far
    misses: int = 0

    @property
    def miss_rate(self) -> float:
        return self.misses / self.bins if self.bins else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pending"] = [list(p) for p in self.pending]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ConformalState":
        d = dict(data)
        d["params"] = ConformalParams(**d["params"])
        d["pending"] = tuple((int(b), float(m), float(s)) for b, m, s in d.get("pending", ()))
        return cls(**d)


def conformal_init(params: ConformalParams | None = None) -> ConformalState:
    params = params or ConformalParams()
    return ConformalState(params=params, theta=params.start())


def observe(state: ConformalState, t: float, value: float, forecast: ForecastState | LibraryState,
            horizon_bins: int) -> ConformalState:
    """Add one observation; when a bin closes, score it and file the forecast `horizon_bins` on.

    `forecast` must already have learnt the observation (call after `update`), so the forecast
    filed for bin b + h uses everything up to the end of bin b. It is rayfin's model
    (`ForecastState`) or the library's (`LibraryState`): both give a median and a residual scale
    in log(x + offset).
    """
    if not math.isfinite(value):
        return state
    b = int(math.floor(t / forecast.params.bin_s))
    if state.bin_index is None or b > state.bin_index:
        if state.bin_index is not None and state.acc_n:
            state = _close(state, state.bin_index, state.acc_sum / state.acc_n, forecast, horizon_bins)
        return replace(state, bin_index=b, acc_sum=float(value), acc_n=1)
    if b < state.bin_index:
        return state
    return replace(state, acc_sum=state.acc_sum + value, acc_n=state.acc_n + 1)


def _close(state: ConformalState, b: int, x: float, fs: ForecastState | LibraryState, h: int) -> ConformalState:
    p = state.params
    theta, bins, misses = state.theta, state.bins, state.misses
    y = math.log(max(x, 0.0) + fs.params.offset)
    keep = []
    for target, mu, scale in state.pending:
        if target > b:
            keep.append((target, mu, scale))
        elif target == b:
            miss = (y - mu) / scale > theta
            theta = min(p.max_theta, max(p.min_theta, theta + p.lr * ((1.0 if miss else 0.0) - p.budget)))
            bins, misses = bins + 1, misses + int(miss)
    if fs.ready and fs.bins_seen >= fs.params.period:
        target = b + max(1, h)
        pred = (library_predict(fs, 0.0, 0.5, now=target * fs.params.bin_s) if isinstance(fs, LibraryState)
                else predict(fs, 0.0, 0.5, now=target * fs.params.bin_s))
        med = pred.median
        if med:
            mu = math.log(med[0] + fs.params.offset)
            keep.append((target, mu, max(fs.scale, fs.params.min_scale)))
    return replace(state, theta=theta, pending=tuple(keep), bins=bins, misses=misses)
