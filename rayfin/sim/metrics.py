"""Summary metrics of one simulation (the benchmark's JSON schema).

    mean_jct_s, p99_jct_s        job completion time: end - submission, completed jobs
    mean_wait_s                  time not running: JCT - time spent running
    utilization                  GPU-seconds allocated to jobs / (GPUs x window), window = [0, last
                                 submission] (after it the trace offers no new load)
    goodput_utilization          the same with ideal-placement work only: time lost to slow
                                 all-reduce links does not count as useful
    guarantee_violation_gpu_hours  GPU-hours during which a desk had pending work that fits its
                                 unused nominal quota and had waited longer than the grace period
    total_gpu_hours              GPU-hours allocated to jobs over the whole run
    preemptions                  jobs stopped at a preemption deadline
    single_island_fraction       of placements of multi-GPU jobs that fit one island, the share
                                 placed in one (one-GPU jobs always are, so they are left out)
    decision_p99_ms              99th percentile wall time of one `schedule` call
    decision_cpu_p99_ms          the same in CPU time (a shared, oversubscribed host inflates wall time)
"""
from __future__ import annotations

import numpy as np

from rayfin.sim.engine import SimResult


def summarize(r: SimResult) -> dict:
    jct = np.asarray(r.jct_s, dtype=float)
    wait = np.asarray(r.wait_s, dtype=float)
    dec = np.asarray(r.decision_s, dtype=float) * 1000.0
    cpu = np.asarray(r.decision_cpu_s, dtype=float) * 1000.0
    denom = r.capacity * r.window_s if r.window_s > 0 else float("nan")
    return {
        "mean_jct_s": round(float(jct.mean()), 1) if jct.size else None,
        "p99_jct_s": round(float(np.percentile(jct, 99)), 1) if jct.size else None,
        "mean_wait_s": round(float(wait.mean()), 1) if wait.size else None,
        "utilization": round(r.busy_window_gpu_s / denom, 4),
        "goodput_utilization": round(r.useful_window_gpu_s / denom, 4),
        "guarantee_violation_gpu_hours": round(r.violation_gpu_s / 3600.0, 2),
        "total_gpu_hours": round(r.busy_gpu_s / 3600.0, 1),
        "preemptions": r.preemptions,
        "single_island_fraction": round(r.single_island / r.single_island_eligible, 4)
        if r.single_island_eligible else None,
        "decision_p99_ms": round(float(np.percentile(dec, 99)), 3) if dec.size else None,
        "decision_cpu_p99_ms": round(float(np.percentile(cpu, 99)), 3) if cpu.size else None,
        "decision_mean_ms": round(float(dec.mean()), 3) if dec.size else None,
        "decisions": int(dec.size),
        "jobs_completed": r.completed,
        "jobs_refused": r.refused,
        "jobs_unfinished": r.unfinished,
        "makespan_s": round(r.makespan_s, 1),
    }
