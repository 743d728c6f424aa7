"""Scheduling benchmark: replay a job trace under fifo / static / kueue / rayfin, side by side.

    python -m benchmarks.scheduling --trace ../shared/traces/gpu_jobs_dev.csv \\
        --gpus 1024 --gpus-per-node 8 --desks 6 --out result.json

Every policy is a preset of the same `rayfin.policy.SchedulerConfig` run by the same simulator
(rayfin.sim) with the same queue mechanics (greedy backfill, the same preemption grace) and the
same runtime model (placement.allreduce.stretch_factor). Prints a table, writes JSON to --out and
a PNG beside it (rayfin's GPUs per desk over time; JCT CDF per policy).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from placement.topology import Topology
from rayfin.config import ClusterConfig
from rayfin.policy.settings import Policy, SchedulerConfig
from rayfin.sim import equal_desks, load_trace, simulate, summarize

COLUMNS = [("mean_jct_s", "mean JCT s", "{:.0f}"), ("p99_jct_s", "p99 JCT s", "{:.0f}"),
           ("mean_wait_s", "mean wait s", "{:.0f}"), ("utilization", "util", "{:.3f}"),
           ("goodput_utilization", "goodput", "{:.3f}"),
           ("guarantee_violation_gpu_hours", "viol GPU-h", "{:.1f}"), ("total_gpu_hours", "GPU-h", "{:.0f}"),
           ("preemptions", "preempt", "{}"), ("single_island_fraction", "1-island", "{:.3f}"),
           ("decision_p99_ms", "p99 ms", "{:.2f}"), ("decision_cpu_p99_ms", "p99 cpu ms", "{:.2f}"),
           ("jobs_completed", "done", "{}")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scheduling", description=__doc__.split("\n")[0])
    ap.add_argument("--trace", required=True, help="CSV: job_id,tenant,submit_time_s,duration_s,num_gpus,...")
    ap.add_argument("--gpus", type=int, default=1024)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--islands-per-node", type=int, default=2, help="NVLink islands per node (default 2)")
    ap.add_argument("--nodes-per-rack", type=int, default=16)
    ap.add_argument("--desks", type=int, default=6, help="tenants map to this many desks, equal nominal shares")
    ap.add_argument("--replicate", type=int, default=1, help="submit every trace job this many times")
    ap.add_argument("--limit", type=int, default=None, help="only the first N jobs of the trace")
    ap.add_argument("--comm-fraction", type=float, default=0.3, help="share of a multi-GPU job's ideal "
                                                                      "runtime spent in all-reduce")
    ap.add_argument("--grace", type=float, default=30.0, help="preemption grace period, seconds")
    ap.add_argument("--policies", default="fifo,static,kueue,rayfin")
    ap.add_argument("--out", default="result.json")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)

    cluster = ClusterConfig.uniform(gpus=args.gpus, gpus_per_node=args.gpus_per_node,
                                    islands_per_node=args.islands_per_node, nodes_per_rack=args.nodes_per_rack)
    topo = Topology.from_config(cluster)
    jobs = load_trace(args.trace, replicate=args.replicate, limit=args.limit)
    desks = equal_desks(args.gpus, args.desks)
    results, raw = {}, {}
    for name in [p.strip() for p in args.policies.split(",") if p.strip()]:
        cfg = SchedulerConfig.preset(Policy(name), preemption_grace_s=args.grace)
        t0 = time.perf_counter()
        r = simulate(jobs, topo, desks, cfg, args.comm_fraction, record_desks=(name == "rayfin"), name=name)
        results[name] = summarize(r) | {"sim_wall_s": round(time.perf_counter() - t0, 1)}
        raw[name] = r
        print(f"  {name}: {results[name]['sim_wall_s']} s", file=sys.stderr, flush=True)
    out = Path(args.out)
    meta = {"trace": str(args.trace), "jobs": len(jobs), "gpus": args.gpus, "gpus_per_node": args.gpus_per_node,
            "islands_per_node": args.islands_per_node, "nodes_per_rack": args.nodes_per_rack, "desks": args.desks,
            "replicate": args.replicate, "comm_fraction": args.comm_fraction, "grace_s": args.grace,
            "bandwidth_gbps": cluster.bandwidth_gbps.model_dump()}
    out.write_text(json.dumps({"config": meta, "policies": results}, indent=2) + "\n")
    print(table(results))
    if not args.no_plot:
        plot(raw, desks, out.with_suffix(".png"))
    return 0


def table(results: dict) -> str:
    head = ["policy"] + [c[1] for c in COLUMNS]
    rows = [[name] + [("-" if m.get(k) is None else fmt.format(m[k])) for k, _, fmt in COLUMNS]
            for name, m in results.items()]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def plot(raw: dict, desks: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    r = raw.get("rayfin")
    if r is not None and r.desk_series:
        t = np.array([s[0] for s in r.desk_series]) / 3600.0
        u = np.array([s[1] for s in r.desk_series])
        grid = np.arange(0.0, min(t[-1], r.window_s / 3600.0 * 1.1) + 1e-9, 0.25)
        pos = np.searchsorted(t, grid, side="right") - 1
        pos[pos < 0] = 0
        ax1.stackplot(grid, u[pos].T, labels=list(r.desks), step="post")
        ax1.axhline(r.capacity, color="k", lw=0.8)
        for k, d in enumerate(r.desks):
            ax1.axhline(desks[d].nominal * (k + 1), color="grey", lw=0.4, ls=":")
        ax1.set(title="rayfin: GPUs held per desk (dotted: cumulative nominal)", xlabel="hours", ylabel="GPUs")
        ax1.legend(loc="upper right", fontsize=7)
    for name, res in raw.items():
        x = np.sort(np.asarray(res.jct_s))
        if x.size:
            ax2.plot(np.maximum(x, 1.0), np.arange(1, x.size + 1) / x.size, label=name)
    ax2.set(xscale="log", title="JCT CDF per policy", xlabel="job completion time, s", ylabel="fraction of jobs")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
