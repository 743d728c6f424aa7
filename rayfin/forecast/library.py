"""statsforecast's models behind rayfin's pure forecaster interface (state in, state out).

    fs = library_init(LibraryParams(bin_s=300, model=LibraryModel.AUTOETS))
    fs = library_update(fs, t, value)          # a new frozen state; refits when a bin closes
    library_point(fs, t)                       # median for the bin containing t

The state holds the last `history_bins` closed bin means and the forecast path the model made
at the last bin close, so `library_point` is a lookup and the state is JSON-safe
(`to_dict` / `from_dict`), like `ForecastState`. The model is refitted from the history at
each bin close, once per bin: a fit is far slower than an update (figures in docs/autoscaling.md).
statsforecast is imported only when a bin closes: importing this module does not load it.

Cheap updates (`refit_bins` > 1, AutoETS and its combination): the parameters and the ETS
state vector of the last fit are kept in the state, and between refits a bin close runs one
step of the fitted model's own recursion (statsforecast's `pegelsresid_C`, the code its
`forward` runs) from the stored state, then `etsforecast` for the path: microseconds, and
equal to what `forward` over the whole history gives with the same parameters. Every
`refit_bins` closes the parameters are re-estimated from the history.

Quantiles (`library_predict`): like rayfin's model, in log space log(x + offset) the forecaster
keeps an EW RMS of its one-bin-ahead errors (`scale`), and the q-quantile adds
z_q * scale * sqrt(1 + h * horizon_growth); `library_predict` returns the same `Prediction`.
"""
from __future__ import annotations

import enum
import math
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from rayfin.forecast.model import Prediction, margin


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
    refit_bins: int = 1               # re-estimate parameters every this many closes; else ETS recursion
    offset: float = 1.0               # quantiles in log(x + offset), as rayfin.forecast.model
    scale_beta: float = 0.02
    min_scale: float = 0.05
    horizon_growth: float = 0.02

    def __post_init__(self) -> None:
        if self.bin_s <= 0 or self.season_s < self.bin_s:
            raise ValueError(f"need 0 < bin_s <= season_s; got bin_s={self.bin_s}, season_s={self.season_s}")
        if self.history_bins < 2 or self.horizon_bins < 1 or self.refit_bins < 1:
            raise ValueError("history_bins must be >= 2, horizon_bins and refit_bins >= 1")
        if self.offset <= 0 or not 0 < self.scale_beta <= 1:
            raise ValueError("need offset > 0 and 0 < scale_beta <= 1")

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
    # The last AutoETS fit: components (e.g. "ANNN"), (alpha, beta, gamma, phi), season length,
    # the state vector after the newest closed bin, and closes since that fit.
    ets_components: str = ""
    ets_par: tuple[float, ...] = ()
    ets_m: int = 1
    ets_x: tuple[float, ...] = ()
    since_fit: int = 0
    fits: int = 0                     # parameter fits so far (diagnostics)
    scale: float = 0.0                # EW RMS of one-bin-ahead errors in log(x + offset)
    bins_seen: int = 0

    @property
    def ready(self) -> bool:
        return self.last_bin is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"]["model"] = self.params.model.value
        for k in ("history", "path", "ets_par", "ets_x"):
            d[k] = list(getattr(self, k))
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LibraryState":
        d = dict(data)
        p = dict(d["params"])
        p["model"] = LibraryModel(p["model"])
        d["params"] = LibraryParams(**p)
        d["history"] = tuple(float(v) for v in d.get("history", ()))
        for k in ("path", "ets_par", "ets_x"):
            d[k] = tuple(float(v) for v in d.get(k, ()))
        return cls(**d)


def library_init(params: LibraryParams | None = None) -> LibraryState:
    return LibraryState(params=params or LibraryParams())


def _snaive(p: LibraryParams, y: np.ndarray) -> tuple[float, ...]:
    P = p.period
    if len(y) >= P:
        return tuple(float(y[len(y) - P + (h % P)]) for h in range(p.horizon_bins))
    return (float(y[-1]),) * p.horizon_bins


def _combine(p: LibraryParams, mean: Any, snaive: tuple[float, ...]) -> tuple[float, ...]:
    path = tuple(max(0.0, float(v)) for v in mean)
    if p.model is LibraryModel.AUTOETS_SNAIVE:
        # Forecast combination: the two err on different days (ETS lags a new day's shape,
        # seasonal-naive repeats yesterday's noise), so their mean beats both on the dev trace.
        return tuple((a + b) / 2 for a, b in zip(path, snaive))
    return path


def _nan0(v: float) -> float:
    return 0.0 if not math.isfinite(v) else float(v)


def _fit(p: LibraryParams, state: LibraryState, history: tuple[float, ...]) -> LibraryState:
    """Re-estimate the model on the history; the new path (and, for AutoETS, its fit)."""
    y = np.asarray(history, dtype=float)
    P = p.period
    snaive = _snaive(p, y)
    if p.model is LibraryModel.SEASONAL_NAIVE or len(y) < 2 * P:
        return replace(state, path=snaive, ets_x=(), since_fit=0)
    from statsforecast.models import MSTL, AutoETS  # lazy: pandas and statsmodels take seconds to import

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if p.model is LibraryModel.MSTL:
            seasons = [P, 7 * P] if len(y) >= 8 * P else [P]
            mstl = MSTL(season_length=seasons, trend_forecaster=AutoETS(model="ZZN"))
            mean = mstl.forecast(y=y, h=p.horizon_bins)["mean"]
            return replace(state, path=_combine(p, mean, snaive), since_fit=0, fits=state.fits + 1)
        fitted = AutoETS(season_length=P if P <= 24 else 1).fit(y).model_
    components = "".join(str(c) for c in fitted["components"][:4])
    mean = _ets_forecast(components, fitted["par"][:4], int(fitted["m"]), fitted["states"][-1], p.horizon_bins)
    return replace(state, path=_combine(p, mean, snaive), since_fit=0, fits=state.fits + 1,
                   ets_components=components,
                   ets_par=tuple(_nan0(v) for v in fitted["par"][:4]), ets_m=int(fitted["m"]),
                   ets_x=tuple(float(v) for v in fitted["states"][-1]))


def _ets_forecast(components: str, par: Any, m: int, x: Any, h: int) -> np.ndarray:
    from statsforecast import ets as _ets

    phi = 1.0 if components[3] == "N" else float(par[3])
    f = np.full(h, np.nan)
    _ets.etsforecast(x=np.asarray(x, dtype=float), m=m, trend=_ets.switch(components[1]),
                     season=_ets.switch(components[2]), phi=phi, h=h, f=f)
    return f


def _ets_step(state: LibraryState, value: float) -> LibraryState:
    """One bin of the fitted model's recursion from the stored state: no re-estimation."""
    from statsforecast import ets as _ets

    c, (alpha, beta, gamma, phi) = state.ets_components, state.ets_par
    _, _, states, _ = _ets.pegelsresid_C(
        y=np.array([value], dtype=float), m=state.ets_m, init_state=np.asarray(state.ets_x, dtype=float),
        errortype=c[0], trendtype=c[1], seasontype=c[2], damped=c[3] != "N",
        alpha=alpha, beta=beta, gamma=gamma, phi=phi, nmse=1)
    x = states[-1]
    if not np.all(np.isfinite(x)):      # the recursion failed (e.g. a zero under multiplicative error)
        return replace(state, ets_x=())
    mean = _ets_forecast(c, state.ets_par, state.ets_m, x, state.params.horizon_bins)
    return replace(state, ets_x=tuple(float(v) for v in x), since_fit=state.since_fit + 1,
                   path=_combine(state.params, mean, _snaive(state.params, np.asarray(state.history))))


def _close(state: LibraryState) -> LibraryState:
    p = state.params
    x = state.acc_sum / max(state.acc_n, 1)
    scale = state.scale
    if state.path and state.last_bin is not None and state.open_bin == state.last_bin + 1:
        e = math.log(max(x, 0.0) + p.offset) - math.log(max(state.path[0], 0.0) + p.offset)
        scale = abs(e) if scale == 0.0 else math.sqrt((1 - p.scale_beta) * scale ** 2 + p.scale_beta * e * e)
    history = (*state.history, x)[-p.history_bins:]
    state = replace(state, history=history, last_bin=state.open_bin, scale=scale,
                    bins_seen=state.bins_seen + 1)
    cheap = (p.refit_bins > 1 and state.ets_x and state.since_fit + 1 < p.refit_bins
             and p.model in (LibraryModel.AUTOETS, LibraryModel.AUTOETS_SNAIVE))
    if cheap:
        stepped = _ets_step(state, x)
        if stepped.ets_x:
            return stepped
    return _fit(p, state, history)


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


def library_predict(state: LibraryState, horizon_s: float, quantile: float = 0.9,
                    now: float | None = None, z: float | None = None) -> Prediction:
    """The bins covering (now, now + horizon_s], as rayfin.forecast.predict returns them.

    The median is the model's path; the quantile adds z * scale * sqrt(1 + h * horizon_growth)
    in log(x + offset), with z the Gaussian z_quantile or, when given, a calibrated margin (the
    scale is then floored at `min_scale`, as rayfin.forecast.conformal does).
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1); got {quantile}")
    p = state.params
    if now is None:
        if state.open_bin is None and state.last_bin is None:
            return Prediction(t0=0.0, bin_s=p.bin_s, median=(), upper=(), quantile=quantile)
        now = float((state.open_bin if state.open_bin is not None else state.last_bin or 0) * p.bin_s)
    first = int(math.floor(now / p.bin_s))
    last = int(math.floor((now + max(horizon_s, 0.0)) / p.bin_s))
    z, scale = margin(quantile, z, state.scale, p.min_scale)
    base = state.last_bin if state.last_bin is not None else first
    med, up = [], []
    for b in range(first, last + 1):
        m = library_point(state, b * p.bin_s)
        spread = z * scale * math.sqrt(1.0 + max(0, b - base - 1) * p.horizon_growth)
        med.append(m)
        up.append(max(0.0, math.exp(math.log(max(m, 0.0) + p.offset) + spread) - p.offset))
    return Prediction(t0=first * p.bin_s, bin_s=p.bin_s, median=tuple(med), upper=tuple(up), quantile=quantile)
