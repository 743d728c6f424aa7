"""The online duration predictor: quantiles keyed from specific to general, state in / state out."""
from __future__ import annotations

import json

import pytest

from rayfin.policy.duration import DurationParams, DurationPredictor, DurationState, JobKey, quantile

P = DurationPredictor(DurationParams(quantile=0.5, min_samples=2, window=4))


def _state(*runs: tuple[JobKey, float]) -> DurationState:
    s = DurationState()
    for key, d in runs:
        s = P.observe(s, key, d)
    return s


A1 = JobKey("d0", "alice", "train", 1)
A1_OTHER = JobKey("d0", "alice", "eval", 1)
A8 = JobKey("d0", "alice", "train", 8)
B1 = JobKey("d0", "bob", "train", 1)
NEW_DESK = JobKey("d9", "carol", "x", 1)


@pytest.mark.parametrize("runs, key, seconds, level", [
    # two runs of the same job: its median (100 + 300) / 2 = 200, most specific level
    ([(A1, 100.0), (A1, 300.0)], A1, 200.0, 0),
    # another name of the same user and size: level 1 (user, gpus) holds the same runs
    ([(A1, 100.0), (A1, 300.0)], A1_OTHER, 200.0, 1),
    # another size of the same user: level 2 (user)
    ([(A1, 100.0), (A1, 300.0)], A8, 200.0, 2),
    # another user of the same desk and size: level 3 (desk, gpus)
    ([(A1, 100.0), (A1, 300.0)], B1, 200.0, 3),
    # one run only: too few for levels 0-3 (min_samples 2); the desk level takes one
    ([(A1, 50.0)], B1, 50.0, 4),
])
def test_prediction_falls_back_from_specific_to_general(runs, key, seconds, level):
    p = P.predict(_state(*runs), key)
    assert p is not None and p.seconds == pytest.approx(seconds) and p.level == level


def test_no_history_means_no_prediction():
    assert P.predict(_state((A1, 10.0)), NEW_DESK) is None
    assert P.predict(DurationState(), A1) is None


def test_window_forgets_old_runs_and_state_is_immutable():
    s0 = _state((A1, 1000.0), (A1, 1000.0))
    s1 = s0
    for _ in range(4):          # window 4: the four 10 s runs push both 1000 s runs out
        s1 = P.observe(s1, A1, 10.0)
    assert P.predict(s1, A1).seconds == pytest.approx(10.0)
    assert P.predict(s0, A1).seconds == pytest.approx(1000.0)   # the old state is unchanged
    assert s1.observed == 6


def test_state_round_trips_through_json():
    s = _state((A1, 100.0), (B1, 7.0), (A8, 3.5))
    back = DurationState.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s and P.predict(back, A8) == P.predict(s, A8)


@pytest.mark.parametrize("bad", [{"history": [[["n"], "x"]]}, {"history": 5}])
def test_bad_state_names_the_field(bad):
    with pytest.raises(ValueError, match="history"):
        DurationState.from_dict(bad)


@pytest.mark.parametrize("kwargs, field", [({"quantile": 1.0}, "quantile"), ({"window": 0}, "window")])
def test_bad_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DurationParams(**kwargs)


def test_negative_runtime_is_refused():
    with pytest.raises(ValueError, match="runtime"):
        P.observe(DurationState(), A1, -1.0)


@pytest.mark.parametrize("values, q, expected", [
    ([1.0], 0.5, 1.0),
    ([1.0, 3.0], 0.5, 2.0),
    ([4.0, 1.0, 2.0, 3.0], 0.5, 2.5),       # sorted 1 2 3 4: position 1.5
    ([0.0, 10.0], 0.8, 8.0),
])
def test_quantile_interpolates_like_numpy(values, q, expected):
    assert quantile(values, q) == pytest.approx(expected)


# ---- the live controller keeps the predictor's history across a restart ------------------------
def test_controller_restart_keeps_the_duration_history(tmp_path):
    # Two 300 s runs of "train" on desk fx, then a new controller process on the same ledger file:
    # its snapshot predicts 300 s for the next "train" at once (with no history it would be None).
    from rayfin.controller.core import ControllerCore
    from rayfin.controller.ledger import SqliteLedger
    from rayfin.controller.state import DURATION_KEY
    from tests.support.builders import config, controller_env
    tok = "fx-demo-token"

    core, backend, clock, ledger = controller_env(tmp_path)
    spec = {"kind": "callable", "payload": b"x", "gpus": 1, "name": "train"}
    for _ in range(2):
        job = core.submit(tok, "fx", spec)["job_id"]
        for _ in range(3):
            core.cycle()
        clock.advance(300.0)
        backend.finish(job)
        core.cycle()
        assert core.status(tok, job)["state"] == "SUCCEEDED"
    assert json.loads(ledger.get_kv(DURATION_KEY))["observed"] == 2
    ledger.close()
    again = ControllerCore(config(), SqliteLedger(tmp_path / "ledger.db"), backend, clock=clock)
    assert again.state.duration_state.observed == 2
    nxt = again.submit(tok, "fx", spec)["job_id"]
    assert again.snapshot().hints[nxt].predicted_s == pytest.approx(300.0)


def test_unreadable_saved_duration_state_starts_empty(tmp_path):
    from rayfin.controller.state import DURATION_KEY, load_duration_state
    from tests.support.builders import controller_env

    _, _, _, ledger = controller_env(tmp_path)
    ledger.put_kv(DURATION_KEY, b'{"history": 5}')
    assert load_duration_state(ledger) == DurationState()
