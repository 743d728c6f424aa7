"""One pure interface over rayfin's own forecaster and the library-backed one.

    fs = make_forecaster("autoets", rayfin={"bin_s": 60}, library={"refit_bins": 60})
    fs = forecaster_update(fs, t, value)       # a new frozen state
    pred = forecaster_predict(fs, horizon_s, quantile, now=t, z=None)   # a Prediction
    forecaster_from_dict(forecaster_to_dict(fs)) == fs

`kind` is "rayfin" (rayfin.forecast.model) or a `LibraryModel` value ("autoets",
"autoets_snaive", "seasonal_naive", "mstl"; rayfin.forecast.library). The library state takes
its bin and season from the rayfin settings, so one `forecast:` section serves both.
"""
from __future__ import annotations

from typing import Any

from rayfin.forecast.library import (LibraryModel, LibraryParams, LibraryState, library_init, library_predict,
                                     library_update)
from rayfin.forecast.model import ForecastParams, ForecastState, Prediction, init, predict, update

Forecaster = ForecastState | LibraryState
KINDS = ("rayfin", *(m.value for m in LibraryModel))


def check_kind(kind: str, field: str = "forecaster") -> str:
    if kind not in KINDS:
        raise ValueError(f"{field} must be one of {', '.join(KINDS)}; got {kind!r}")
    return kind


def make_forecaster(kind: str = "rayfin", rayfin: dict[str, Any] | None = None,
                    library: dict[str, Any] | None = None) -> Forecaster:
    fp = ForecastParams(**(rayfin or {}))
    if check_kind(kind) == "rayfin":
        return init(fp)
    lib = {"bin_s": fp.bin_s, "season_s": fp.season_s, "offset": fp.offset, "min_scale": fp.min_scale,
           "scale_beta": fp.scale_beta, "horizon_growth": fp.horizon_growth, **(library or {})}
    return library_init(LibraryParams(**{**lib, "model": LibraryModel(kind)}))


def forecaster_update(fs: Forecaster, t: float, value: float) -> Forecaster:
    return library_update(fs, t, value) if isinstance(fs, LibraryState) else update(fs, t, value)


def forecaster_predict(fs: Forecaster, horizon_s: float, quantile: float = 0.9, now: float | None = None,
                       z: float | None = None) -> Prediction:
    if isinstance(fs, LibraryState):
        return library_predict(fs, horizon_s, quantile, now=now, z=z)
    return predict(fs, horizon_s, quantile, now=now, z=z)


def forecaster_to_dict(fs: Forecaster) -> dict[str, Any]:
    return fs.to_dict()


def forecaster_from_dict(data: dict[str, Any]) -> Forecaster:
    """A `to_dict()` of either state (the library's carries `history`, rayfin's `season`)."""
    return LibraryState.from_dict(data) if "history" in data else ForecastState.from_dict(data)
