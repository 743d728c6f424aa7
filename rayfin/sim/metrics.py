"""Summary metrics of one simulation (the benchmark's JSON schema).

    mean_jct_s, median_jct_s, p95_jct_s, p99_jct_s
                                 job completion time: end - submission, completed jobs
    mean_wait_s                  time not running: JCT - time spent running
    mean_bounded_slowdown, p99_bounded_slowdown
                                 JCT / max(duration, 10 s), duration = the trace duration (ideal
                                 placement): short jobs stuck behind long ones show up here, while
                                 the mean JCT is dominated by the few jobs that run for weeks
    by_size                      {"1", "2-8", ">8"}: jobs, mean JCT, mean wait, mean bounded slowdown
    per_desk_bounded_slowdown    desk -> mean bounded slowdown of its jobs
    jain_fairness                Jain's index over desks of 1 / (mean bounded slowdown), the
                                 service rate each desk gets: (sum x)^2 / (n sum x^2); 1 = equal
    lost_work_gpu_hours          GPU-hours of work thrown away by preemptions (since the victim's
                                 last checkpoint)
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


BSLD_FLOOR_S = 10.0
SIZES = (("1", 1, 1), ("2-8", 2, 8), (">8", 9, 1 << 30))


def bounded_slowdown(jct, duration, floor_s: float = BSLD_FLOOR_S) -> np.ndarray:
    return np.asarray(jct, dtype=float) / np.maximum(np.asarray(duration, dtype=float), floor_s)


def jain(values) -> float | None:
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0 or not (x > 0).any():
        return None
    return float(x.sum() ** 2 / (x.size * (x ** 2).sum()))


def _r(v, nd=1):
    return None if v is None else round(float(v), nd)


def summarize(r: SimResult) -> dict:
    jct = np.asarray(r.jct_s, dtype=float)
    wait = np.asarray(r.wait_s, dtype=float)
    bsld = bounded_slowdown(jct, r.duration_s) if len(r.duration_s) == jct.size else np.zeros(0)
    gpus = np.asarray(r.gpus, dtype=int)
    by_size = {}
    for label, lo, hi in SIZES:
        m = (gpus >= lo) & (gpus <= hi) if bsld.size else np.zeros(0, dtype=bool)
        k = int(m.sum())
        by_size[label] = {"jobs": k, "mean_jct_s": _r(jct[m].mean()) if k else None,
                          "mean_wait_s": _r(wait[m].mean()) if k else None,
                          "mean_bounded_slowdown": _r(bsld[m].mean(), 3) if k else None}
    per_desk = {}
    if bsld.size:
        desk = np.asarray(r.job_desk)
        for d in r.desks:
            m = desk == d
            per_desk[d] = _r(bsld[m].mean(), 3) if m.any() else None
    pred = np.asarray(r.predictions, dtype=float).reshape(-1, 2)
    dec = np.asarray(r.decision_s, dtype=float) * 1000.0
    cpu = np.asarray(r.decision_cpu_s, dtype=float) * 1000.0
    denom = r.capacity * r.window_s if r.window_s > 0 else float("nan")
    return {
        "mean_jct_s": round(float(jct.mean()), 1) if jct.size else None,
        "median_jct_s": _r(np.median(jct)) if jct.size else None,
        "p95_jct_s": _r(np.percentile(jct, 95)) if jct.size else None,
        "p99_jct_s": round(float(np.percentile(jct, 99)), 1) if jct.size else None,
        "mean_wait_s": round(float(wait.mean()), 1) if wait.size else None,
        "mean_bounded_slowdown": _r(bsld.mean(), 3) if bsld.size else None,
        "p99_bounded_slowdown": _r(np.percentile(bsld, 99), 2) if bsld.size else None,
        "by_size": by_size,
        "per_desk_bounded_slowdown": per_desk,
        "jain_fairness": _r(jain([1.0 / v for v in per_desk.values() if v]), 4),
        "lost_work_gpu_hours": round(r.lost_gpu_s / 3600.0, 2),
        # median absolute error of the duration predictor, relative to the true duration (log10)
        "prediction_mdae_log10": _r(np.median(np.abs(np.log10(np.maximum(pred[:, 0], 1) / np.maximum(pred[:, 1], 1)))), 3)
        if pred.size else None,
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
