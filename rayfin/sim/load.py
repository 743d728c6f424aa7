"""How loaded a cluster is by a trace, and cutting a trace into windows.

In-window demand: at each instant t of the submission window [0, W] (W: the last
submission), the GPUs of the jobs that would be running if capacity were unlimited (submitted
at or before t, not yet finished: submit <= t < submit + duration), averaged over the window:

    demand = sum_j gpus_j * |[s_j, s_j + d_j) ∩ [0, W]| / W

GPU-hours over the window would overstate it, since week-long jobs run far past the window.
`gpus_for_load(jobs, X)` sizes a cluster of whole nodes so that demand / capacity = X (rounded to
the nearest node).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from rayfin.sim.trace import TraceJob


def in_window_demand(jobs: Sequence[TraceJob], span: tuple[float, float] | None = None) -> float:
    """Mean GPUs demanded over the submission window of `jobs` (or over `span`, e.g. the whole
    trace's window for a subset of its jobs)."""
    if not jobs:
        return 0.0
    t0, t1 = span if span is not None else (min(j.submit_s for j in jobs), max(j.submit_s for j in jobs))
    w = t1 - t0
    if w <= 0:
        return float(sum(j.gpus for j in jobs))
    busy = sum(j.gpus * max(0.0, min(j.submit_s + j.duration_s, t1) - max(j.submit_s, t0)) for j in jobs)
    return busy / w


def gpus_for_load(jobs: Sequence[TraceJob], load: float, gpus_per_node: int = 8) -> int:
    """Whole nodes so that in-window demand / capacity = `load` (at least one node)."""
    if load <= 0:
        raise ValueError(f"load must be > 0; got {load}")
    if gpus_per_node <= 0:
        raise ValueError(f"gpus_per_node must be > 0; got {gpus_per_node}")
    nodes = max(1, round(in_window_demand(jobs) / load / gpus_per_node))
    return int(nodes * gpus_per_node)


def windows(jobs: Sequence[TraceJob], count: int) -> list[list[TraceJob]]:
    """`count` consecutive windows of (nearly) equal job counts, each re-timed to start at 0."""
    if count < 1:
        raise ValueError(f"windows must be >= 1; got {count}")
    jobs = sorted(jobs, key=lambda j: j.submit_s)
    n = len(jobs)
    out = []
    for k in range(count):
        part = jobs[k * n // count:(k + 1) * n // count]
        if part:
            t0 = part[0].submit_s
            out.append([replace(j, submit_s=j.submit_s - t0) for j in part])
    return out
