"""The scored windows only (1 to N-1; window 0 is for tuning), for a few policies side by side:
per-window metrics, mean bounded slowdown by job size, and each policy's paired ratios to
`kueue_tas_fs` with their 95% CI. The same runs as `benchmarks.scheduling` makes for its windows,
without the full-trace replay (a shorter run when the host is busy).

    python -m benchmarks.scheduling_scored --trace ../shared/traces/gpu_jobs_dev.csv --load 1.1 \\
        --policies kueue_tas_fs,rayfin,rayfin_resv --out scored.json [--windows 4] \
        [--reserve reserve_wait_factor=16,reserve_horizon=1]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.scheduling import BASELINE, RATIOS, RESERVE, ci95, ratio, run_one, sim_args
from rayfin.sim import load_trace
from rayfin.sim.load import gpus_for_load, windows
from rayfin.sim.placement_model import PROFILE_DIR, Stretch

METRICS = ("mean_bounded_slowdown", "p99_bounded_slowdown", "mean_wait_s", "mean_jct_s", "jain_fairness",
           "guarantee_violation_fraction", "lost_work_gpu_hours", "preemptions")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scheduling_scored", description=__doc__.split("\n")[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--load", type=float, default=1.1)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--desks", type=int, default=6)
    ap.add_argument("--policies", default="kueue_tas_fs,rayfin,rayfin_resv")
    ap.add_argument("--out", default="scored.json")
    ap.add_argument("--reserve", default="", help="rayfin_resv parameters, e.g. reserve_wait_factor=16,reserve_horizon=1")
    args = ap.parse_args(argv)
    for item in filter(None, args.reserve.split(",")):
        key, _, value = item.partition("=")
        if key not in RESERVE:
            ap.error(f"--reserve: unknown parameter {key!r}; allowed: {', '.join(RESERVE)}")
        RESERVE[key] = type(RESERVE[key])(float(value))
    names = [p for p in args.policies.split(",") if p]
    run_args = sim_args(args.desks)
    stretch = Stretch.build("calibrated", "nvlink-ib", 2.8, 0.3, str(PROFILE_DIR))
    wins = windows(load_trace(args.trace), args.windows)
    per: dict[str, list[dict]] = {n: [] for n in names}
    meta = []
    t0 = time.perf_counter()
    for k, part in enumerate(wins):
        if k == 0:
            continue   # the tuning window
        gpus = gpus_for_load(part, args.load, 8)
        meta.append({"window": k, "jobs": len(part), "gpus": gpus})
        for name in names:
            s, _ = run_one(part, gpus, run_args, name, stretch)
            row = {m: s.get(m) for m in METRICS}
            row["by_size"] = {size: v["mean_bounded_slowdown"] for size, v in s["by_size"].items()}
            per[name].append(row)
            sizes = {size: round(v, 1) for size, v in row["by_size"].items()}
            print(f"load {args.load} window {k} ({gpus} GPUs) {name:14s} bsld {row['mean_bounded_slowdown']:7.1f} "
                  f"p99 {row['p99_bounded_slowdown']:6.0f} wait {row['mean_wait_s']:6.0f} jct {row['mean_jct_s']:6.0f} "
                  f"jain {row['jain_fairness']:.2f} viol {row['guarantee_violation_fraction']} by size {sizes}",
                  flush=True)
    out: dict = {"load": args.load, "windows": meta, "policies": {}, "reservation": dict(RESERVE), "wall_s": 0.0}
    for name in names:
        entry: dict = {"windows": per[name], "ci95": {m: ci95([w[m] for w in per[name]]) for m in METRICS}}
        if name != BASELINE and BASELINE in per:
            entry["vs_" + BASELINE] = {m: {"per_window": [_r(ratio(a[m], b[m])) for a, b in zip(per[name], per[BASELINE])],
                                           "ci95": ci95([ratio(a[m], b[m]) for a, b in zip(per[name], per[BASELINE])])}
                                       for m in RATIOS}
            line = "; ".join(f"{m} {entry['vs_' + BASELINE][m]['ci95']['mean']:.2f}x "
                             f"(windows {entry['vs_' + BASELINE][m]['per_window']})" for m in RATIOS)
            print(f"load {args.load} {name} / {BASELINE}: {line}", flush=True)
        out["policies"][name] = entry
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _r(v):
    return None if v is None else round(v, 3)


if __name__ == "__main__":
    raise SystemExit(main())
