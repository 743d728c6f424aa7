"""The spread of one figure over repeated runs (seeds, or full benchmark runs one after another),
and a one-sided 95% bound on its mean, for targets read off the mean rather than off one run;
and the command both summaries of runs share (`summarize_files`: read the runs' JSON, refuse runs
set up differently, write the summary's JSON and PNG).

    spread([0.947, 0.967, 0.990], bound="lower")
    -> {"n": 3, "mean": 0.968, "sd": 0.0215, "se": 0.0124, "min": 0.947, "max": 0.99,
        "bound": "lower", "t": 2.92, "bound_95": 0.9317}

The bound is Student's t with n - 1 degrees of freedom (runs are few, and their spread is
estimated from them): mean - t * se for a floor target, mean + t * se for a ceiling.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Literal

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


def setup_differences(setups: list[dict], may_differ: set[str]) -> list[str]:
    """The setup keys (other than `may_differ`) whose values differ between runs."""
    keys = set().union(*setups) - may_differ
    return sorted(k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in setups}) > 1)


def summarize_files(argv: list[str] | None, *, description: str, runs_help: str, default_out: str,
                    summarize: Callable[[list[tuple[str, dict]]], dict],
                    plot: Callable[[dict, Path], None]) -> tuple[dict[str, Any], Path]:
    """The command line of a summary of runs: JSON files in, `summarize` over them (a KeyError or
    ValueError is a usage error naming the problem), the summary's JSON at `--out` and its PNG
    beside it. Returns the summary and where it went."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help=runs_help)
    p.add_argument("--out", default=default_out)
    args = p.parse_args(argv)
    results = []
    for path in args.runs:
        try:
            results.append((path, json.loads(Path(path).read_text())))
        except (OSError, ValueError) as e:
            p.error(f"{path}: {e}")
    try:
        summary = summarize(results)
    except (KeyError, ValueError) as e:
        p.error(str(e))
    out = Path(args.out)
    summary["plot"] = str(out.with_suffix(".png"))
    out.write_text(json.dumps(summary, indent=1))
    plot(summary, out.with_suffix(".png"))
    return summary, out
