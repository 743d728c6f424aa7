"""benchmarks/autoscaling_seeds.py: the equal-cost ratio summed up over runs that differ only in the seed."""
from __future__ import annotations

import json

import pytest

from benchmarks import autoscaling_seeds as seeds

SETUP = {"trace": "t.csv", "forecaster": "autoets", "hold_s": 600.0, "fold_days": [6, 7], "default_budget": 0.1}


def run(seed: int, ratio: float, quantile: float = 0.4, **setup) -> dict:
    return {"setup": {**SETUP, "seed": seed, **setup},
            "frontier": {"slo_ratio_at_equal_cost": ratio,
                         "slo_ratio_at_equal_cost_over_folds": {"median": ratio - 0.05, "min": 0.1, "max": 0.9, "n": 2},
                         "rayfin_quantile": {"slo_ratio_at_equal_cost_pooled": {"geomean": quantile}},
                         "rayfin_calibrated": {"slo_ratio_at_equal_cost_pooled": {"per_point": [
                             {"knob": 0.05, "ratio": 0.3}, {"knob": 0.1, "ratio": ratio + 0.1}]}}},
            "targets": {"mase_below_1_at_every_bin": True}}


def test_mean_spread_and_how_many_seeds_meet_the_target():
    s = seeds.summarize([("b.json", run(1, 0.6)), ("a.json", run(0, 0.4)), ("c.json", run(2, 0.5))])
    assert [row["seed"] for row in s["seeds"]] == [0, 1, 2]
    r = s["slo_ratio_at_equal_cost"]
    assert r["n"] == 3 and r["mean"] == pytest.approx(0.5) and r["sd"] == pytest.approx(0.1)
    assert r["se"] == pytest.approx(0.1 / 3 ** 0.5, abs=1e-4) and (r["min"], r["max"]) == (0.4, 0.6)
    assert s["seeds_meeting_target"] == 2                    # 0.4 and 0.5 (<= 0.5), not 0.6
    assert s["median_over_folds"]["mean"] == pytest.approx(0.45)
    assert s["mase_below_1_in_every_run"] is True
    assert s["at_default_budget"]["mean"] == pytest.approx(0.6)     # the budget-0.1 point, not 0.05's


def test_one_run_has_no_spread_and_a_run_without_a_seed_is_named():
    s = seeds.summarize([("a.json", run(0, 0.4))])
    assert s["slo_ratio_at_equal_cost"]["sd"] is None and s["slo_ratio_at_equal_cost"]["se"] is None
    unseeded = run(0, 0.4)
    del unseeded["setup"]["seed"]
    with pytest.raises(ValueError, match="no setup.seed in b.json"):
        seeds.summarize([("b.json", unseeded)])


def test_runs_that_differ_in_more_than_the_seed_are_refused():
    with pytest.raises(ValueError, match="hold_s"):
        seeds.summarize([("a", run(0, 0.4)), ("b", run(1, 0.4, hold_s=180.0))])
    with pytest.raises(ValueError, match="seed appears twice"):
        seeds.summarize([("a", run(0, 0.4)), ("b", run(0, 0.5))])


def test_the_command_writes_json_and_a_plot(tmp_path, capsys):
    paths = []
    for seed, ratio in ((0, 0.45), (1, 0.55)):
        p = tmp_path / f"seed{seed}.json"
        p.write_text(json.dumps(run(seed, ratio)))
        paths.append(str(p))
    out = tmp_path / "summary.json"
    assert seeds.main([*paths, "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["slo_ratio_at_equal_cost"]["mean"] == pytest.approx(0.5) and got["seeds_meeting_target"] == 1
    assert (tmp_path / "summary.png").stat().st_size > 1000
    assert "mean 0.500" in capsys.readouterr().out


def test_the_target_is_read_off_the_mean_and_its_upper_bound():
    # mean 0.45, but four draws this far apart leave 0.5 inside the bound: not met
    wide = seeds.summarize([("a", run(0, 0.35)), ("b", run(1, 0.55)), ("c", run(2, 0.40)), ("d", run(3, 0.50))])
    r = wide["slo_ratio_at_equal_cost"]
    assert r["bound"] == "upper" and r["t"] == pytest.approx(2.353)
    assert r["bound_95"] == pytest.approx(0.45 + 2.353 * r["se"], abs=1e-3) and r["bound_95"] > 0.5
    assert wide["target_met_on_the_mean"] is False
    tight = seeds.summarize([("a", run(0, 0.44)), ("b", run(1, 0.46)), ("c", run(2, 0.45)), ("d", run(3, 0.45))])
    assert tight["slo_ratio_at_equal_cost"]["bound_95"] < 0.5 and tight["target_met_on_the_mean"] is True
