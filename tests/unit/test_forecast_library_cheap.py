"""The library forecaster's cheap updates (ETS recursion between refits) and the policy wiring."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

pytest.importorskip("statsforecast")

from rayfin.forecast.choice import (KINDS, forecaster_from_dict, forecaster_predict, forecaster_update,  # noqa: E402
                                    make_forecaster)
from rayfin.forecast.conformal import ConformalParams, conformal_init, observe  # noqa: E402
from rayfin.forecast.library import (LibraryModel, LibraryParams, LibraryState, library_flush,  # noqa: E402
                                     library_init, library_point, library_predict, library_update)
from tests.support.serve import policy_ctx  # noqa: E402


def _series(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 20 + 5 * np.sin(2 * np.pi * t / 48) + np.cumsum(rng.normal(0, 0.3, n)) + rng.normal(0, 1, n)


def _feed(params: LibraryParams, ys: np.ndarray) -> list[LibraryState]:
    fs, out = library_init(params), []
    for i, y in enumerate(ys):
        fs = library_flush(library_update(fs, i * params.bin_s, float(y)))
        out.append(fs)
    return out


def test_cheap_update_equals_the_fitted_models_forward_over_the_history():
    from statsforecast.models import AutoETS

    ys = _series(400)
    # 4-bin "day": AutoETS may pick a seasonal model; history long enough never to be trimmed
    p = LibraryParams(bin_s=60.0, season_s=240.0, model=LibraryModel.AUTOETS, refit_bins=1000,
                      history_bins=1000, horizon_bins=3)
    states = _feed(p, ys)
    first_fit = next(i for i, s in enumerate(states) if s.fits == 1)
    assert states[-1].fits == 1 and states[-1].since_fit == len(ys) - 1 - first_fit
    model = AutoETS(season_length=4).fit(ys[: first_fit + 1])   # the same fit the state made
    for k in (first_fit + 1, first_fit + 50, len(ys) - 1):
        want = model.forward(ys[: k + 1], h=3)["mean"]       # same parameters, whole history
        assert states[k].path == pytest.approx(np.maximum(want, 0.0), rel=1e-9, abs=1e-9)


def test_refit_every_k_bins_and_equal_to_refit_every_bin_at_each_refit():
    ys = _series(240, seed=1)
    base = dict(bin_s=60.0, season_s=3600.0, model=LibraryModel.AUTOETS, history_bins=1000, horizon_bins=2)
    cheap = _feed(LibraryParams(**base, refit_bins=30), ys)
    full = _feed(LibraryParams(**base), ys)
    fitted_at = [i for i in range(1, len(ys)) if cheap[i].since_fit == 0 and cheap[i].fits > cheap[i - 1].fits]
    assert len(fitted_at) >= 3 and all(b - a == 30 for a, b in zip(fitted_at, fitted_at[1:]))
    for i in fitted_at:                                   # a refit is a full refit
        assert cheap[i].path == pytest.approx(full[i].path, rel=1e-9)
    # between refits the one-step forecasts stay close to refitting every bin (stated: 5% here)
    err = [abs(cheap[i].path[0] - full[i].path[0]) / full[i].path[0] for i in range(fitted_at[0], len(ys))]
    assert float(np.mean(err)) < 0.05


def test_cheap_update_costs_under_a_millisecond():
    ys = _series(200, seed=2)
    p = LibraryParams(bin_s=60.0, season_s=3600.0, model=LibraryModel.AUTOETS, refit_bins=10_000, horizon_bins=2)
    fs = _feed(p, ys)[-1]
    assert fs.ets_x and fs.fits == 1
    t0, n = time.perf_counter(), 200
    for i in range(n):
        fs = library_flush(library_update(fs, (200 + i) * 60.0, float(ys[i])))
    assert fs.fits == 1
    assert (time.perf_counter() - t0) / n < 1e-3


def test_cheap_state_round_trips_through_json_and_continues_identically():
    ys = _series(200, seed=3)
    p = LibraryParams(bin_s=60.0, season_s=3600.0, model=LibraryModel.AUTOETS_SNAIVE, refit_bins=50,
                      horizon_bins=2)
    fs = _feed(p, ys[:150])[-1]
    back = LibraryState.from_dict(json.loads(json.dumps(fs.to_dict(), allow_nan=False)))
    assert back == fs and back.ets_x
    for i in range(150, 200):
        fs = library_flush(library_update(fs, i * 60.0, float(ys[i])))
        back = library_flush(library_update(back, i * 60.0, float(ys[i])))
    assert back == fs


def test_library_quantile_and_calibrated_margin():
    ys = _series(300, seed=4)
    p = LibraryParams(bin_s=60.0, season_s=3600.0, model=LibraryModel.AUTOETS, refit_bins=60, horizon_bins=3)
    fs = _feed(p, ys)[-1]
    assert fs.scale > 0
    pr = library_predict(fs, 120.0, 0.9, now=300 * 60.0)
    assert len(pr.median) == 3 and pr.median[0] == library_point(fs, 300 * 60.0)
    assert all(u > m for u, m in zip(pr.upper, pr.median))
    assert library_predict(fs, 0.0, 0.5, now=300 * 60.0, z=0.0).upper == pytest.approx(pr.median[:1])
    # conformal calibration accepts the library state: it files forecasts and scores bins
    cs, fs2 = conformal_init(ConformalParams(budget=0.1)), library_init(p)
    for i, y in enumerate(ys):
        fs2 = library_update(fs2, i * 60.0, float(y))
        cs = observe(cs, i * 60.0, float(y), fs2, 2)
    assert cs.bins > 100 and 0.0 < cs.miss_rate < 0.5


def test_choice_interface_makes_both_kinds_and_rejects_unknown():
    assert "rayfin" in KINDS and "autoets" in KINDS
    for kind in ("rayfin", "autoets"):
        fs = make_forecaster(kind, {"bin_s": 60.0, "season_s": 3600.0, "week_seasons": 1}, {"refit_bins": 60})
        for i, y in enumerate(_series(200, seed=5)):
            fs = forecaster_update(fs, i * 60.0, float(y))
        assert forecaster_from_dict(json.loads(json.dumps(fs.to_dict()))) == fs
        assert forecaster_predict(fs, 120.0, 0.9, now=200 * 60.0).peak > 0
    with pytest.raises(ValueError, match="forecaster must be one of"):
        make_forecaster("prophet")




def test_serve_policy_runs_on_the_library_forecaster_and_scales_ahead():
    from serve_apps.autoscaling_policy import PredictivePolicy

    with pytest.raises(ValueError, match="forecaster"):
        PredictivePolicy(forecaster="nope")
    with pytest.raises(ValueError, match="library"):
        PredictivePolicy(forecaster="autoets", library={"refit_every": 3})
    # a 1-hour "day" of 1-minute bins; a rise to 40 ongoing requests in minutes 40..59
    pol = PredictivePolicy(forecaster="autoets", lead_time_s=120, miss_budget=0.1, downscale_hold_s=0,
                           forecast={"bin_s": 60.0, "season_s": 3600.0, "week_seasons": 1})
    state, n = {}, 1
    for k in range(3 * 3600 // 10):
        t = k * 10.0
        load = 40.0 if (t % 3600) >= 2400 else 4.0
        n, state = pol(policy_ctx(load, n, t, state, max_replicas=50))
    fs = state["forecast"]
    assert isinstance(fs, LibraryState) and fs.fits >= 1 and fs.params.refit_bins == 60
    assert state["conformal"].bins > 0
    assert math.isfinite(state["forecast_load"]) and n >= 2
