"""Cost/SLO frontiers of autoscaling policies, scored per day (rolling origin). See docs/autoscaling.md.

A policy family is one policy over a range of its knob: Ray's default policy over
`target_ongoing_requests`, rayfin's over its fixed quantile, rayfin's calibrated policy over its
miss budget. Every member replays the whole trace from day 0 with its setting fixed in advance,
so on a scored day d everything it learnt (forecaster, calibrated margin) comes from days before
d. Fold d scores day d alone; folds are days `first_fold_day`..last.

On a fold, each member is a point (replica-hours, share of requests over the SLO). A family's
frontier is the lower-left envelope of its points. `slo_ratio_at_equal_cost` compares rayfin's
points with Ray's frontier at the same cost: Ray's SLO rate is interpolated linearly in cost and
log-linearly in rate between its two neighbouring points; rayfin points outside Ray's cost range
are not compared. A family's ratio is the geometric mean over its compared points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DAY_S = 86_400.0
RATE_FLOOR = 1e-6       # an SLO rate of 0 is read as this for logs and ratios


@dataclass(frozen=True)
class Point:
    family: str
    knob: float
    replica_hours: float
    slo_violation_rate: float

    def as_dict(self) -> dict:
        return {"knob": self.knob, "replica_hours": round(self.replica_hours, 3),
                "slo_violation_rate": round(self.slo_violation_rate, 6)}


def day_metrics(replicas: np.ndarray, p_viol: np.ndarray, arrivals: np.ndarray, dt: float,
                days: range | list[int]) -> tuple[float, float]:
    """(replica-hours, SLO violation rate) over the given whole days of a run."""
    per_day = int(round(DAY_S / dt))
    sel = np.concatenate([np.arange(d * per_day, min((d + 1) * per_day, len(replicas))) for d in days])
    rh = float(replicas[sel].sum() * dt / 3600.0)
    a = float(arrivals[sel].sum())
    return rh, (float((p_viol[sel] * arrivals[sel]).sum()) / a if a else 0.0)


def envelope(points: list[Point]) -> list[Point]:
    """Pareto points (no other point is both cheaper and better), by cost."""
    out: list[Point] = []
    for p in sorted(points, key=lambda p: (p.replica_hours, p.slo_violation_rate)):
        if not out or p.slo_violation_rate < out[-1].slo_violation_rate:
            out.append(p)
    return out


def interp_rate(front: list[Point], cost: float) -> float | None:
    """The frontier's SLO rate at `cost` (log-linear in rate); None outside its cost range."""
    if not front or cost < front[0].replica_hours or cost > front[-1].replica_hours:
        return None
    for a, b in zip(front, front[1:]):
        if a.replica_hours <= cost <= b.replica_hours:
            if b.replica_hours == a.replica_hours:
                return min(a.slo_violation_rate, b.slo_violation_rate)
            w = (cost - a.replica_hours) / (b.replica_hours - a.replica_hours)
            la = math.log(max(a.slo_violation_rate, RATE_FLOOR))
            lb = math.log(max(b.slo_violation_rate, RATE_FLOOR))
            return math.exp(la + w * (lb - la))
    return front[-1].slo_violation_rate   # cost equals the last point's


def ratio_at_equal_cost(points: list[Point], baseline: list[Point]) -> dict:
    """rayfin's SLO rate over the baseline frontier's at the same cost, per point and combined."""
    front = envelope(baseline)
    per = []
    for p in sorted(points, key=lambda p: p.knob):
        ref = interp_rate(front, p.replica_hours)
        per.append({"knob": p.knob, "ratio": None if ref is None else
                    round(max(p.slo_violation_rate, RATE_FLOOR) / max(ref, RATE_FLOOR), 4)})
    vals = [r["ratio"] for r in per if r["ratio"] is not None]
    return {"geomean": round(float(np.exp(np.mean(np.log(vals)))), 4) if vals else None,
            "compared": len(vals), "per_point": per}


def spread(values: list[float | None]) -> dict:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(float(np.median(v)), 4), "min": round(float(np.min(v)), 4),
            "max": round(float(np.max(v)), 4), "n": len(v)}


def plot(path, pooled: dict[str, list[Point]], folds: dict[int, dict[str, list[Point]]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ray_default": "tab:blue", "rayfin_quantile": "tab:orange", "rayfin_calibrated": "tab:green"}
    labels = {"ray_default": "Ray default (target_ongoing_requests)", "rayfin_quantile": "rayfin, fixed quantile",
              "rayfin_calibrated": "rayfin, calibrated (miss budget)"}
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    ax = axes[0]
    for fam, pts in pooled.items():
        pts = sorted(pts, key=lambda p: p.replica_hours)
        ax.plot([p.replica_hours for p in pts], [max(p.slo_violation_rate, RATE_FLOOR) for p in pts],
                "o-", color=colors.get(fam), label=labels.get(fam, fam))
        for p in pts:
            ax.annotate(f"{p.knob:g}", (p.replica_hours, max(p.slo_violation_rate, RATE_FLOOR)),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("replica-hours (scored days)")
    ax.set_ylabel("share of requests over the SLO")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax = axes[1]
    for _d, fams in sorted(folds.items()):
        for fam, pts in fams.items():
            pts = sorted(pts, key=lambda p: p.replica_hours)
            ax.plot([p.replica_hours for p in pts], [max(p.slo_violation_rate, RATE_FLOOR) for p in pts],
                    "-", color=colors.get(fam), alpha=0.5, lw=0.9)
    ax.set_yscale("log")
    ax.set_xlabel("replica-hours (one day)")
    ax.set_title("per fold (one line per day and family)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
