"""statsforecast's models behind rayfin's pure forecaster interface (state in, state out).

    fs = library_init(LibraryParams(bin_s=300, model=LibraryModel.AUTOETS))
    fs = library_update(fs, t, value)          # a new frozen state; refits when a bin closes
    library_point(fs, t)                       # median for the bin containing t

The state holds the last `history_bins` closed bin means and the forecast path the model made
at the last bin close, so `library_point` is a lookup and the state is JSON-safe
(`to_dict` / `from_dict`), like `ForecastState`. The model is refitted from the history at
each bin close, once per bin: a fit is far slower than an update (figures in docs/autoscaling.md).
statsforecast is imported only when a bin closes: importing this module does not load it.
"""
from __future__ import annotations

import enum
import math
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np


class LibraryModel(str, enum.Enum):
    AUTOETS = "autoets"              # AutoETS; seasonal only when a day has <= 24 bins
    MSTL = "mstl"                    # MSTL (daily + weekly) with an AutoETS trend
    SEASONAL_NAIVE = "seasonal_naive"
    AUTOETS_SNAIVE = "autoets_snaive"   # equal-weight mean of AutoETS and seasonal-naive


@dataclass(frozen=True)
class LibraryParams:
    bin_s: float = 300.0
    season_s: float = 86_400.0
    model: LibraryModel = LibraryModel.AUTOETS
    history_bins: int = 4032          # two weeks of 5-minute bins
    horizon_bins: int = 12            # forecast path kept after each refit

    def __post_init__(self) -> None:
        if self.bin_s <= 0 or self.season_s < self.bin_s:
            raise ValueError(f"need 0 < bin_s <= season_s; got bin_s={self.bin_s}, season_s={self.season_s}")
        if self.history_bins < 2 or self.horizon_bins < 1:
            raise ValueError("history_bins must be >= 2 and horizon_bins >= 1")

    @property
    def period(self) -> int:
        return max(1, int(round(self.season_s / self.bin_s)))


@dataclass(frozen=True)
class LibraryState:
    params: LibraryParams
    history: tuple[float, ...] = ()   # closed bin means, oldest first
    last_bin: int | None = None       # index of the newest closed bin
    open_bin: int | None = None
    acc_sum: float = 0.0
    acc_n: int = 0
    path: tuple[float, ...] = ()      # forecast for bins last_bin + 1 .. last_bin + horizon_bins

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"]["model"] = self.params.model.value
        d["history"], d["path"] = list(self.history), list(self.path)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LibraryState":
        d = dict(data)
        p = dict(d["params"])
        p["model"] = LibraryModel(p["model"])
        d["params"] = LibraryParams(**p)
        d["history"] = tuple(float(v) for v in d.get("history", ()))
        d["path"] = tuple(float(v) for v in d.get("path", ()))
        return cls(**d)


def library_init(params: LibraryParams | None = None) -> LibraryState:
    return LibraryState(params=params or LibraryParams())


def _fit_path(p: LibraryParams, history: tuple[float, ...]) -> tuple[float, ...]:
    y = np.asarray(history, dtype=float)
    P = p.period
    if len(y) >= P:
        snaive = tuple(float(y[len(y) - P + (h % P)]) for h in range(p.horizon_bins))
    else:
        snaive = (float(y[-1]),) * p.horizon_bins
    if p.model is LibraryModel.SEASONAL_NAIVE or len(y) < 2 * P:
        return snaive
    from statsforecast.models import MSTL, AutoETS  # lazy: pandas and statsmodels take seconds to import

    if p.model is LibraryModel.MSTL:
        seasons = [P, 7 * P] if len(y) >= 8 * P else [P]
        model = MSTL(season_length=seasons, trend_forecaster=AutoETS(model="ZZN"))
    else:
        model = AutoETS(season_length=P if P <= 24 else 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean = model.forecast(y=y, h=p.horizon_bins)["mean"]
    path = tuple(max(0.0, float(v)) for v in mean)
    if p.model is LibraryModel.AUTOETS_SNAIVE:
        # Forecast combination: the two err on different days (ETS lags a new day's shape,
        # seasonal-naive repeats yesterday's noise), so their mean beats both on the dev trace.
        return tuple((a + b) / 2 for a, b in zip(path, snaive))
    return path


def _close(state: LibraryState) -> LibraryState:
    p = state.params
    x = state.acc_sum / max(state.acc_n, 1)
    history = (*state.history, x)[-p.history_bins:]
    return replace(state, history=history, last_bin=state.open_bin, path=_fit_path(p, history))


def library_update(state: LibraryState, t: float, value: float) -> LibraryState:
    """Add one observation at time t; a bin is learnt when a later bin's first value arrives.

    Bins skipped without data are not filled in: the model sees the bins that had data.
    """
    if not math.isfinite(value):
        return state
    b = int(math.floor(t / state.params.bin_s))
    if state.open_bin is None:
        if state.last_bin is not None and b <= state.last_bin:
            return state
        return replace(state, open_bin=b, acc_sum=float(value), acc_n=1)
    if b < state.open_bin:
        return state
    if b == state.open_bin:
        return replace(state, acc_sum=state.acc_sum + value, acc_n=state.acc_n + 1)
    return replace(_close(state), open_bin=b, acc_sum=float(value), acc_n=1)


def library_flush(state: LibraryState) -> LibraryState:
    """Learn the open bin now (end of a replay, or a caller that knows the bin is complete)."""
    if state.open_bin is None or state.acc_n == 0:
        return state
    return replace(_close(state), open_bin=None, acc_sum=0.0, acc_n=0)


def library_point(state: LibraryState, t: float) -> float:
    """Median forecast for the bin containing t (the path's last value past its end)."""
    if state.last_bin is None or not state.path:
        return state.acc_sum / state.acc_n if state.acc_n else 0.0
    h = int(math.floor(t / state.params.bin_s)) - state.last_bin - 1
    return state.path[min(max(h, 0), len(state.path) - 1)]
