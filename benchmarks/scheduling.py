"""Scheduling benchmark: replay a job trace under every policy, side by side, at a load that queues.

    python -m benchmarks.scheduling --trace ../shared/traces/gpu_jobs_dev.csv --load 1.0 --desks 6 \\
        --out result.json [--placement-model calibrated|none|linear] [--fabric nvlink-ib|pcie-ethernet]

Every policy is a preset of the same `rayfin.policy.SchedulerConfig` run by the same simulator
(rayfin.sim), with the same queue mechanics (greedy backfill, the same preemption grace, the same
checkpoint interval for lost work) and the same runtime model (rayfin.sim.placement_model).

`--load X` sizes the cluster in whole nodes so that the trace's in-window demand over capacity
is X (rayfin.sim.load); `--gpus` overrides it. The whole trace is replayed once (the headline
numbers), then cut into `--windows` consecutive windows of equal job counts, each sized to the
same load: window 0 is kept for choosing parameters and never scored; the others give the
95% confidence intervals (Student t over windows) of every metric and of rayfin's ratios to
`kueue_tas_fs` (paired per window). Decision latency is measured apart, on snapshots with a
fixed number of pending jobs (`--latency-depths`).

Writes JSON to --out and a PNG beside it (JCT CDF, bounded slowdown by job size, per-desk
slowdown), and prints a table.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from placement.topology import Topology
from rayfin import collector
from rayfin.config import ClusterConfig
from rayfin.policy.duration import DurationPredictor
from rayfin.policy.hints import JobHint
from rayfin.policy.model import ClusterSnapshot, CommProfile, DeskQuota, PendingJob, RunningJob
from rayfin.policy.scheduler import schedule
from rayfin.policy.settings import PlacementStrategy, Policy, SchedulerConfig
from rayfin.sim import Simulator, desk_of, equal_desks, load_trace, summarize
from rayfin.sim.elastic import ScalingCurves
from rayfin.sim.load import gpus_for_load, in_window_demand, windows
from rayfin.sim.metrics import SIZES, bounded_slowdown
from rayfin.sim.placement_model import PROFILE_DIR, Fabric, PlacementModel, Stretch

POLICIES = ("fifo", "static_demand", "kueue_tas_fs", "kueue_node", "tiresias", "sjf_oracle", "rayfin")
EXTRA = ("static", "kueue", "rayfin_resv", "rayfin_no_las")   # allowed in --policies, not run by default
# A restart after a preemption: new processes, the process group, the checkpoint reload. Fixed
# before any run with it (not tuned): a minute, the order of a checkpoint restart of a
# data-parallel job; docs/scheduling.md reports 0 and 300 s beside it.
RESTART_OVERHEAD_S = 60.0
RESERVE = {"reserve_wait_factor": 4.0, "reserve_after_s": 3600.0, "reserve_min_gpus": 9,   # rayfin_resv; CLI sets
           "reserve_horizon": 0.0}
BASELINE = "kueue_tas_fs"
CI_METRICS = ("mean_jct_s", "median_jct_s", "p95_jct_s", "mean_wait_s", "mean_bounded_slowdown",
              "p99_bounded_slowdown", "jain_fairness", "guarantee_violation_gpu_hours", "total_gpu_hours",
              "lost_work_gpu_hours", "preemptions", "decision_p99_ms")
RATIOS = ("mean_bounded_slowdown", "p99_bounded_slowdown", "mean_wait_s", "mean_jct_s", "jain_fairness")
COLUMNS = [("mean_jct_s", "mean JCT s", "{:.0f}"), ("p95_jct_s", "p95 JCT s", "{:.0f}"),
           ("mean_wait_s", "mean wait s", "{:.0f}"), ("mean_bounded_slowdown", "mean bsld", "{:.1f}"),
           ("p99_bounded_slowdown", "p99 bsld", "{:.0f}"), ("jain_fairness", "Jain", "{:.3f}"),
           ("guarantee_violation_gpu_hours", "viol GPU-h", "{:.1f}"), ("lost_work_gpu_hours", "lost GPU-h", "{:.0f}"),
           ("preemptions", "preempt", "{}"), ("decision_p99_ms", "p99 ms", "{:.2f}")]


def policy_config(name: str, grace: float) -> SchedulerConfig:
    """The benchmark's policies. Baselines that place get best fit (the strongest configuration of
    each peer), except `kueue_node` (pods, no TAS) and `fifo` is a bare cluster's FIFO.
    `rayfin_resv` is rayfin with the head-of-line reservation on (parameters: RESERVE)."""
    if name == "rayfin_resv":
        return SchedulerConfig.preset(Policy.RAYFIN, preemption_grace_s=grace, reservation=True, **RESERVE)
    if name == "rayfin_no_las":
        return SchedulerConfig.preset(Policy.RAYFIN, preemption_grace_s=grace, las_within_desk=False)
    if name == "static_demand":
        return SchedulerConfig.preset(Policy.STATIC, placement=PlacementStrategy.BEST_FIT, preemption_grace_s=grace)
    if name == "fifo":
        return SchedulerConfig.preset(Policy.FIFO, placement=PlacementStrategy.BEST_FIT, preemption_grace_s=grace)
    return SchedulerConfig.preset(Policy(name), preemption_grace_s=grace)


def demand_desks(jobs, capacity: int, mapping: dict[str, str], names) -> dict[str, DeskQuota]:
    """Static partitions sized to each desk's share of in-window demand (static_demand)."""
    span = (min(j.submit_s for j in jobs), max(j.submit_s for j in jobs))
    share = {d: in_window_demand([j for j in jobs if mapping[j.tenant] == d], span) for d in names}
    total = sum(share.values()) or 1.0
    return {d: DeskQuota(d, capacity * share[d] / total, 0.0, None) for d in names}


def sim_args(desks: int = 6) -> SimpleNamespace:
    """The arguments `run_one` reads, at this benchmark's defaults: for the benchmarks that replay
    windows through `run_one` without this command line (scheduling_compare, scheduling_scored)."""
    return SimpleNamespace(gpus_per_node=8, islands_per_node=2, nodes_per_rack=16, desks=desks, grace=30.0,
                           checkpoint_interval=1800.0, restart_overhead=RESTART_OVERHEAD_S)


def run_one(jobs, gpus: int, args, name: str, stretch: Stretch, record: bool = False, curves=None,
            share: float = 0.5):
    cluster = ClusterConfig.uniform(gpus=gpus, gpus_per_node=args.gpus_per_node,
                                    islands_per_node=args.islands_per_node, nodes_per_rack=args.nodes_per_rack)
    topo = Topology.from_config(cluster)
    mapping = {j.tenant: desk_of(j.tenant, args.desks) for j in jobs}
    desks = equal_desks(gpus, args.desks)
    if name == "static_demand":
        desks = demand_desks(jobs, gpus, mapping, list(desks))
    cfg = policy_config(name, args.grace)
    predictor = "oracle" if name == "sjf_oracle" else (DurationPredictor() if name.startswith("rayfin") else None)
    sim = Simulator(topo, desks, cfg, mapping, record_desks=record, name=name, stretch=stretch,
                    predictor=predictor, checkpoint_interval_s=args.checkpoint_interval, elastic=curves,
                    elastic_share=share, restart_overhead_s=args.restart_overhead)
    r = sim.run(jobs)
    s = summarize(r)
    if curves is not None:
        s["elastic_share"] = share
        s["resizes"] = sim.resizes
    s["guarantee_violation_fraction"] = (round(s["guarantee_violation_gpu_hours"] / s["total_gpu_hours"], 6)
                                         if s["total_gpu_hours"] else None)
    return s, r


def ci95(values) -> dict | None:
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return None
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": int(x.size)}
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}.get(x.size, 1.96)
    half = t * float(x.std(ddof=1)) / math.sqrt(x.size)
    return {"mean": round(mean, 4), "lo": round(mean - half, 4), "hi": round(mean + half, 4), "n": int(x.size)}


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


# ---- decision latency at fixed queue depths --------------------------------------------------
def decision_latency(jobs, gpus: int, args, names, depths) -> dict:
    """p99 wall and CPU time of one `schedule` call on a snapshot with `depth` pending jobs and a
    cluster kept full by running jobs (the worst case: nothing fits, every job is examined). The
    long-lived heap is frozen first, as the controller actor does after start-up (`gc.freeze()`
    in rayfin/controller/actor.py), and each call runs with collection paused, as the controller's
    decide step does (rayfin.collector), so a collection does not set the p99. One untimed call per
    policy and depth goes first: the first call in a process pays once for memory the allocator
    maps (about 3x a warm call here), which a controller that decides every cycle has long paid.
    200 timed calls at up to 1,000 pending (20 at 10,000), so the p99 is about the third-highest
    call rather than, as with 30, mostly the highest."""
    gc.collect()
    gc.freeze()
    try:
        return _decision_latency(jobs, gpus, args, names, depths)
    finally:
        gc.unfreeze()


def _decision_latency(jobs, gpus: int, args, names, depths) -> dict:
    cluster = ClusterConfig.uniform(gpus=gpus, gpus_per_node=args.gpus_per_node,
                                    islands_per_node=args.islands_per_node, nodes_per_rack=args.nodes_per_rack)
    topo = Topology.from_config(cluster)
    desks = equal_desks(gpus, args.desks)
    dnames = list(desks)
    running, k = [], 0
    for isl in topo.islands:   # every island full: half the desks' jobs, one job per island
        d = dnames[k % len(dnames)]
        running.append(RunningJob(f"r{k}", d, float(isl.gpus), ((isl.id, float(isl.gpus)),), started_at=float(k)))
        k += 1
    out = {}
    for depth in depths:
        pend, hints = [], {}
        for i in range(depth):
            j = jobs[i % len(jobs)]
            jid = f"p{i}"
            pend.append(PendingJob(jid, desk_of(j.tenant, args.desks), j.gpus, submitted_at=float(i),
                                   comm=CommProfile.ALLREDUCE if j.gpus > 1 else CommProfile.NONE))
            hints[jid] = JobHint(j.duration_s, 0.0)
        # Running jobs have run 20 h, for an hour at least since their start: past every LAS
        # threshold and rayfin's minimum run, so the preemptive policies (tiresias, rayfin's LAS
        # inside desks) find victims and plan: their worst case.
        rhints = {r.job_id: JobHint(3600.0, 72_000.0, 600.0) for r in running}
        snap = ClusterSnapshot(float(depth) + 3_610.0, topo, desks, tuple(running), tuple(pend),
                               hints={**hints, **rhints})
        reps = 200 if depth <= 1000 else 20
        per = {}
        for name in names:
            cfg = policy_config(name, args.grace)
            with collector.paused():
                schedule(snap, cfg)   # warm-up, untimed (see the docstring)
            wall, cpu = [], []
            for _ in range(reps):
                with collector.paused():   # as the controller's decide step runs
                    c0, t0 = time.thread_time(), time.perf_counter()
                    schedule(snap, cfg)
                    wall.append((time.perf_counter() - t0) * 1000)
                    cpu.append((time.thread_time() - c0) * 1000)
            per[name] = {"p99_ms": round(float(np.percentile(wall, 99)), 2),
                         "cpu_p99_ms": round(float(np.percentile(cpu, 99)), 2),
                         "median_ms": round(float(np.median(wall)), 2), "calls": reps}
        out[str(depth)] = per
    return out


# ---- main -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scheduling", description=__doc__.split("\n")[0])
    ap.add_argument("--trace", required=True, help="CSV: job_id,tenant,submit_time_s,duration_s,num_gpus,...")
    ap.add_argument("--load", type=float, default=1.0, help="in-window demand / capacity (sizes the cluster)")
    ap.add_argument("--gpus", type=int, default=None, help="cluster size; overrides --load")
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--islands-per-node", type=int, default=2, help="NVLink islands per node (default 2)")
    ap.add_argument("--nodes-per-rack", type=int, default=16)
    ap.add_argument("--desks", type=int, default=6, help="tenants map to this many desks, equal nominal shares")
    ap.add_argument("--replicate", type=int, default=1, help="submit every trace job this many times")
    ap.add_argument("--limit", type=int, default=None, help="only the first N jobs of the trace")
    ap.add_argument("--placement-model", default="calibrated", choices=[m.value for m in PlacementModel])
    ap.add_argument("--fabric", default="nvlink-ib", choices=[f.value for f in Fabric])
    ap.add_argument("--stretch-cap", type=float, default=2.8, help="calibrated: cap on a placement's slowdown")
    ap.add_argument("--comm-fraction", type=float, default=0.3, help="linear model only")
    ap.add_argument("--profiles", default=str(PROFILE_DIR), help="folder of the Pollux *_placements.csv files")
    ap.add_argument("--grace", type=float, default=30.0, help="preemption grace period, seconds")
    ap.add_argument("--checkpoint-interval", type=float, default=1800.0,
                    help="jobs checkpoint every this many seconds of running; a preemption loses the rest")
    ap.add_argument("--restart-overhead", type=float, default=RESTART_OVERHEAD_S,
                    help="seconds of no progress at each restart after a preemption, every policy alike")
    ap.add_argument("--windows", type=int, default=4, help="trace windows; window 0 is for tuning, not scored")
    ap.add_argument("--latency-depths", default="1000,10000")
    ap.add_argument("--elastic", action="store_true", help="also run rayfin with elastic gangs (policies_elastic)")
    ap.add_argument("--elastic-share", type=float, default=0.5, help="share of multi-GPU jobs that are elastic")
    ap.add_argument("--elastic-sweep", default="0.25,0.5,1.0", help="shares for the full-trace sweep")
    ap.add_argument("--policies", default=",".join(POLICIES), help=f"also: {', '.join(EXTRA)}")
    ap.add_argument("--reserve-wait-factor", type=float, default=RESERVE["reserve_wait_factor"],
                    help="rayfin_resv: reserve once a job waited this many times its predicted runtime")
    ap.add_argument("--reserve-after", type=float, default=RESERVE["reserve_after_s"],
                    help="rayfin_resv: ... and this many seconds")
    ap.add_argument("--reserve-min-gpus", type=int, default=RESERVE["reserve_min_gpus"],
                    help="rayfin_resv: only jobs of at least this many GPUs")
    ap.add_argument("--out", default="result.json")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)

    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    for n in names:
        if n not in POLICIES + EXTRA:
            ap.error(f"--policies: unknown policy {n!r}; allowed: {', '.join(POLICIES)}")
    RESERVE.update(reserve_wait_factor=args.reserve_wait_factor, reserve_after_s=args.reserve_after,
                   reserve_min_gpus=args.reserve_min_gpus)
    stretch = Stretch.build(args.placement_model, args.fabric, args.stretch_cap, args.comm_fraction, args.profiles)
    jobs = load_trace(args.trace, replicate=args.replicate, limit=args.limit)
    gpus = args.gpus or gpus_for_load(jobs, args.load, args.gpus_per_node)
    demand = in_window_demand(jobs)
    t_all = time.perf_counter()

    results, raw = {}, {}
    for name in names:
        t0 = time.perf_counter()
        s, r = run_one(jobs, gpus, args, name, stretch, record=(name == "rayfin"))
        results[name] = s | {"sim_wall_s": round(time.perf_counter() - t0, 1)}
        raw[name] = r
        print(f"  {name}: {results[name]['sim_wall_s']} s", file=sys.stderr, flush=True)

    wins = windows(jobs, args.windows) if args.windows > 1 else []
    per_window: dict[str, list[dict]] = {n: [] for n in names}
    win_meta = []
    for k, wj in enumerate(wins):
        g = args.gpus or gpus_for_load(wj, args.load, args.gpus_per_node)
        win_meta.append({"window": k, "jobs": len(wj), "gpus": g, "scored": k > 0,
                         "in_window_demand_gpus": round(in_window_demand(wj), 1)})
        for name in names:
            s, _ = run_one(wj, g, args, name, stretch)
            per_window[name].append(s)
        print(f"  window {k}: {g} GPUs", file=sys.stderr, flush=True)
    for name in names:
        scored = per_window[name][1:]
        results[name]["ci95"] = {m: ci95([s.get(m) for s in scored]) for m in CI_METRICS}
        results[name]["windows"] = [{m: s.get(m) for m in CI_METRICS} for s in per_window[name]]
        if BASELINE in results and name != BASELINE:
            base = results[BASELINE]
            results[name]["vs_" + BASELINE] = {
                m: {"full_trace": _round(ratio(results[name].get(m), base.get(m))),
                    "ci95": ci95([ratio(a.get(m), b.get(m)) for a, b in zip(scored, per_window[BASELINE][1:])])}
                for m in RATIOS}

    elastic = run_elastic(jobs, gpus, wins, per_window, results, args, stretch) if args.elastic else None

    depths = [int(x) for x in args.latency_depths.split(",") if x.strip()]
    latency = decision_latency(jobs, gpus, args, names, depths) if depths else {}
    for name in names:
        for depth, per in latency.items():
            results[name][f"decision_p99_ms_at_{depth}"] = per[name]["p99_ms"]

    out = Path(args.out)
    meta = {"trace": str(args.trace), "jobs": len(jobs), "gpus": gpus, "gpus_per_node": args.gpus_per_node,
            "islands_per_node": args.islands_per_node, "nodes_per_rack": args.nodes_per_rack, "desks": args.desks,
            "in_window_demand_gpus": round(demand, 1), "replicate": args.replicate, "grace_s": args.grace,
            "checkpoint_interval_s": args.checkpoint_interval, "stretch_cap": args.stretch_cap,
            "reservation": dict(RESERVE) if "rayfin_resv" in names else None,
            "calibrated_slowdowns": dict(stretch.slowdowns) if stretch.slowdowns else None,
            "windows": win_meta, "wall_s": round(time.perf_counter() - t_all, 1)}
    doc = {"policies": results, "load": args.load if args.gpus is None else round(demand / gpus, 3),
           "placement_model": args.placement_model, "fabric": args.fabric, "config": meta,
           "decision_latency": latency}
    if elastic is not None:
        doc["policies_elastic"], doc["elastic_share_sweep"] = elastic
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"trace {args.trace}: {len(jobs)} jobs, in-window demand {demand:.0f} GPUs, cluster {gpus} GPUs "
          f"(load {demand / gpus:.2f}), placement model {args.placement_model} / {args.fabric}")
    print(table(results))
    if elastic is not None:
        print(f"elastic gangs (share {args.elastic_share} of multi-GPU jobs; Pollux scaling curves):")
        print(table(elastic[0]))
        print("share sweep (full trace): " + ", ".join(
            f"{k}: mean JCT {v['mean_jct_s']:.0f} s ({v['mean_jct_vs_' + BASELINE]:.3f}x {BASELINE})"
            for k, v in elastic[1].items()))
    if not args.no_plot:
        plot(raw, results, out.with_suffix(".png"), f"load {demand / gpus:.2f}, {gpus} GPUs, {args.placement_model}")
    return 0


def run_elastic(jobs, gpus, wins, per_window, results, args, stretch):
    """rayfin with elastic gangs: the full trace and the scored windows at --elastic-share (with
    ratios to kueue_tas_fs, which has none), and a full-trace sweep over shares."""
    curves = ScalingCurves.load(args.profiles)
    s, _ = run_one(jobs, gpus, args, "rayfin", stretch, curves=curves, share=args.elastic_share)
    scored = []
    for k, wj in enumerate(wins):
        if k == 0:
            continue
        g = args.gpus or gpus_for_load(wj, args.load, args.gpus_per_node)
        scored.append(run_one(wj, g, args, "rayfin", stretch, curves=curves, share=args.elastic_share)[0])
    s["ci95"] = {m: ci95([w.get(m) for w in scored]) for m in CI_METRICS}
    if BASELINE in results:
        base = results[BASELINE]
        s["vs_" + BASELINE] = {m: {"full_trace": _round(ratio(s.get(m), base.get(m))),
                                   "ci95": ci95([ratio(a.get(m), b.get(m))
                                                 for a, b in zip(scored, per_window[BASELINE][1:])])}
                               for m in RATIOS}
    sweep = {}
    for share in [float(x) for x in args.elastic_sweep.split(",") if x.strip()]:
        r = s if share == args.elastic_share else run_one(jobs, gpus, args, "rayfin", stretch, curves=curves,
                                                           share=share)[0]
        sweep[str(share)] = {"mean_jct_s": r["mean_jct_s"], "mean_bounded_slowdown": r["mean_bounded_slowdown"],
                             "mean_wait_s": r["mean_wait_s"], "resizes": r["resizes"],
                             "mean_jct_vs_" + BASELINE: _round(ratio(r["mean_jct_s"],
                                                                     results.get(BASELINE, {}).get("mean_jct_s")))}
    print("  elastic done", file=sys.stderr, flush=True)
    return {"rayfin": s}, sweep


def _round(v, nd=4):
    return None if v is None else round(v, nd)


def _cell(m: dict, key: str, fmt: str) -> str:
    v = m.get(key)
    if v is None:
        return "-"
    text = fmt.format(v)
    ci = (m.get("ci95") or {}).get(key)
    if ci and ci.get("lo") is not None:
        text += f" [{fmt.format(ci['lo'])}, {fmt.format(ci['hi'])}]"
    return text


def table(results: dict) -> str:
    head = ["policy"] + [c[1] for c in COLUMNS]
    rows = [[name] + [_cell(m, k, fmt) for k, _, fmt in COLUMNS] for name, m in results.items()]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    note = "full trace; [95% CI over scored windows]"
    return "\n".join([note, line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def plot(raw: dict, results: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 5))
    for name, res in raw.items():
        x = np.sort(np.asarray(res.jct_s))
        if x.size:
            ax1.plot(np.maximum(x, 1.0), np.arange(1, x.size + 1) / x.size, label=name)
    ax1.set(xscale="log", title=f"JCT CDF ({title})", xlabel="job completion time, s", ylabel="fraction of jobs")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    names = list(raw)
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        r = raw[name]
        b = bounded_slowdown(r.jct_s, r.duration_s)
        g = np.asarray(r.gpus)
        vals = [float(b[(g >= lo) & (g <= hi)].mean()) if ((g >= lo) & (g <= hi)).any() else 0.0
                for _, lo, hi in SIZES]
        ax2.bar(np.arange(len(SIZES)) + k * width, vals, width, label=name)
    ax2.set_xticks(np.arange(len(SIZES)) + 0.4 - width / 2, [f"{s[0]} GPUs" for s in SIZES])
    ax2.set(yscale="log", title="mean bounded slowdown by job size", ylabel="JCT / max(duration, 10 s)")
    ax2.legend(fontsize=8)
    desks = sorted({d for n in names for d in results[n].get("per_desk_bounded_slowdown", {})})
    for k, name in enumerate(names):
        per = results[name].get("per_desk_bounded_slowdown", {})
        ax3.bar(np.arange(len(desks)) + k * width, [per.get(d) or 0.0 for d in desks], width,
                label=f"{name} (Jain {results[name].get('jain_fairness')})")
    ax3.set_xticks(np.arange(len(desks)) + 0.4 - width / 2, desks)
    ax3.set(yscale="log", title="per-desk mean bounded slowdown", ylabel="bounded slowdown")
    ax3.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
