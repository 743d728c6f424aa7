"""Job traces for the simulator: the CSV format of shared/traces/gpu_jobs_dev.csv.

    job_id,tenant,submit_time_s,duration_s,num_gpus[,...]

Optional columns: `priority` (critical / normal / batch; default normal), `name`. Tenants map to desks by a
stable hash of the tenant name (crc32, not Python's per-process `hash`), so a tenant always lands
on the same desk across runs and machines.
"""
from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass
from pathlib import Path

from rayfin.policy.model import DeskQuota, Priority


@dataclass(frozen=True)
class TraceJob:
    job_id: str
    tenant: str
    submit_s: float
    duration_s: float    # runtime with an ideal placement
    gpus: int
    priority: Priority = Priority.NORMAL
    name: str = ""       # job name (optional column `name`): the duration predictor's most specific key


def load_trace(path: str | Path, replicate: int = 1, limit: int | None = None) -> list[TraceJob]:
    """Read a trace; `replicate` k > 1 submits every job k times (ids `<id>.r<k>`, same tenant and
    time), the load of a cluster k times as large."""
    jobs: list[TraceJob] = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            gpus = int(float(row["num_gpus"]))
            if gpus <= 0:
                continue
            prio = Priority.parse(row["priority"]) if row.get("priority") else Priority.NORMAL
            jobs.append(TraceJob(str(row["job_id"]), str(row["tenant"]), float(row["submit_time_s"]),
                                 max(1.0, float(row["duration_s"])), gpus, prio, str(row.get("name") or "")))
            if limit is not None and len(jobs) >= limit:
                break
    if replicate > 1:
        jobs = [TraceJob(f"{j.job_id}.r{k}", j.tenant, j.submit_s, j.duration_s, j.gpus, j.priority, j.name)
                for j in jobs for k in range(replicate)]
    jobs.sort(key=lambda j: j.submit_s)   # stable: keeps file order among equal times
    return jobs


def desk_of(tenant: str, desks: int) -> str:
    return f"desk{zlib.crc32(tenant.encode('utf-8')) % desks}"


def equal_desks(total_gpus: int, desks: int, weight: float = 1.0) -> dict[str, DeskQuota]:
    """`desks` desks with an equal nominal share of the cluster, unlimited borrowing and lending."""
    share = total_gpus / desks
    return {f"desk{k}": DeskQuota(f"desk{k}", share, None, None, weight) for k in range(desks)}
