"""benchmarks/serve_flood_runs.py: the full-flood targets read off the mean over runs."""
from __future__ import annotations

import json

import pytest

from benchmarks import serve_flood_runs as runs

SETUP = {"flood": "max", "flood_conns": 1500, "ingress": "haproxy", "haproxy_edge": True, "cpus": 2,
         "wall_s": 350.0, "load_avg_1m": 0.5}


def result(tp: float, iso: float, *, admitted: int = 30, **setup) -> dict:
    return {"setup": {**SETUP, **setup},
            "gateway_throughput_ratio": tp,
            "throughput": {"rounds": 60, "pair_ratios": [tp - 0.01, tp, tp + 0.02]},
            "quiet_p99_ratio": iso, "quiet_p99_alone_ms": 8.0, "quiet_p99_flood_ms": 8.0 * iso,
            "quiet_samples_per_condition": 3000, "flood_rate_rps": 1600.0,
            "flood_admitted": admitted, "flood_allowed": 232}


def test_targets_met_on_the_mean_and_its_bound():
    s = runs.summarize([(f"r{i}", result(tp, iso)) for i, (tp, iso) in
                        enumerate([(0.97, 1.0), (0.98, 1.1), (0.96, 0.95), (0.97, 1.05), (0.975, 1.0), (0.965, 1.1)])])
    tp = s["gateway_throughput_ratio"]
    assert tp["n"] == 6 and tp["bound"] == "lower" and tp["t"] == 2.015
    assert 0.95 < tp["bound_95"] < tp["mean"] and s["throughput_met"] is True
    assert s["quiet_p99_ratio"]["bound"] == "upper" and s["isolation_met"] is True
    assert s["runs_meeting_throughput"] == 6 and s["runs_meeting_isolation"] == 6
    assert s["runs"][0]["pair_ratio_median"] == pytest.approx(0.97)
    assert s["flood_admitted_within_allowed"] is True


def test_a_mean_over_the_line_with_a_wide_spread_is_not_met():
    s = runs.summarize([("a", result(0.94, 1.0)), ("b", result(0.97, 1.3)), ("c", result(0.99, 1.0))])
    assert s["gateway_throughput_ratio"]["mean"] > 0.95 and s["throughput_met"] is False
    assert s["runs_meeting_throughput"] == 2 and s["runs_meeting_isolation"] == 2
    assert s["isolation_met"] is False       # mean 1.1, upper bound past 1.25


def test_runs_set_up_differently_or_not_at_full_flood_are_refused():
    with pytest.raises(ValueError, match="flood_conns"):
        runs.summarize([("a", result(0.97, 1.0)), ("b", result(0.97, 1.0, flood_conns=8))])
    with pytest.raises(ValueError, match="not a --flood max run: b"):
        runs.summarize([("a", result(0.97, 1.0)), ("b", result(0.97, 1.0, flood="10x"))])
    # the wall time and the load at the start may differ
    assert runs.summarize([("a", result(0.97, 1.0)), ("b", result(0.97, 1.0, wall_s=1.0, load_avg_1m=3.0))])


def test_an_admission_past_what_the_flood_was_allowed_is_flagged():
    s = runs.summarize([("a", result(0.97, 1.0)), ("b", result(0.97, 1.0, admitted=300))])
    assert s["flood_admitted_within_allowed"] is False


def test_the_command_writes_json_and_a_plot(tmp_path, capsys):
    paths = []
    for i, tp in enumerate((0.96, 0.98)):
        p = tmp_path / f"e{i}.json"
        p.write_text(json.dumps(result(tp, 1.0)))
        paths.append(str(p))
    out = tmp_path / "summary.json"
    assert runs.main([*paths, "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["gateway_throughput_ratio"]["mean"] == pytest.approx(0.97)
    assert (tmp_path / "summary.png").stat().st_size > 0
    assert "gateway_throughput_ratio over 2 runs: mean 0.970" in capsys.readouterr().out


def test_a_file_that_is_not_json_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(SystemExit):
        runs.main([str(bad)])
