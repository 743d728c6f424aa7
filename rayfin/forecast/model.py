"""Online seasonal forecaster: level + daily profile + day-of-week offset, in log space.

Model (all terms in the transformed space y = log(x + offset)):

    y[b] = level + season[b mod P] + week[(b // P) mod W] + noise

where b is the bin index (floor(t / bin_s)), P the bins per season (a day) and W the seasons
per week (7). One update per closed bin, Holt-Winters style:

    err     = y - (level + season[p])       the level is the level of the current day
    level  += alpha * err                   (or a jump on a level-shift alarm, see below)
    season[p-k .. p+k] += gamma * kernel * (y - level - season[p])

At each day change the level moves by week[new] - week[old]; at the end of each day
week[d] += delta * (mean level of day d - mean level of the last W days - week[d]). Keeping the
day-of-week effect out of the per-bin error means a CUSUM alarm on a new day cannot swallow it.

The season is smoothed over +-k neighbouring phases so a sparse, noisy series (a few requests a
minute) still learns its daily shape from a handful of days. The log transform makes the model
multiplicative above `offset`, so growth and level shifts scale the whole profile, and the
back-transformed point forecast is a median, which is what minimises absolute error (MASE).

Level shifts: a two-sided CUSUM on the standardised errors e = err / scale,

    S+ = max(0, S+ + e - k),   S- = max(0, S- - e - k)

raises an alarm when either passes h; the level then jumps by the mean error of the run that
raised it and the sums restart. Noise alone rarely alarms (k = 1, h = 5: no alarm in 1,700
bins of a noisy daily sine), while a shift of d scales alarms after about h / (d - k) bins, so
a shift of 4 scales or more is absorbed within 2 to 3 bins (tested). The season is not updated in an
alarm bin, so a shift does not leak into the daily profile.

Quantiles: the residual scale is an exponentially weighted RMS of one-bin-ahead errors; the
q-quantile adds z_q * scale * sqrt(1 + h * horizon_growth) for a forecast h bins ahead.

The state is a frozen value made of floats and tuples: `to_dict` / `from_dict` give a
JSON-safe form the controller persists, so a restart loses no history. The clock is always
passed in (`t`, `now`); nothing here reads the time or imports Ray.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from statistics import NormalDist
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ForecastParams:
    """How a series is binned and how fast each component learns. Immutable."""

    bin_s: float = 60.0                 # width of one bin; forecasts are per bin
    season_s: float = 86_400.0          # daily seasonality
    week_seasons: int = 7               # seasons per week (day-of-week offsets); 0 or 1 disables
    offset: float = 1.0                 # y = log(x + offset): about the smallest rate that matters
    alpha: float = 0.02                 # level gain per bin
    cusum_k: float = 1.0                # CUSUM slack, in residual scales
    cusum_h: float = 5.0                # CUSUM alarm threshold, in residual scales
    min_scale: float = 0.05             # floor of the residual scale used to standardise errors
    gamma: float = 0.15                 # seasonal gain (per kernel-weighted phase)
    kernel_bins: int = 3                # season update spreads over +-kernel_bins phases
    delta: float = 0.05                 # day-of-week gain
    scale_beta: float = 0.02            # smoothing of the residual RMS
    horizon_growth: float = 0.02        # quantile widening per bin of horizon
    max_gap_bins: int = 0               # gaps longer than this (0: one season) reset the level

    def __post_init__(self) -> None:
        if self.bin_s <= 0 or self.season_s < self.bin_s:
            raise ValueError(f"need 0 < bin_s <= season_s; got bin_s={self.bin_s}, season_s={self.season_s}")
        if self.offset <= 0:
            raise ValueError(f"offset must be > 0; got {self.offset}")
        for name in ("alpha", "gamma", "delta", "scale_beta"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {v}")

    @property
    def period(self) -> int:
        """Bins per season."""
        return max(1, int(round(self.season_s / self.bin_s)))

    @property
    def weeks(self) -> int:
        return max(1, int(self.week_seasons))


@dataclass(frozen=True)
class ForecastState:
    """Everything the forecaster knows about one series. Immutable; `update` returns a new one."""

    params: ForecastParams
    bin_index: int | None = None        # index of the bin being filled; None before any data
    acc_sum: float = 0.0                # sum and count of raw observations in that bin
    acc_n: int = 0
    last_t: float | None = None
    level: float | None = None          # None until the first bin closes
    season: tuple[float, ...] = ()
    week: tuple[float, ...] = ()
    cus_pos: float = 0.0                # CUSUM sums and the runs that built them
    cus_neg: float = 0.0
    run_pos: tuple[float, int] = (0.0, 0)
    run_neg: tuple[float, int] = (0.0, 0)
    scale: float = 0.0                  # EW RMS of one-bin-ahead errors (transformed space)
    level_day: int = 0                  # day of the week the level refers to
    day_level: tuple[float, int] = (0.0, 0)   # sum and count of the level over the current day
    recent_days: tuple[float, ...] = ()       # mean level of each of the last W days
    week_n: tuple[int, ...] = ()              # updates of each day-of-week offset so far
    bins_seen: int = 0
    shifts: int = 0                     # level-shift alarms so far (diagnostics)
    extra: tuple[tuple[str, Any], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["season"] = list(self.season)
        d["week"] = list(self.week)
        d["extra"] = [list(kv) for kv in self.extra]
        d["run_pos"], d["run_neg"] = list(self.run_pos), list(self.run_neg)
        d["day_level"], d["recent_days"] = list(self.day_level), list(self.recent_days)
        d["week_n"] = list(self.week_n)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ForecastState":
        d = dict(data)
        d["params"] = ForecastParams(**d["params"])
        d["season"] = tuple(float(v) for v in d.get("season", ()))
        d["week"] = tuple(float(v) for v in d.get("week", ()))
        d["extra"] = tuple(tuple(kv) for kv in d.get("extra", ()))
        d["run_pos"] = (float(d.get("run_pos", (0, 0))[0]), int(d.get("run_pos", (0, 0))[1]))
        d["run_neg"] = (float(d.get("run_neg", (0, 0))[0]), int(d.get("run_neg", (0, 0))[1]))
        d["day_level"] = (float(d.get("day_level", (0, 0))[0]), int(d.get("day_level", (0, 0))[1]))
        d["recent_days"] = tuple(float(v) for v in d.get("recent_days", ()))
        d["week_n"] = tuple(int(v) for v in d.get("week_n", ()))
        return cls(**d)

    @property
    def ready(self) -> bool:
        return self.level is not None


@dataclass(frozen=True)
class Prediction:
    """Forecast for the bins covering (now, now + horizon_s]."""

    t0: float                           # start of the first bin forecast
    bin_s: float
    median: tuple[float, ...]           # back-transformed point forecast per bin
    upper: tuple[float, ...]            # the requested quantile per bin
    quantile: float

    @property
    def peak(self) -> float:
        """Largest quantile over the horizon: the load to provision for."""
        return max(self.upper, default=0.0)

    @property
    def peak_median(self) -> float:
        return max(self.median, default=0.0)


def init(params: ForecastParams | None = None) -> ForecastState:
    params = params or ForecastParams()
    return ForecastState(params=params, season=(0.0,) * params.period, week=(0.0,) * params.weeks)


def _fwd(p: ForecastParams, x: float) -> float:
    return math.log(max(x, 0.0) + p.offset)


def _inv(p: ForecastParams, y: float) -> float:
    return max(0.0, math.exp(y) - p.offset)


def update(state: ForecastState, t: float, value: float) -> ForecastState:
    """Add one observation `value` (a rate, or any non-negative load) seen at time `t`.

    Observations are averaged per bin; a bin is learnt from when the first observation of a
    later bin arrives. Observations older than the open bin are ignored.
    """
    if not math.isfinite(value):
        return state
    p = state.params
    b = int(math.floor(t / p.bin_s))
    if state.bin_index is None:
        return replace(state, bin_index=b, acc_sum=float(value), acc_n=1, last_t=t)
    if b < state.bin_index:
        return state
    if b == state.bin_index:
        return replace(state, acc_sum=state.acc_sum + value, acc_n=state.acc_n + 1, last_t=t)
    closed = _learn(state, state.bin_index, state.acc_sum / max(state.acc_n, 1))
    gap = b - state.bin_index - 1
    max_gap = p.max_gap_bins or p.period
    if gap > max_gap:  # long outage: the level is stale, restart it from the next bin
        closed = replace(closed, level=None)
    return replace(closed, bin_index=b, acc_sum=float(value), acc_n=1, last_t=t)


def flush(state: ForecastState) -> ForecastState:
    """Learn the open bin now (e.g. at the end of a replay); the next update opens a new bin."""
    if state.bin_index is None or state.acc_n == 0:
        return state
    s = _learn(state, state.bin_index, state.acc_sum / state.acc_n)
    return replace(s, bin_index=state.bin_index + 1, acc_sum=0.0, acc_n=0)


def _phase(p: ForecastParams, b: int) -> tuple[int, int]:
    return b % p.period, (b // p.period) % p.weeks


def _learn(state: ForecastState, b: int, x: float) -> ForecastState:
    p = state.params
    y = _fwd(p, x)
    ph, wk = _phase(p, b)
    season = np.asarray(state.season, dtype=float)
    if state.bins_seen < p.period:
        return replace(_learn_first_season(state, y, ph, season), level_day=wk)
    if state.level is None:
        # First bin after a long gap: anchor the level, keep what the season knows.
        return replace(state, level=y - season[ph], level_day=wk, day_level=(0.0, 0),
                       bins_seen=state.bins_seen + 1)
    level, week, recent, day_level = state.level, state.week, state.recent_days, state.day_level
    week_n = state.week_n
    if wk != state.level_day:
        # New day: close the old one for the day-of-week estimate, then carry the level over
        # by the learnt offset between the two days (e.g. Friday -> Saturday drops).
        week, recent, week_n = _close_day(state)
        level = level + week[wk] - week[state.level_day]
        day_level = (0.0, 0)
    err = y - (level + season[ph])
    e = err / max(state.scale, p.min_scale)
    cus_pos = max(0.0, state.cus_pos + e - p.cusum_k)
    cus_neg = max(0.0, state.cus_neg - e - p.cusum_k)
    run_pos = (state.run_pos[0] + err, state.run_pos[1] + 1) if cus_pos > 0 else (0.0, 0)
    run_neg = (state.run_neg[0] + err, state.run_neg[1] + 1) if cus_neg > 0 else (0.0, 0)
    alarm = run_pos if cus_pos > p.cusum_h else run_neg if cus_neg > p.cusum_h else None
    common: dict[str, Any] = dict(week=week, recent_days=recent, week_n=week_n, level_day=wk, bins_seen=state.bins_seen + 1)
    if alarm is not None:
        # Level shift: jump by the run's mean error, restart detection, leave the season alone.
        level += alarm[0] / max(alarm[1], 1)
        return replace(state, level=level, cus_pos=0.0, cus_neg=0.0, run_pos=(0.0, 0), run_neg=(0.0, 0),
                       day_level=(day_level[0] + level, day_level[1] + 1), shifts=state.shifts + 1, **common)
    level += p.alpha * err
    # Seasonal update, spread over neighbouring phases with a triangular kernel.
    r = y - level - season[ph]
    k = max(0, int(p.kernel_bins))
    if k and p.period > 1:
        offs = np.arange(-k, k + 1)
        w = (k + 1 - np.abs(offs)) / (k + 1)
        np.add.at(season, (ph + offs) % p.period, p.gamma * w * r)
    else:
        season[ph] += p.gamma * r
    m = season.mean()  # keep the season zero-mean; its drift belongs to the level
    season -= m
    level += m
    scale = math.sqrt(p.scale_beta * err * err + (1 - p.scale_beta) * state.scale ** 2)
    return replace(state, level=level, season=tuple(season.tolist()), cus_pos=cus_pos, cus_neg=cus_neg,
                   run_pos=run_pos, run_neg=run_neg, scale=scale,
                   day_level=(day_level[0] + level, day_level[1] + 1), **common)


def _close_day(state: ForecastState) -> tuple[tuple[float, ...], tuple[float, ...], tuple[int, ...]]:
    """Day-of-week offsets from the mean level of each day against the mean of the last week.

    week[d] += g * ((mean level of day d) - (mean of the last W day levels) - week[d]) with
    g = max(delta, 1 / updates so far): a plain average over the first weeks, then an EW one.
    Starts once a whole week of days is known; offsets are kept zero-mean.
    """
    p = state.params
    total, n = state.day_level
    week_n = state.week_n or (0,) * p.weeks
    if n == 0:
        return state.week, state.recent_days, week_n
    recent = (*state.recent_days, total / n)[-p.weeks:]
    week, counts = list(state.week), list(week_n)
    if len(recent) == p.weeks:
        d = state.level_day
        counts[d] += 1
        g = max(p.delta, 1.0 / counts[d])
        week[d] += g * ((recent[-1] - sum(recent) / len(recent)) - week[d])
        m = sum(week) / len(week)
        week = [v - m for v in week]
    return tuple(week), recent, tuple(counts)


def _learn_first_season(state: ForecastState, y: float, ph: int, season: np.ndarray) -> ForecastState:
    """First season: the level is the running mean and each phase stores its own deviation.

    Holt-Winters updates from a flat start would push the unlearnt daily swing into the level
    (every error is one-signed for hours), so the profile is read directly from the first day
    and then smoothed with the same kernel the online updates use.
    """
    p = state.params
    n = state.bins_seen
    level = y if state.level is None else state.level + (y - state.level) / (n + 1)
    season[ph] = y  # raw for now; centred on the day's mean when the day is complete
    bins_seen = n + 1
    scale = state.scale
    if bins_seen == p.period:
        k = max(0, int(p.kernel_bins))
        if k and p.period > 2 * k:
            w = (k + 1 - np.abs(np.arange(-k, k + 1))) / (k + 1)
            w /= w.sum()
            ext = np.concatenate([season[-k:], season, season[:k]])
            smooth = np.convolve(ext, w, mode="valid")
            # residual noise of the first day seeds the quantile spread
            scale = float(np.sqrt(np.mean((season - smooth) ** 2)))
            season = smooth
        level = float(season.mean())
        season = season - level
        return replace(state, level=level, season=tuple(season.tolist()), scale=scale, bins_seen=bins_seen)
    return replace(state, level=level, season=tuple(season.tolist()), scale=scale, bins_seen=bins_seen)


def margin(quantile: float, z: float | None, scale: float, min_scale: float) -> tuple[float, float]:
    """(z, scale) of the upper quantile: the Gaussian z_quantile on the residual scale, or a
    calibrated margin `z` (rayfin.forecast.conformal) with the scale floored at `min_scale`, as
    the calibration is."""
    if z is None:
        return NormalDist().inv_cdf(quantile), scale
    return z, max(scale, min_scale)


def predict(state: ForecastState, horizon_s: float, quantile: float = 0.9,
            now: float | None = None, z: float | None = None) -> Prediction:
    """Forecast the bins from `now` (default: the latest observation) to `now + horizon_s`.

    Before any bin has closed, the running mean of the open bin stands in for the level and
    the quantile equals it (there is no error estimate yet). `z`, when given, is the margin in
    residual scales instead of the Gaussian z_quantile (a calibrated margin, see
    rayfin.forecast.conformal); the scale is then floored at `min_scale` as the calibration is.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1); got {quantile}")
    p = state.params
    now = state.last_t if now is None else now
    if now is None:
        return Prediction(t0=0.0, bin_s=p.bin_s, median=(), upper=(), quantile=quantile)
    first = int(math.floor(now / p.bin_s))
    last = int(math.floor((now + max(horizon_s, 0.0)) / p.bin_s))
    level = state.level
    seasonal = state.bins_seen >= p.period  # before that the season holds raw first-day values
    if level is None:
        if state.acc_n == 0:
            return Prediction(t0=first * p.bin_s, bin_s=p.bin_s, median=(), upper=(), quantile=quantile)
        ph, wk = _phase(p, state.bin_index or 0)
        level = _fwd(p, state.acc_sum / state.acc_n)
        if seasonal:
            level -= state.season[ph]
    z, scale = margin(quantile, z, state.scale, p.min_scale)
    base = state.bin_index if state.bin_index is not None else first
    med, up = [], []
    for b in range(first, last + 1):
        ph, wk = _phase(p, b)
        mu = level + (state.season[ph] + state.week[wk] - state.week[state.level_day] if seasonal else 0.0)
        h = max(0, b - base)
        spread = z * scale * math.sqrt(1.0 + h * p.horizon_growth)
        med.append(_inv(p, mu))
        up.append(_inv(p, mu + spread))
    return Prediction(t0=first * p.bin_s, bin_s=p.bin_s, median=tuple(med), upper=tuple(up), quantile=quantile)


def point(state: ForecastState, t: float) -> float:
    """Median forecast for the bin containing time `t` (used for rolling-origin evaluation)."""
    pr = predict(state, 0.0, 0.5, now=t)
    return pr.median[0] if pr.median else 0.0
