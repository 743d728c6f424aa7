"""benchmarks/spread.py: a figure's spread over runs and the one-sided 95% bound on its mean."""
from __future__ import annotations

import math
import statistics

import pytest

from benchmarks.spread import meets, spread, t95


def test_mean_sd_se_and_range():
    s = spread([0.947, 0.967, 0.990])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.968, abs=1e-4)
    assert s["sd"] == pytest.approx(statistics.stdev([0.947, 0.967, 0.990]), abs=1e-4)
    assert s["se"] == pytest.approx(s["sd"] / math.sqrt(3), abs=1e-4)
    assert (s["min"], s["max"]) == (0.947, 0.990) and "bound_95" not in s


@pytest.mark.parametrize("values, bound, expected", [
    # Student t, one-sided 95%: 2 degrees of freedom 2.920, 5 -> 2.015
    ([0.947, 0.967, 0.990], "lower", 0.968 - 2.920 * 0.0215 / math.sqrt(3)),
    ([1.0, 1.1, 1.2, 1.0, 1.1, 1.2], "upper", 1.1 + 2.015 * statistics.stdev([1.0, 1.1, 1.2] * 2) / math.sqrt(6)),
])
def test_one_sided_bound_uses_student_t_with_n_minus_1_degrees(values, bound, expected):
    s = spread(values, bound=bound)
    assert s["bound"] == bound and s["bound_95"] == pytest.approx(expected, abs=2e-3)


def test_t_quantiles_known_values_and_the_normal_past_the_table():
    assert (t95(1), t95(5), t95(7), t95(30)) == (6.314, 2.015, 1.895, 1.697)
    assert t95(200) == 1.645
    with pytest.raises(ValueError, match="degrees of freedom"):
        t95(0)


def test_one_run_has_no_bound_and_never_meets_a_rule():
    s = spread([0.99], bound="lower")
    assert s["sd"] is None and s["bound_95"] is None
    assert meets(s, 0.95) is False


def test_meets_needs_the_mean_and_the_bound_on_the_targets_side():
    floor = spread([0.96, 0.97, 0.98, 0.97, 0.96, 0.98], bound="lower")
    assert floor["bound_95"] > 0.95 and meets(floor, 0.95)
    assert not meets(spread([0.93, 0.97, 1.0], bound="lower"), 0.95)        # mean 0.967, bound under 0.95
    ceiling = spread([1.0, 1.1, 1.3], bound="upper")
    assert ceiling["mean"] < 1.25 < ceiling["bound_95"] and not meets(ceiling, 1.25)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="no values"):
        spread([])
    with pytest.raises(ValueError, match="bound must be 'lower' or 'upper'"):
        spread([1.0, 2.0], bound="both")     # type: ignore[arg-type]
