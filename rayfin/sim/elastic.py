"""Scaling curves for elastic gangs in the simulator: throughput at k workers, measured.

Source: the Pollux (OSDI'21) artifact (shared/profiles/pollux, see its README): step times by
number of GPUs and per-GPU batch size, from `<model>_placements.csv` (1 to 4 GPUs packed on one
node) and `<model>_scalability.csv` (6 to 64 replicas; the median over node counts).

An elastic job keeps its global batch B = g * b0 (g: the GPUs it asked for, b0: the median
per-GPU batch size measured for its model at one GPU), so more workers only help as much as the
measured step time at the smaller per-GPU batch B / k allows: strong scaling, with no credit for
statistical efficiency (Pollux's goodput would add a batch-size penalty; keeping B fixed needs
none). Per-GPU batches below the smallest measured one take that one's step time (the extra
workers idle); above the largest, gradient accumulation (step time grows in proportion).

    speed(k) = B / step_time(k, B / k)          relative speed-up of k over g: speed(k) / speed(g)

Worker counts between measured ones interpolate the throughput linearly. Never a linear speed-up
by assumption: the measured curves flatten (docs/scheduling.md, "Elastic gangs").
"""
from __future__ import annotations

import bisect
import csv
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Mapping

from rayfin.sim.placement_model import MODELS, PROFILE_DIR, model_class

Table = Mapping[int, list[tuple[float, float]]]   # workers -> [(local batch, step time)] sorted


def load_tables(profile_dir: str | Path = PROFILE_DIR) -> dict[str, Table]:
    out: dict[str, Table] = {}
    for m in MODELS:
        cells: dict[tuple[int, float], list[float]] = defaultdict(list)
        with open(Path(profile_dir) / f"{m}_placements.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                if len(r["placement"]) == 1:     # packed on one node
                    cells[(int(r["placement"]), float(r["local_bsz"]))].append(float(r["step_time"]))
        with open(Path(profile_dir) / f"{m}_scalability.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                cells[(int(r["num_replicas"]), float(r["local_bsz"]))].append(float(r["step_time"]))
        table: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for (k, b), ts in cells.items():
            table[k].append((b, statistics.median(ts)))
        out[m] = {k: sorted(v) for k, v in table.items()}
    return out


def step_time(rows: list[tuple[float, float]], bsz: float) -> float:
    """Step time at per-GPU batch `bsz` from measured (batch, step time) rows (see module doc)."""
    bs = [b for b, _ in rows]
    if bsz <= bs[0]:
        return rows[0][1]
    if bsz >= bs[-1]:
        return rows[-1][1] * bsz / bs[-1]
    i = bisect.bisect_left(bs, bsz)
    (b0, t0), (b1, t1) = rows[i - 1], rows[i]
    return t0 + (t1 - t0) * (bsz - b0) / (b1 - b0)


def throughput(table: Table, k: int, global_bsz: float) -> float:
    """Samples per second at k workers, interpolating between measured worker counts."""
    ks = sorted(table)
    k = max(ks[0], min(k, ks[-1]))
    if k in table:
        return global_bsz / step_time(table[k], global_bsz / k)
    j = bisect.bisect_left(ks, k)
    lo, hi = ks[j - 1], ks[j]
    a, b = throughput(table, lo, global_bsz), throughput(table, hi, global_bsz)
    return a + (b - a) * (k - lo) / (hi - lo)


class ScalingCurves:
    def __init__(self, tables: Mapping[str, Table]):
        self.tables = dict(tables)
        self.b0 = {m: statistics.median(b for b, _ in t[min(t)]) for m, t in self.tables.items()}
        self._memo: dict[tuple[str, int, int], float] = {}

    @classmethod
    def load(cls, profile_dir: str | Path = PROFILE_DIR) -> "ScalingCurves":
        return cls(load_tables(profile_dir))

    def speedup(self, job_id: str, asked: int, workers: int) -> float:
        """Speed at `workers` GPUs over speed at `asked` GPUs, for the job's model class."""
        m = model_class(job_id)
        key = (m, asked, workers)
        if key not in self._memo:
            t, big_b = self.tables[m], asked * self.b0[m]
            self._memo[key] = throughput(t, workers, big_b) / throughput(t, asked, big_b)
        return self._memo[key]
