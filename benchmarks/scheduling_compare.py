"""Side by side, in one process: this tree's `rayfin.policy.schedule` against the same package at
another commit (default `main`), on the same snapshots.

    python -m benchmarks.scheduling_compare [--ref main] [--depths 1000,10000] [--policies rayfin,...]
        [--reserve-after S --reserve-wait-factor K]   (rayfin_resv: compared with the reference's rayfin)
        [--replay-windows 0,1,2,3 --limit 500 --load 1.1] [--gc on|frozen]

1. Latency: the fixed-depth snapshot of `benchmarks.scheduling.decision_latency` (every island full,
   N pending jobs with hints), `schedule` called alternately with the old and the new code so that
   load on the host hits both alike; p50 and p99 of CPU (thread) time and of wall time, and
   whether the two decisions are identical (every field of every decision).
2. Replay (`--replay-windows`): each dev-trace window (the first `--limit` jobs) is replayed by the
   simulator under each policy; at every `schedule` call the old code decides the same snapshot
   and the run stops at the first decision that differs.

The old package is `git show REF:rayfin/policy/*.py`, written to a temporary folder as package
`policy_at_ref` (imports rewritten), so nothing is installed. `--gc frozen` calls `gc.freeze()`
after the snapshots are built: the collector then skips the long-lived heap (the trace, the
snapshot), as a long-running controller that freezes after start-up would; `on` leaves it as is.
Each timed call runs with collection paused (rayfin.collector), as the controller's decide step does.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks.scheduling import RESERVE, policy_config, run_one, sim_args
from placement.topology import Topology
from rayfin import collector
from rayfin.config import ClusterConfig
from rayfin.policy.hints import JobHint
from rayfin.policy.model import ClusterSnapshot, CommProfile, PendingJob, RunningJob
from rayfin.policy.scheduler import schedule
from rayfin.sim import desk_of, equal_desks, load_trace
from rayfin.sim.load import gpus_for_load, windows
from rayfin.sim.placement_model import PROFILE_DIR, Stretch

ROOT = Path(__file__).resolve().parents[1]


def old_policy(ref: str, into: Path) -> ModuleType:
    """rayfin/policy at `ref` as the package `policy_at_ref` under `into`."""
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{ref}:rayfin/policy"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    pkg = into / "policy_at_ref"
    pkg.mkdir()
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(["git", "show", f"{ref}:rayfin/policy/{name}"], cwd=ROOT, check=True,
                                  capture_output=True, text=True).stdout
            (pkg / name).write_text(text.replace("rayfin.policy", "policy_at_ref"))
    sys.path.insert(0, str(into))
    importlib.import_module("policy_at_ref.scheduler")
    return importlib.import_module("policy_at_ref")


def old_config(mod: ModuleType, name: str, grace: float) -> Any:
    s = importlib.import_module(mod.__name__ + ".settings")
    if name == "rayfin_resv":   # the reference has no reservation: compare with its rayfin
        name = "rayfin"
    if name == "static_demand":
        return s.SchedulerConfig.preset(s.Policy.STATIC, placement=s.PlacementStrategy.BEST_FIT, preemption_grace_s=grace)
    if name == "fifo":
        return s.SchedulerConfig.preset(s.Policy.FIFO, placement=s.PlacementStrategy.BEST_FIT, preemption_grace_s=grace)
    return s.SchedulerConfig.preset(s.Policy(name), preemption_grace_s=grace)


def canon(cd: Any) -> list[tuple[Any, ...]]:
    return [(group, d.job_id, d.desk, d.verdict.value, d.reasons, d.placement, d.borrowed, d.deadline, d.beneficiary,
             d.victims, d.code) for group in ("admits", "preempts", "waits", "refusals") for d in getattr(cd, group)]


def latency_snapshot(jobs, depth: int, gpus: int = 568, ndesks: int = 6) -> ClusterSnapshot:
    """As benchmarks.scheduling.decision_latency builds it."""
    topo = Topology.from_config(ClusterConfig.uniform(gpus=gpus, gpus_per_node=8, islands_per_node=2,
                                                      nodes_per_rack=16))
    desks = equal_desks(gpus, ndesks)
    names = list(desks)
    running = [RunningJob(f"r{k}", names[k % len(names)], float(isl.gpus), ((isl.id, float(isl.gpus)),),
                          started_at=float(k)) for k, isl in enumerate(topo.islands)]
    pend, hints = [], {}
    for i in range(depth):
        j = jobs[i % len(jobs)]
        pend.append(PendingJob(f"p{i}", desk_of(j.tenant, ndesks), j.gpus, submitted_at=float(i),
                               comm=CommProfile.ALLREDUCE if j.gpus > 1 else CommProfile.NONE))
        hints[f"p{i}"] = JobHint(j.duration_s, 0.0)
    rhints = {r.job_id: JobHint(3600.0, 72_000.0, 600.0) for r in running}
    return ClusterSnapshot(float(depth) + 3_610.0, topo, desks, tuple(running), tuple(pend),
                           hints={**hints, **rhints})


def stats(xs: list[float]) -> str:
    return f"p50 {np.median(xs):6.2f} p99 {np.percentile(xs, 99):6.2f}"


def latency(old: ModuleType, jobs, depths: list[int], names: list[str], reps: int, frozen: bool) -> None:
    old_schedule = importlib.import_module(old.__name__ + ".scheduler").schedule
    snaps = {d: latency_snapshot(jobs, d) for d in depths}
    if frozen:
        gc.collect()
        gc.freeze()
    for depth in depths:
        snap = snaps[depth]
        n = reps or (60 if depth <= 1000 else 20)
        for name in names:
            new_cfg, old_cfg = policy_config(name, 30.0), old_config(old, name, 30.0)
            same = canon(schedule(snap, new_cfg)) == canon(old_schedule(snap, old_cfg))
            got: dict[str, tuple[list[float], list[float]]] = {"old": ([], []), "new": ([], [])}
            for _ in range(n):
                for tag, fn, cfg in (("old", old_schedule, old_cfg), ("new", schedule, new_cfg)):
                    with collector.paused():
                        c0, t0 = time.thread_time(), time.perf_counter()
                        fn(snap, cfg)
                        got[tag][1].append((time.perf_counter() - t0) * 1000)
                        got[tag][0].append((time.thread_time() - c0) * 1000)
            print(f"{depth:>6} pending  {name:14s} identical={same}  calls={n}  ms, cpu / wall:  "
                  + "  ".join(f"{tag}: {stats(got[tag][0])} / {stats(got[tag][1])}" for tag in ("old", "new")),
                  flush=True)


def replay(old: ModuleType, jobs, wins: list[int], limit: int, load: float, names: list[str]) -> None:
    import rayfin.sim.engine as engine
    old_schedule = importlib.import_module(old.__name__ + ".scheduler").schedule
    new_schedule = engine.schedule
    now: dict[str, Any] = {}
    count = {"calls": 0, "decisions": 0}

    def both(snap, cfg):
        got = new_schedule(snap, cfg)
        a, b = canon(got), canon(old_schedule(snap, now["cfg"]))
        if a != b:
            first = next((x, y) for x, y in zip(a, b) if x != y) if len(a) == len(b) else (len(a), len(b))
            raise SystemExit(f"decisions differ: {now['name']} at t={snap.now}: {first}")
        count["calls"] += 1
        count["decisions"] += len(a)
        return got
    engine.schedule = both
    args = sim_args()
    stretch = Stretch.build("calibrated", "nvlink-ib", 2.8, 0.3, str(PROFILE_DIR))
    parts = windows(jobs, 4)
    try:
        for w in wins:
            part = parts[w][:limit] if limit else parts[w]
            gpus = gpus_for_load(part, load, 8)
            for name in names:
                now.update(name=name, cfg=old_config(old, name, 30.0))
                s, _ = run_one(part, gpus, args, name, stretch)
                print(f"window {w} ({len(part)} jobs, {gpus} GPUs, load {load}) {name}: identical "
                      f"(mean bsld {s['mean_bounded_slowdown']}, preemptions {s['preemptions']})", flush=True)
    finally:
        engine.schedule = new_schedule
    print(f"{count['calls']} schedule calls, {count['decisions']} decisions, all identical")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scheduling_compare", description=__doc__.split("\n")[0])
    ap.add_argument("--ref", default="main")
    ap.add_argument("--trace", default=str(ROOT.parent / "shared" / "traces" / "gpu_jobs_dev.csv"))
    ap.add_argument("--depths", default="1000,10000")
    ap.add_argument("--policies", default="rayfin,kueue_tas_fs")
    ap.add_argument("--reps", type=int, default=0, help="calls per policy and depth (0: 60 at 1,000, 20 above)")
    ap.add_argument("--gc", choices=("on", "frozen"), default="on")
    ap.add_argument("--replay-windows", default="", help="e.g. 0,1,2,3: check every decision of these windows")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--load", type=float, default=1.1)
    ap.add_argument("--reserve-after", type=float, default=None, help="rayfin_resv: reserve_after_s")
    ap.add_argument("--reserve-wait-factor", type=float, default=None, help="rayfin_resv: reserve_wait_factor")
    args = ap.parse_args(argv)
    if args.reserve_after is not None:
        RESERVE["reserve_after_s"] = args.reserve_after
    if args.reserve_wait_factor is not None:
        RESERVE["reserve_wait_factor"] = args.reserve_wait_factor
    jobs = load_trace(args.trace)
    names = [p for p in args.policies.split(",") if p]
    with tempfile.TemporaryDirectory() as tmp:
        old = old_policy(args.ref, Path(tmp))
        if args.depths:
            latency(old, jobs, [int(d) for d in args.depths.split(",")], names, args.reps, args.gc == "frozen")
        if args.replay_windows:
            replay(old, jobs, [int(w) for w in args.replay_windows.split(",")], args.limit, args.load, names)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
