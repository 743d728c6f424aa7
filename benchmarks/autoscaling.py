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
import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rayfin.forecast import ForecastParams, flush, init, point, update

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


def load_trace(path: str, column: str) -> np.ndarray:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or column not in rows[0]:
        cols = list(rows[0]) if rows else []
        raise SystemExit(f"{path}: no column {column!r}; columns are {cols}")
    return np.array([float(r[column] or 0) for r in rows])


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


def policy_configs(sim: SimConfig, lead_s: float, quantile: float, hold_s: float) -> dict[str, Any]:
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

    base = dict(min_replicas=sim.min_replicas, max_replicas=sim.max_replicas,
                target_ongoing_requests=sim.target_ongoing, look_back_period_s=sim.look_back_s)
    rayfin = AutoscalingConfig(
        **base, upscale_delay_s=0.0, downscale_delay_s=0.0,
        policy=AutoscalingPolicy(
            policy_function="serve_apps.autoscaling_policy:PredictivePolicy",
            policy_kwargs={"desk": "bench", "lead_time_s": lead_s, "quantile": quantile,
                           "downscale_hold_s": hold_s, "forecast": {"bin_s": 60.0}}))
    return {"ray_default": AutoscalingConfig(**base), "rayfin": rayfin}


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
    res = SimResult(name, out_rep, out_ready, out_fc)
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
    p = frac_fluid + (1 - frac_fluid) * tail
    total = float(arrivals.sum())
    viol = float((p * arrivals).sum())
    return {"slo_violation_rate": viol / total if total else 0.0, "requests": total}


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--column", default="req_total")
    ap.add_argument("--rate-scale", type=float, default=60.0,
                    help="requests/s = count per minute * rate_scale / 60 (default 60: count becomes req/s)")
    ap.add_argument("--plot", default=None, help="PNG path (default: OUT with .png)")
    ap.add_argument("--days", type=float, default=None, help="replay only the first DAYS days")
    ap.add_argument("--dt", type=float, default=10.0)
    ap.add_argument("--service-s", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=5)
    ap.add_argument("--target-ongoing", type=float, default=2.0)
    ap.add_argument("--cold-start-s", type=float, default=60.0)
    ap.add_argument("--slo-s", type=float, default=0.5)
    ap.add_argument("--max-replicas", type=int, default=100)
    ap.add_argument("--lead-s", type=float, default=None, help="forecast lead (default: cold start + 60 s)")
    ap.add_argument("--quantile", type=float, default=0.85)
    ap.add_argument("--hold-s", type=float, default=180.0, help="rayfin downscale hold")
    ap.add_argument("--forecast-bin-min", type=int, default=15)
    ap.add_argument("--warmup-days", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
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
    results = {}
    timings = {}
    for name, cfg in policy_configs(sim, lead, args.quantile, args.hold_s).items():
        t0 = time.time()
        results[name] = simulate(name, cfg, rate, arrivals, sim)
        timings[name] = round(time.time() - t0, 2)
    t0 = time.time()
    horizon_bins = max(1, math.ceil(lead / (args.forecast_bin_min * 60)))
    forecast = evaluate_forecast(counts, args.rate_scale, args.forecast_bin_min, args.warmup_days, horizon_bins)
    forecast["by_bin_min"] = {
        str(b): round(evaluate_forecast(counts, args.rate_scale, b, args.warmup_days,
                                        max(1, math.ceil(lead / (b * 60))))["mase"], 4)
        for b in (5, 15, 60) if b != args.forecast_bin_min or True}
    timings["forecast_eval"] = round(time.time() - t0, 2)
    rd, rf = results["ray_default"].metrics, results["rayfin"].metrics
    targets = {
        "slo_ratio": rf["slo_violation_rate"] / rd["slo_violation_rate"] if rd["slo_violation_rate"] else None,
        "replica_hours_ratio": rf["replica_hours"] / rd["replica_hours"] if rd["replica_hours"] else None,
    }
    targets["met"] = bool(targets["slo_ratio"] is not None and targets["slo_ratio"] <= 0.5
                          and targets["replica_hours_ratio"] <= 1.05 and forecast["mase"] < 1.0)
    out = {
        "policies": {n: {k: round(v, 6) for k, v in r.metrics.items()} for n, r in results.items()},
        "forecast": forecast,
        "targets": targets,
        "setup": {"trace": args.trace, "column": args.column, "rate_scale": args.rate_scale,
                  "minutes": len(counts), "lead_s": lead, "quantile": args.quantile, "hold_s": args.hold_s,
                  **sim.__dict__},
        "timings_s": {**timings, "total": round(time.time() - t_start, 2)},
    }
    plot_path = Path(args.plot) if args.plot else Path(args.out).with_suffix(".png")
    plot(plot_path, rate, results, sim)
    out["plot"] = str(plot_path)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({"policies": out["policies"], "forecast_mase": forecast["mase"], "targets": targets,
                      "timings_s": out["timings_s"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
