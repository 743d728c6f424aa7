"""Choose the head-of-line reservation's parameters on ONE window (the tuning window, 0 by default):
rayfin with the reservation on over a grid of (wait factor, min wait, min GPUs), beside
`kueue_tas_fs` and rayfin without it, at each load.

    python -m benchmarks.scheduling_reservation_sweep --window 0 --loads 1.0,1.1 \\
        [--factors 1,4,16] [--after 0,3600] [--min-gpus 9,17] [--horizons 0,1] [--trace PATH]

Prints mean and p99 bounded slowdown, mean wait, mean JCT and mean bounded slowdown by job size,
one line per variant. Scored windows (1 to 3) must not be passed here: see docs/scheduling.md.
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

from benchmarks.scheduling import policy_config
from placement.topology import Topology
from rayfin.config import ClusterConfig
from rayfin.policy.duration import DurationPredictor
from rayfin.sim import Simulator, desk_of, equal_desks, load_trace, summarize
from rayfin.sim.load import gpus_for_load, windows
from rayfin.sim.placement_model import PROFILE_DIR, Stretch

ROOT = Path(__file__).resolve().parents[1]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scheduling_reservation_sweep",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--trace", default=str(ROOT.parent / "shared" / "traces" / "gpu_jobs_dev.csv"))
    ap.add_argument("--window", type=int, default=0)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--loads", default="1.0,1.1")
    ap.add_argument("--desks", type=int, default=6)
    ap.add_argument("--factors", default="1,4,16")
    ap.add_argument("--after", default="0,3600")
    ap.add_argument("--min-gpus", default="9")
    ap.add_argument("--horizons", default="0", help="reserve_horizon values (0: no horizon)")
    args = ap.parse_args(argv)
    part = windows(load_trace(args.trace), args.windows)[args.window]
    stretch = Stretch.build("calibrated", "nvlink-ib", 2.8, 0.3, str(PROFILE_DIR))
    mapping = {j.tenant: desk_of(j.tenant, args.desks) for j in part}
    rayfin = policy_config("rayfin", 30.0)
    grid = list(itertools.product(_floats(args.factors), _floats(args.after), [int(x) for x in _floats(args.min_gpus)],
                                  _floats(args.horizons)))
    for load in _floats(args.loads):
        gpus = gpus_for_load(part, load, 8)
        topo = Topology.from_config(ClusterConfig.uniform(gpus=gpus, gpus_per_node=8, islands_per_node=2,
                                                          nodes_per_rack=16))
        variants = [("kueue_tas_fs", policy_config("kueue_tas_fs", 30.0)), ("rayfin", rayfin)]
        variants += [(f"resv k={k:g} after={a:g} min={m} h={h:g}",
                      rayfin.copy(reservation=True, reserve_wait_factor=k, reserve_after_s=a, reserve_min_gpus=m,
                                  reserve_horizon=h))
                     for k, a, m, h in grid]
        for name, cfg in variants:
            t0 = time.perf_counter()
            predictor = DurationPredictor() if name != "kueue_tas_fs" else None
            sim = Simulator(topo, equal_desks(gpus, args.desks), cfg, mapping, name=name, stretch=stretch,
                            predictor=predictor, checkpoint_interval_s=1800.0)
            s = summarize(sim.run(part))
            sizes = {k: round(v["mean_bounded_slowdown"], 1) for k, v in s["by_size"].items()}
            print(f"w{args.window} load {load} {gpus} GPUs {name:28s} bsld {s['mean_bounded_slowdown']:7.1f} "
                  f"p99 {s['p99_bounded_slowdown']:6.0f} wait {s['mean_wait_s']:6.0f} jct {s['mean_jct_s']:6.0f} "
                  f"jain {s['jain_fairness']:.2f} by size {sizes} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
