"""Online conformal margin and the statsforecast-backed forecaster: pure, state in / state out."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rayfin.forecast import ForecastParams, flush, init, predict, update
from rayfin.forecast.conformal import ConformalParams, ConformalState, conformal_init, observe
from rayfin.forecast.library import (LibraryModel, LibraryParams, LibraryState, library_flush, library_point,
                                     library_update)

PARAMS = ForecastParams(bin_s=60.0, season_s=3600.0, week_seasons=1)


def _replay(budget: float | None, quantile: float = 0.9, bins: int = 3000, seed: int = 3):
    """A daily sine with heavy-tailed (Student t, 2 dof) noise in log space: the Gaussian margin is
    wrong for it. Returns the share of bins above the forecast made one bin earlier."""
    rng = np.random.default_rng(seed)
    fs = init(PARAMS)
    cs = conformal_init(ConformalParams(budget=budget)) if budget else None
    prev_upper, over, scored = None, 0, 0
    for b in range(bins):
        t = b * 60.0
        x = math.exp(3.0 + math.sin(2 * math.pi * t / 3600.0) + 0.3 * rng.standard_t(2))
        if prev_upper is not None and b > 200:
            over += x > prev_upper
            scored += 1
        fs = update(fs, t, x)
        if cs is not None:
            cs = observe(cs, t, x, fs, 1)
        fs = flush(fs)
        pred = predict(fs, 0.0, quantile, now=t + 60.0, z=None if cs is None else cs.theta)
        prev_upper = pred.upper[0]
    return over / scored, cs


def test_calibrated_margin_tracks_the_budget_where_the_gaussian_one_does_not():
    gauss, _ = _replay(None, quantile=0.98)
    cal, cs = _replay(0.02)
    # The Gaussian P98 is exceeded far more often than 2% under t(2) noise (3.6% with this seed);
    # the tracked margin holds the share within about half a percentage point of the budget.
    assert gauss > 0.03, gauss
    assert abs(cal - 0.02) < 0.008, cal
    assert abs(cal - 0.02) < abs(gauss - 0.02) / 2
    assert abs(cs.miss_rate - 0.02) < 0.012


def test_margin_moves_by_lr_times_miss_minus_budget():
    p = ConformalParams(budget=0.1, lr=0.05)
    cs = conformal_init(p)
    assert cs.theta == pytest.approx(1.2816, abs=1e-3)       # z_0.9: tracking starts at the Gaussian margin
    fs = init(ForecastParams(bin_s=60.0, season_s=120.0, week_seasons=1, kernel_bins=0))
    for b in range(6):                                        # learn a flat series of 10
        fs = update(fs, b * 60.0, 10.0)
        cs = observe(cs, b * 60.0, 10.0, fs, 1)
    theta0, bins0, misses0 = cs.theta, cs.bins, cs.misses
    fs = update(fs, 6 * 60.0, 1000.0)         # closes bin 5 (10, on its forecast: a hit); bin 6 far above
    cs = observe(cs, 6 * 60.0, 1000.0, fs, 1)
    fs = update(fs, 7 * 60.0, 10.0)           # closes bin 6: a miss
    cs = observe(cs, 7 * 60.0, 10.0, fs, 1)
    assert (cs.bins, cs.misses) == (bins0 + 2, misses0 + 1)
    # hit: theta -= lr * budget; miss: theta += lr * (1 - budget); together 0.05 * (1 - 2 * 0.1) = 0.04
    assert cs.theta == pytest.approx(theta0 + 0.04)


def test_conformal_state_round_trips_through_json():
    _, cs = _replay(0.05, bins=400)
    back = ConformalState.from_dict(json.loads(json.dumps(cs.to_dict())))
    assert back == cs


@pytest.mark.parametrize("kw, field", [({"budget": 0.0}, "budget"), ({"budget": 1.0}, "budget"),
                                       ({"lr": 0.0}, "lr"), ({"min_theta": 2.0, "max_theta": 1.0}, "min_theta")])
def test_bad_conformal_params_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        ConformalParams(**kw)


def test_z_margin_zero_gives_the_median():
    fs = init(PARAMS)
    for b in range(120):
        fs = update(fs, b * 60.0, 5.0 + (b % 7))
    pred = predict(fs, 120.0, 0.9, now=120 * 60.0, z=0.0)
    assert pred.upper == pred.median


# ---- statsforecast behind the same interface ------------------------------------------------

def _feed(model: LibraryModel, ys, bin_s: float = 3600.0) -> LibraryState:
    """All bins but the last as history, then the last one through update + flush: one fit
    (a fit per bin would cost a second or more per test)."""
    fs = LibraryState(params=LibraryParams(bin_s=bin_s, model=model, horizon_bins=3),
                      history=tuple(float(y) for y in ys[:-1]), last_bin=len(ys) - 2)
    return library_flush(library_update(fs, (len(ys) - 1) * bin_s, float(ys[-1])))


def test_seasonal_naive_repeats_the_last_day():
    ys = [float(h % 24) + 10 * (d) for d in range(3) for h in range(24)]
    fs = _feed(LibraryModel.SEASONAL_NAIVE, ys)
    # next bins are hours 0, 1, 2 of day 3: seasonal-naive gives day 2's hours 0..2 = 20, 21, 22
    assert fs.path == (20.0, 21.0, 22.0)
    assert library_point(fs, 72 * 3600.0 + 5) == 20.0
    assert library_point(fs, 74 * 3600.0) == 22.0


def test_combination_is_the_mean_of_autoets_and_seasonal_naive():
    rng = np.random.default_rng(0)
    ys = [5 + 3 * math.sin(2 * math.pi * h / 24) + rng.normal(0, 0.3) for h in range(24 * 4)]
    ets = _feed(LibraryModel.AUTOETS, ys).path
    sn = _feed(LibraryModel.SEASONAL_NAIVE, ys).path
    combo = _feed(LibraryModel.AUTOETS_SNAIVE, ys).path
    assert combo == pytest.approx([(a + b) / 2 for a, b in zip(ets, sn)])
    assert ets != sn                                  # the two models do differ here


def test_autoets_learns_a_level():
    fs = _feed(LibraryModel.AUTOETS, [10.0] * 60 + [30.0] * 60, bin_s=300.0)
    assert library_point(fs, 120 * 300.0) == pytest.approx(30.0, rel=0.05)


def test_library_state_round_trips_and_ignores_old_bins():
    fs = _feed(LibraryModel.SEASONAL_NAIVE, list(range(30)))
    back = LibraryState.from_dict(json.loads(json.dumps(fs.to_dict())))
    assert back == fs
    assert library_update(back, 0.0, 99.0) == back   # an observation older than the last bin
