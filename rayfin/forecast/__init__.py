"""Pure online forecaster of per-desk / per-endpoint load (no Ray, injected clock).

    state = init(ForecastParams(bin_s=60))
    state = update(state, t, value)             # returns a new frozen state
    pred = predict(state, horizon_s=120, quantile=0.9, now=t)
    pred.peak                                   # P90 over the next 120 s
    ForecastState.from_dict(state.to_dict())    # JSON-safe persistence
"""
from rayfin.forecast.model import (
    ForecastParams,
    ForecastState,
    Prediction,
    flush,
    init,
    point,
    predict,
    update,
)

__all__ = ["ForecastParams", "ForecastState", "Prediction", "flush", "init", "point", "predict", "update"]
