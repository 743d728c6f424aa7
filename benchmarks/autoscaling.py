"""Replay a per-minute request-count trace through a queueing model of a replica pool, once per
autoscaling policy, and evaluate the forecaster. See docs/autoscaling.md.

    python -m benchmarks.autoscaling --trace ../shared/traces/invocations_dev.csv --out result.json

Model (same for every policy, same seeded arrivals):
- rate(t) = count[minute] * rate_scale / 60 requests/s; arrivals per step ~ Poisson(rate * dt).
- A replica serves `concurrency` requests at once, each for `service_s`: capacity
  n * concurrency / service_s requests/s with n ready replicas. A new replica is ready
  `cold_start_s` after the policy asks for it and costs replica time from that moment.
- Waiting: a fluid backlog B (arrivals beyond capacity) gives a deterministic wait B / capacity;
  with no backlog, the M/M/c tail P(W > slo) = ErlangC(c, a) * exp(-(c mu - lambda) slo)
  over c = n * concurrency slots. `slo_violation_rate` is the share of requests whose queueing
  delay exceeds `slo_s`.
- The policy sees what Serve would: ongoing requests (in service + queued) averaged over
  look_back_period_s, current and target replicas, and is called through Ray Serve's own
  wrapper (`_apply_autoscaling_config`: scaling factors, delays, cold-start path) with the
  module clock set to simulated time; the result is clipped to [min_replicas, max_replicas].

Policies:
- ray_default: Ray's `replica_queue_length_autoscaling_policy`, Serve's defaults
  (target_ongoing_requests=2, upscale_delay_s=30, downscale_delay_s=600, look_back 30 s).
- rayfin: `serve_apps.autoscaling_policy:PredictivePolicy`, same target, Serve delays 0.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks import autoscaling_frontier as fr
from benchmarks.autoscaling_forecast import compare, load_trace
from benchmarks.autoscaling_nodes import POLICIES, NodeConfig, simulate_nodes
from rayfin.forecast import ForecastParams, flush, init, point, update
from rayfin.forecast.choice import KINDS

DAY_MIN = 1440


@dataclass
class SimConfig:
    dt: float = 10.0
    service_s: float = 2.0
    concurrency: int = 5
    target_ongoing: float = 2.0
    cold_start_s: float = 60.0
    slo_s: float = 0.5
    min_replicas: int = 1
    max_replicas: int = 100
    look_back_s: float = 30.0
    seed: int = 0


@dataclass
class SimResult:
    name: str
    replicas: np.ndarray            # provisioned (ready + starting) per step
    ready: np.ndarray
    forecast_load: np.ndarray       # the policy's forecast (ongoing requests), NaN if none
    metrics: dict[str, float] = field(default_factory=dict)
    p_viol: np.ndarray | None = None   # per step: share of that step's requests over the SLO
    calibration: np.ndarray | None = None   # per step: cumulative (bins scored, forecast misses)


class _SimClock:
    """Stands in for the `time` module inside Ray's autoscaling_policy during a replay."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now


@contextlib.contextmanager
def simulated_time(clock: _SimClock):
    import ray.serve.autoscaling_policy as ap

    real = ap.time
    ap.time = clock
    try:
        yield
    finally:
        ap.time = real


def ray_policy(autoscaling_config: Any) -> Callable:
    """The policy callable exactly as Serve's AutoscalingState builds it."""
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.autoscaling_policy import _apply_autoscaling_config

    return _apply_autoscaling_config(_resolve_policy_callable(autoscaling_config.policy))


FAMILIES = {
    # family: (knob name, values). Ray's knob is its only one that trades cost for latency;
    # rayfin's fixed quantile and its miss budget are each swept over the same kind of range.
    "ray_default": ("target_ongoing_requests", (0.75, 1.0, 1.5, 2.0, 3.0, 4.0)),
    "rayfin_quantile": ("quantile", (0.5, 0.7, 0.85, 0.95, 0.99)),
    "rayfin_calibrated": ("miss_budget", (0.3, 0.15, 0.1, 0.05, 0.02, 0.01)),
}
DEFAULT_BUDGET = 0.1        # the calibrated policy's configured budget (set before any run)


def make_config(family: str, knob: float, sim: SimConfig, lead_s: float, hold_s: float,
                forecaster: str = "rayfin") -> Any:
    """The AutoscalingConfig of one member of a family."""
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

    base = dict(min_replicas=sim.min_replicas, max_replicas=sim.max_replicas,
                target_ongoing_requests=sim.target_ongoing, look_back_period_s=sim.look_back_s)
    if family == "ray_default":
        return AutoscalingConfig(**{**base, "target_ongoing_requests": knob})
    kwargs: dict[str, Any] = {"desk": "bench", "lead_time_s": lead_s, "quantile": 0.9,
                              "downscale_hold_s": hold_s, "forecast": {"bin_s": 60.0}, "forecaster": forecaster}
    if family == "rayfin_quantile":
        kwargs["quantile"] = knob
    elif family == "rayfin_calibrated":
        kwargs["miss_budget"] = knob
    else:
        raise ValueError(f"unknown policy family {family!r}; families are {sorted(FAMILIES)}")
    return AutoscalingConfig(**base, upscale_delay_s=0.0, downscale_delay_s=0.0,
                             policy=AutoscalingPolicy(policy_function="serve_apps.autoscaling_policy:PredictivePolicy",
                                                      policy_kwargs=kwargs))


def policy_configs(sim: SimConfig, lead_s: float, quantile: float, hold_s: float) -> dict[str, Any]:
    """The two single points of earlier versions: Ray's defaults and rayfin at one quantile."""
    return {"ray_default": make_config("ray_default", sim.target_ongoing, sim, lead_s, hold_s),
            "rayfin": make_config("rayfin_quantile", quantile, sim, lead_s, hold_s)}


def simulate(name: str, autoscaling_config: Any, rate: np.ndarray, arrivals: np.ndarray,
             sim: SimConfig) -> SimResult:
    from ray.serve._private.common import DeploymentID
    from ray.serve.config import AutoscalingContext

    policy = ray_policy(autoscaling_config)
    clock = _SimClock()
    dep = DeploymentID(name="model", app_name="bench")
    steps = len(arrivals)
    per_replica = sim.concurrency / sim.service_s           # requests/s one replica serves
    window = max(1, int(round(sim.look_back_s / sim.dt)))
    ready_at: list[float] = [0.0] * sim.min_replicas         # ready time of each replica
    target = sim.min_replicas
    state: dict[str, Any] = {}
    backlog = 0.0
    hist: list[float] = []
    out_rep = np.zeros(steps)
    out_ready = np.zeros(steps)
    out_fc = np.full(steps, np.nan)
    out_cal = np.zeros((steps, 2))         # calibrated policy: cumulative (bins scored, misses)
    backlog0 = np.zeros(steps)
    with simulated_time(clock):
        for k in range(steps):
            t = k * sim.dt
            clock.now = t
            n_ready = sum(1 for r in ready_at if r <= t)
            cap = n_ready * per_replica
            a = arrivals[k]
            backlog0[k] = backlog
            backlog = max(0.0, backlog + a - cap * sim.dt)
            ongoing = min(a / sim.dt, cap) * sim.service_s + backlog
            hist.append(ongoing)
            load = float(np.mean(hist[-window:]))
            ctx = AutoscalingContext(
                deployment_id=dep, deployment_name=dep.name, app_name=dep.app_name,
                current_num_replicas=n_ready, target_num_replicas=target, running_replicas=[],
                total_num_requests=load, total_queued_requests=backlog, aggregated_metrics={},
                raw_metrics={}, capacity_adjusted_min_replicas=sim.min_replicas,
                capacity_adjusted_max_replicas=sim.max_replicas, policy_state=state,
                last_scale_up_time=None, last_scale_down_time=None, current_time=t,
                config=autoscaling_config)
            decision, state = policy(ctx)
            decision = max(sim.min_replicas, min(sim.max_replicas, int(math.ceil(decision))))
            if decision > target:
                ready_at += [t + sim.cold_start_s] * (decision - target)
            elif decision < target:
                ready_at.sort()              # drop replicas still starting first, then the newest
                del ready_at[decision:]
            target = decision
            out_rep[k] = len(ready_at)
            out_ready[k] = n_ready
            if "forecast_load" in state:
                out_fc[k] = state["forecast_load"]
            cs = state.get("conformal")
            if cs is not None:
                out_cal[k] = (cs.bins, cs.misses)
    res = SimResult(name, out_rep, out_ready, out_fc)
    res.p_viol = violation_prob(arrivals, out_ready, backlog0, sim)
    res.calibration = out_cal
    res.metrics = score(arrivals, out_ready, backlog0, sim)
    res.metrics["replica_hours"] = float(out_rep.sum() * sim.dt / 3600.0)
    res.metrics["mean_replicas"] = float(out_rep.mean())
    return res


def _erlang_c(n: np.ndarray, a: np.ndarray) -> np.ndarray:
    """P(wait > 0) in M/M/n with offered load a (Erlangs), vectorised over steps."""
    n = n.astype(int)
    b = np.ones_like(a)
    out = np.ones_like(a)
    for k in range(1, int(n.max(initial=0)) + 1):
        b = a * b / (k + a * b)
        sel = n == k
        out[sel] = b[sel]
    rho = np.divide(a, n, out=np.ones_like(a), where=n > 0)
    c = out / np.maximum(1e-12, 1.0 - rho * (1.0 - out))
    return np.where(rho < 1.0, np.clip(c, 0.0, 1.0), 1.0)


def score(arrivals: np.ndarray, ready: np.ndarray, backlog0: np.ndarray, sim: SimConfig) -> dict[str, float]:
    p = violation_prob(arrivals, ready, backlog0, sim)
    total = float(arrivals.sum())
    viol = float((p * arrivals).sum())
    return {"slo_violation_rate": viol / total if total else 0.0, "requests": total}


def violation_prob(arrivals: np.ndarray, ready: np.ndarray, backlog0: np.ndarray, sim: SimConfig) -> np.ndarray:
    """Per step, the share of its requests whose queueing delay exceeds the SLO."""
    dt, s = sim.dt, sim.service_s
    slots = ready * sim.concurrency
    cap = slots / s                                           # requests/s
    lam = arrivals / dt
    thr = sim.slo_s * cap                                     # backlog above which wait > slo
    slope = lam - cap
    # Fluid part: share of the step during which the backlog exceeds thr (linear in time).
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = np.where(slope != 0, (thr - backlog0) / slope, np.inf)
    over_at_start = backlog0 > thr
    frac_fluid = np.where(slope > 0, np.where(over_at_start, 1.0, np.clip(1 - cross / dt, 0, 1)),
                          np.where(over_at_start, np.clip(cross / dt, 0, 1), 0.0))
    frac_fluid = np.where(cap <= 0, 1.0, frac_fluid)
    # Backlog-free part: M/M/c waiting tail.
    a = lam * s
    pc = _erlang_c(slots, a)
    tail = pc * np.exp(-np.maximum(cap - lam, 0.0) * sim.slo_s)
    tail = np.where(cap <= 0, 1.0, tail)
    return frac_fluid + (1 - frac_fluid) * tail


def evaluate_forecast(series_min: np.ndarray, rate_scale: float, bin_min: int, warmup_days: float,
                      horizon_bins: int) -> dict[str, float]:
    """Rolling-origin MASE of the forecaster vs the seasonal-naive forecast (same targets)."""
    nb = len(series_min) // bin_min
    y = series_min[: nb * bin_min].reshape(nb, bin_min).mean(axis=1) * rate_scale / 60.0
    season = DAY_MIN // bin_min
    params = ForecastParams(bin_s=bin_min * 60.0, season_s=86_400.0, week_seasons=7,
                            kernel_bins=max(0, int(round(30 / bin_min))))
    fs = init(params)
    start = max(int(warmup_days * season), season)
    err_m, err_n = [], []
    for i in range(nb):
        fs = flush(update(fs, i * params.bin_s, float(y[i])))   # origin i: bins 0..i learnt
        j = i + horizon_bins
        if i >= start and j < nb:
            fc = point(fs, j * params.bin_s)
            err_m.append(abs(y[j] - fc))
            err_n.append(abs(y[j] - y[j - season]))
    mae_m, mae_n = float(np.mean(err_m)), float(np.mean(err_n))
    return {"mase": mae_m / mae_n if mae_n else float("nan"), "mase_seasonal_naive": 1.0,
            "mae": mae_m, "mae_seasonal_naive": mae_n, "bin_min": bin_min,
            "horizon_bins": horizon_bins, "warmup_days": warmup_days, "points": len(err_m)}


def plot(path: Path, rate: np.ndarray, results: dict[str, SimResult], sim: SimConfig, days: float = 3.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = len(next(iter(results.values())).replicas)
    span = min(steps, int(days * 86_400 / sim.dt))
    k0 = steps - span
    hours = (np.arange(k0, steps) * sim.dt) / 3600.0
    per_step_rate = np.repeat(rate, int(round(60 / sim.dt)))[:steps]
    need = per_step_rate * sim.service_s / sim.target_ongoing        # replicas the actual load needs
    fig, ax = plt.subplots(figsize=(13, 5))
    ax.plot(hours, need[k0:], color="0.6", lw=0.6, label="actual load (replicas needed at target)")
    rf = results.get("rayfin")
    if rf is not None:
        ax.plot(hours, rf.forecast_load[k0:] / sim.target_ongoing, color="tab:orange", lw=0.9,
                label="rayfin forecast (P90 over lead time, replicas)")
    colors = {"ray_default": "tab:blue", "rayfin": "tab:green"}
    for name, res in results.items():
        ax.step(hours, res.replicas[k0:], where="post", color=colors.get(name), lw=1.1,
                label=f"{name} provisioned replicas")
    ax.set_xlabel("hour of trace")
    ax.set_ylabel("replicas")
    ax.set_title(f"forecast vs actual vs provisioned (last {days:g} days)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_member(job: tuple) -> tuple[str, float, SimResult]:
    """One family member over the whole trace (a process-pool task: arguments are plain values)."""
    family, knob, sim, lead, hold, rate, arrivals, forecaster = job
    cfg = make_config(family, knob, sim, lead, hold, forecaster)
    res = simulate(f"{family}:{knob:g}", cfg, rate, arrivals, sim)
    return family, knob, res


def run_frontiers(sim: SimConfig, lead: float, hold: float, rate: np.ndarray, arrivals: np.ndarray,
                  workers: int, forecaster: str = "rayfin") -> dict[tuple[str, float], SimResult]:
    jobs = [(f, k, sim, lead, hold, rate, arrivals, forecaster) for f, (_, knobs) in FAMILIES.items() for k in knobs]
    if workers <= 1:
        done = [_run_member(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            done = list(ex.map(_run_member, jobs))
    return {(f, k): r for f, k, r in done}


def frontier_report(runs: dict[tuple[str, float], SimResult], arrivals: np.ndarray, sim: SimConfig,
                    fold_days: list[int]) -> tuple[dict, dict, dict]:
    """Pooled and per-fold frontiers and the equal-cost ratios (see benchmarks.autoscaling_frontier)."""
    def points(days) -> dict[str, list]:
        out: dict[str, list] = {}
        for (fam, knob), r in runs.items():
            rh, slo = fr.day_metrics(r.replicas, r.p_viol, arrivals, sim.dt, days)
            out.setdefault(fam, []).append(fr.Point(fam, knob, rh, slo))
        return out

    pooled = points(fold_days)
    folds = {d: points([d]) for d in fold_days}
    report: dict[str, Any] = {"fold_days": fold_days, "families": {f: k for f, (k, _) in FAMILIES.items()},
                              "points": {f: [p.as_dict() for p in sorted(v, key=lambda p: p.knob)]
                                         for f, v in pooled.items()}}
    for fam in ("rayfin_calibrated", "rayfin_quantile"):
        pooled_ratio = fr.ratio_at_equal_cost(pooled[fam], pooled["ray_default"])
        per_fold = {d: fr.ratio_at_equal_cost(folds[d][fam], folds[d]["ray_default"]) for d in fold_days}
        default_knob = DEFAULT_BUDGET if fam == "rayfin_calibrated" else 0.85
        at_default = [next((x["ratio"] for x in per_fold[d]["per_point"] if x["knob"] == default_knob), None)
                      for d in fold_days]
        report[fam] = {
            "slo_ratio_at_equal_cost_pooled": pooled_ratio,
            "slo_ratio_at_equal_cost_over_folds": fr.spread([per_fold[d]["geomean"] for d in fold_days]),
            "per_fold": {str(d): per_fold[d]["geomean"] for d in fold_days},
            f"at_{FAMILIES[fam][0]}_{default_knob:g}_over_folds": fr.spread(at_default),
        }
    cal = report["rayfin_calibrated"]
    report["slo_ratio_at_equal_cost"] = cal["slo_ratio_at_equal_cost_pooled"]["geomean"]
    report["slo_ratio_at_equal_cost_over_folds"] = cal["slo_ratio_at_equal_cost_over_folds"]
    # The calibrated policy's realised forecast-miss share against its budget, on the scored days.
    report["calibration"] = {
        f"{k:g}": {"budget": k, **{m: round(v, 6) for m, v in zip(
            ("replica_hours", "slo_violation_rate"),
            fr.day_metrics(r.replicas, r.p_viol, arrivals, sim.dt, fold_days))},
            "forecast_miss_share": r.metrics.get("forecast_miss_share")}
        for (f, k), r in sorted(runs.items()) if f == "rayfin_calibrated"}
    return report, pooled, folds


def node_report(res: SimResult, sim: SimConfig, ncfg: Any, fold_days: list[int]) -> dict:
    fc = res.forecast_load / sim.target_ongoing
    runs = {p: simulate_nodes(p, res.replicas, fc, sim.dt, ncfg, days=fold_days) for p in POLICIES}
    out: dict[str, Any] = {"replica_series": res.name, "config": ncfg.__dict__,
                           "policies": {p: r.as_dict() for p, r in runs.items()}}
    rd = runs["rayfin_drain"]
    for base in ("serve_spread", "serve_pack"):
        b = runs[base]
        out[f"vs_{base}"] = {
            "node_hours_released": round(b.node_hours - rd.node_hours, 3),
            "node_hours_ratio": round(rd.node_hours / b.node_hours, 4) if b.node_hours else None,
            "energy_saved_kwh": round(b.energy_kwh - rd.energy_kwh, 3),
            "energy_ratio": round(rd.energy_kwh / b.energy_kwh, 4) if b.energy_kwh else None,
            "pending_replica_hours_delta": round((rd.pending_replica_s - b.pending_replica_s) / 3600, 4),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--column", default="req_total")
    ap.add_argument("--rate-scale", type=float, default=60.0,
                    help="requests/s = count per minute * rate_scale / 60 (default 60: count becomes req/s)")
    ap.add_argument("--plot", default=None, help="PNG path of the timeline (default: OUT with .png)")
    ap.add_argument("--days", type=float, default=None, help="replay only the first DAYS days")
    ap.add_argument("--dt", type=float, default=10.0)
    ap.add_argument("--service-s", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=5)
    ap.add_argument("--target-ongoing", type=float, default=2.0)
    ap.add_argument("--cold-start-s", type=float, default=60.0)
    ap.add_argument("--slo-s", type=float, default=0.5)
    ap.add_argument("--max-replicas", type=int, default=100)
    ap.add_argument("--lead-s", type=float, default=None, help="forecast lead (default: cold start + 60 s)")
    ap.add_argument("--hold-s", type=float, default=600.0,
                    help="rayfin downscale hold (600: chosen over 180 on days 3-5, before the first fold)")
    ap.add_argument("--first-fold-day", type=int, default=6, help="folds: each whole day from this one on")
    ap.add_argument("--forecast-bins", default="1,5,15,60")
    ap.add_argument("--no-library", action="store_true", help="skip the per-fold statsforecast fits (slow)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--gpus-per-node", type=int, default=2)
    ap.add_argument("--node-start-s", type=float, default=180.0)
    ap.add_argument("--idle-timeout-s", type=float, default=300.0)
    ap.add_argument("--gpu-idle-w", type=float, default=70.0)
    ap.add_argument("--gpu-busy-w", type=float, default=400.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--forecaster", default="autoets", choices=KINDS,
                    help="the rayfin policies' forecaster (serve_apps.autoscaling_policy `forecaster`)")
    args = ap.parse_args(argv)
    t_start = time.time()
    counts = load_trace(args.trace, args.column)
    if args.days:
        counts = counts[: int(args.days * DAY_MIN)]
    sim = SimConfig(dt=args.dt, service_s=args.service_s, concurrency=args.concurrency,
                    target_ongoing=args.target_ongoing, cold_start_s=args.cold_start_s, slo_s=args.slo_s,
                    max_replicas=args.max_replicas, seed=args.seed)
    rate = counts * args.rate_scale / 60.0
    per_min = int(round(60 / sim.dt))
    rng = np.random.default_rng(args.seed)
    arrivals = rng.poisson(np.repeat(rate, per_min) * sim.dt).astype(float)
    lead = args.lead_s if args.lead_s is not None else sim.cold_start_s + 60.0
    n_days = len(counts) // DAY_MIN
    fold_days = list(range(min(args.first_fold_day, max(n_days - 1, 0)), n_days))
    timings: dict[str, float] = {}
    t0 = time.time()
    runs = run_frontiers(sim, lead, args.hold_s, rate, arrivals, args.workers, args.forecaster)
    timings["frontier_runs"] = round(time.time() - t0, 2)
    per_day = int(round(86_400 / sim.dt))
    for (fam, _knob), r in runs.items():
        if fam == "rayfin_calibrated" and fold_days:
            c0, c1 = r.calibration[fold_days[0] * per_day - 1], r.calibration[-1]
            r.metrics["forecast_miss_share"] = float((c1[1] - c0[1]) / max(c1[0] - c0[0], 1))
        r.metrics = {**r.metrics, **dict(zip(("replica_hours_scored", "slo_violation_rate_scored"),
                                             fr.day_metrics(r.replicas, r.p_viol, arrivals, sim.dt, fold_days)))}
    frontier, pooled, folds = frontier_report(runs, arrivals, sim, fold_days)
    # The single points of earlier versions, kept for continuity: Ray at its defaults and
    # rayfin's calibrated policy at its configured budget, over the whole replay.
    results = {"ray_default": runs[("ray_default", sim.target_ongoing)],
               "rayfin": runs[("rayfin_calibrated", DEFAULT_BUDGET)]}
    t0 = time.time()
    forecast: dict[str, Any] = {"by_bin": {}}
    for b in (int(x) for x in args.forecast_bins.split(",")):
        h = max(1, math.ceil(lead / (b * 60)))
        forecast["by_bin"][str(b)] = compare(counts, args.rate_scale, b, h, args.first_fold_day,
                                             with_library=not args.no_library)
    # by_bin_min: the MASE of the forecaster rayfin uses at each bin size, chosen per fold on the
    # days before it (the `selected` column), so no day is scored by a choice made on it.
    forecast["by_bin_min"] = {b: v["mase_pooled"]["selected"] for b, v in forecast["by_bin"].items()}
    forecast["by_bin_min_over_folds"] = {b: v["mase_over_folds"]["selected"] for b, v in forecast["by_bin"].items()}
    forecast["rayfin_model_by_bin_min"] = {b: v["mase_pooled"]["rayfin"] for b, v in forecast["by_bin"].items()}
    forecast["mase"] = forecast["by_bin_min"].get("15")
    timings["forecast_eval"] = round(time.time() - t0, 2)
    t0 = time.time()
    ncfg = NodeConfig(gpus_per_node=args.gpus_per_node, node_start_s=args.node_start_s,
                      idle_timeout_s=args.idle_timeout_s, idle_w=args.gpu_idle_w, busy_w=args.gpu_busy_w)
    nodes = node_report(results["rayfin"], sim, ncfg, fold_days)
    timings["nodes"] = round(time.time() - t0, 2)
    rd, rf = results["ray_default"].metrics, results["rayfin"].metrics
    targets = {
        "slo_ratio_at_equal_cost": frontier["slo_ratio_at_equal_cost"],
        "slo_ratio": (rf["slo_violation_rate_scored"] / rd["slo_violation_rate_scored"]
                      if rd["slo_violation_rate_scored"] else None),
        "replica_hours_ratio": (rf["replica_hours_scored"] / rd["replica_hours_scored"]
                                if rd["replica_hours_scored"] else None),
        "mase_below_1_at_every_bin": all(v < 1.0 for v in forecast["by_bin_min"].values()),
    }
    targets["met"] = bool(targets["slo_ratio_at_equal_cost"] is not None
                          and targets["slo_ratio_at_equal_cost"] <= 0.5 and targets["mase_below_1_at_every_bin"])
    out = {
        "policies": {n: {k: round(v, 6) for k, v in r.metrics.items()} for n, r in results.items()},
        "frontier": frontier,
        "forecast": forecast,
        "nodes": nodes,
        "targets": targets,
        "setup": {"trace": args.trace, "column": args.column, "rate_scale": args.rate_scale,
                  "minutes": len(counts), "forecaster": args.forecaster, "lead_s": lead, "hold_s": args.hold_s, "default_budget": DEFAULT_BUDGET,
                  "fold_days": fold_days, **sim.__dict__},
        "timings_s": {**timings, "total": round(time.time() - t_start, 2)},
    }
    plot_path = Path(args.plot) if args.plot else Path(args.out).with_suffix(".png")
    plot(plot_path, rate, results, sim)
    front_path = plot_path.with_name(plot_path.stem + "_frontier.png")
    fr.plot(front_path, pooled, folds, f"cost vs SLO misses, days {fold_days[0]}-{fold_days[-1]} (pooled)")
    out["plot"], out["frontier_plot"] = str(plot_path), str(front_path)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({"frontier": {k: frontier[k] for k in ("slo_ratio_at_equal_cost",
                                                           "slo_ratio_at_equal_cost_over_folds")},
                      "forecast_by_bin_min": forecast["by_bin_min"], "targets": targets,
                      "nodes": {k: v for k, v in nodes.items() if k.startswith("vs_")},
                      "timings_s": out["timings_s"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
