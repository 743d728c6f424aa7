"""The spread of one figure over repeated runs (seeds, or full benchmark runs one after another),
and a one-sided 95% bound on its mean, for targets read off the mean rather than off one run.

    spread([0.947, 0.967, 0.990], bound="lower")
    -> {"n": 3, "mean": 0.968, "sd": 0.0215, "se": 0.0124, "min": 0.947, "max": 0.99,
        "bound": "lower", "t": 2.92, "bound_95": 0.9317}

The bound is Student's t with n - 1 degrees of freedom (runs are few, and their spread is
estimated from them): mean - t * se for a floor target, mean + t * se for a ceiling.
"""
from __future__ import annotations

import math
import statistics
from typing import Literal

# One-sided 95% quantiles of Student's t (0.95), by degrees of freedom; past 30, the normal's.
T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833,
       10: 1.812, 11: 1.796, 12: 1.782, 13: 1.771, 14: 1.761, 15: 1.753, 16: 1.746, 17: 1.740,
       18: 1.734, 19: 1.729, 20: 1.725, 21: 1.721, 22: 1.717, 23: 1.714, 24: 1.711, 25: 1.708,
       26: 1.706, 27: 1.703, 28: 1.701, 29: 1.699, 30: 1.697}
Z95 = 1.645


def t95(df: int) -> float:
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T95.get(df, Z95)


def spread(values: list[float], bound: Literal["lower", "upper"] | None = None) -> dict:
    """Mean, standard deviation and standard error (None for a single run), range; with `bound`,
    the one-sided 95% lower or upper bound on the mean (None for a single run)."""
    if not values:
        raise ValueError("no values")
    n = len(values)
    sd = statistics.stdev(values) if n > 1 else None
    se = None if sd is None else sd / math.sqrt(n)
    mean = statistics.fmean(values)
    out: dict = {"n": n, "mean": round(mean, 4), "sd": None if sd is None else round(sd, 4),
                 "se": None if se is None else round(se, 4), "min": min(values), "max": max(values)}
    if bound is not None:
        if bound not in ("lower", "upper"):
            raise ValueError(f"bound must be 'lower' or 'upper', got {bound!r}")
        t = None if se is None else t95(n - 1)
        out.update(bound=bound, t=t, bound_95=None if se is None or t is None else
                   round(mean - t * se if bound == "lower" else mean + t * se, 4))
    return out


def meets(s: dict, target: float) -> bool:
    """The rule of the plans (docs/results/*/PLAN_*.md): the mean and its one-sided 95% bound are
    both on the target's side (>= a floor for a lower bound, <= a ceiling for an upper one)."""
    if s.get("bound_95") is None:
        return False
    if s["bound"] == "lower":
        return s["mean"] >= target and s["bound_95"] >= target
    return s["mean"] <= target and s["bound_95"] <= target
