"""Which part of the rayfin policy moves a trace window's bounded slowdown: rayfin with one part
at a time switched back to what `kueue_tas_fs` does, on one window of the trace.

    python -m benchmarks.scheduling_ablation --window 3 --load 1.1 [--trace PATH]

Variants: `kueue_tas_fs`; `rayfin`; rayfin in submission order (no duration-aware order);
rayfin with the newest victims first (no checkpoint-aware victims); rayfin with no aging; rayfin
given the true durations as its predictions (what a perfect predictor would add); rayfin with the
head-of-line reservation (benchmarks.scheduling.RESERVE). Prints mean
and p99 bounded slowdown, mean wait, preemptions and mean bounded slowdown by job size.
A diagnostic, not a tuning loop: windows 1 to 3 are the scored ones (docs/scheduling.md).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from benchmarks.scheduling import RESERVE, policy_config
from placement.topology import Topology
from rayfin.config import ClusterConfig
from rayfin.policy.duration import DurationPredictor
from rayfin.policy.ordering import JobRank
from rayfin.sim import Simulator, desk_of, equal_desks, load_trace, summarize
from rayfin.sim.load import gpus_for_load, windows
from rayfin.sim.placement_model import PROFILE_DIR, Stretch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scheduling_ablation", description=__doc__.split("\n")[0])
    ap.add_argument("--trace", default=str(ROOT.parent / "shared" / "traces" / "gpu_jobs_dev.csv"))
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--load", type=float, default=1.1)
    ap.add_argument("--desks", type=int, default=6)
    args = ap.parse_args(argv)
    part = windows(load_trace(args.trace), args.windows)[args.window]
    gpus = gpus_for_load(part, args.load, 8)
    stretch = Stretch.build("calibrated", "nvlink-ib", 2.8, 0.3, str(PROFILE_DIR))
    topo = Topology.from_config(ClusterConfig.uniform(gpus=gpus, gpus_per_node=8, islands_per_node=2,
                                                      nodes_per_rack=16))
    mapping = {j.tenant: desk_of(j.tenant, args.desks) for j in part}
    rayfin = policy_config("rayfin", 30.0)
    variants = {
        "kueue_tas_fs": (policy_config("kueue_tas_fs", 30.0), None),
        "rayfin": (rayfin, "predicted"),
        "rayfin, submission order": (dataclasses.replace(rayfin, rank=JobRank.SUBMISSION), "predicted"),
        "rayfin, newest victims": (dataclasses.replace(rayfin, victims_by_lost_work=False), "predicted"),
        "rayfin, no aging": (dataclasses.replace(rayfin, aging_s=0.0), "predicted"),
        "rayfin, true durations": (rayfin, "oracle"),
        "rayfin + reservation": (dataclasses.replace(rayfin, reservation=True, **RESERVE), "predicted"),
    }
    print(f"window {args.window} ({len(part)} jobs), load {args.load}: {gpus} GPUs")
    for name, (cfg, hints) in variants.items():
        predictor = "oracle" if hints == "oracle" else (DurationPredictor() if hints else None)
        sim = Simulator(topo, equal_desks(gpus, args.desks), cfg, mapping, name=name, stretch=stretch,
                        predictor=predictor, checkpoint_interval_s=1800.0)
        s = summarize(sim.run(part))
        sizes = {k: round(v["mean_bounded_slowdown"], 1) for k, v in s["by_size"].items()}
        print(f"{name:26s} mean bsld {s['mean_bounded_slowdown']:7.1f}  p99 {s['p99_bounded_slowdown']:6.0f}  "
              f"wait {s['mean_wait_s']:6.0f} s  preemptions {s['preemptions']:4d}  mean bsld by size {sizes}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
