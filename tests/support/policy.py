"""Small builders for policy and placement tests (no Ray, no config files)."""
from __future__ import annotations

from placement.topology import Bandwidths, Island, Topology
from rayfin.policy import ClusterSnapshot, CommProfile, DeskQuota, PendingJob, Priority, RunningJob

N, B, C = Priority.NORMAL, Priority.BATCH, Priority.CRITICAL


def topo(racks: int = 1, nodes_per_rack: int = 2, islands: tuple[int, ...] = (4, 4)) -> Topology:
    """racks x nodes x islands; nodes are n0, n1, ... across racks r0, r1, ...; islands n<k>-i<j>."""
    out, k = [], 0
    for r in range(racks):
        for _ in range(nodes_per_rack):
            for j, g in enumerate(islands):
                out.append(Island(f"n{k}-i{j}", f"n{k}", f"r{r}", "general", g, j))
            k += 1
    return Topology(tuple(out), Bandwidths())


def desks(**nominal) -> dict[str, DeskQuota]:
    """desks(a=8, b=(8, 3.0)) -> a: nominal 8 weight 1; b: nominal 8 weight 3. Unlimited borrowing."""
    out = {}
    for name, v in nominal.items():
        nom, w = (v, 1.0) if not isinstance(v, tuple) else v
        out[name] = DeskQuota(name, float(nom), None, None, w)
    return out


def run(job_id: str, desk: str, *placement: tuple[str, float], prio: Priority = N, started: float = 0.0,
        deadline: float | None = None, preempted_for: str | None = None, preemptible: bool = True) -> RunningJob:
    gpus = float(sum(g for _, g in placement))
    return RunningJob(job_id, desk, gpus, tuple(sorted(placement)), prio, started, preemptible, deadline,
                      preempted_for)


def pend(job_id: str, desk: str, gpus: int, prio: Priority = N, t: float = 0.0) -> PendingJob:
    return PendingJob(job_id, desk, gpus, prio, t, CommProfile.ALLREDUCE if gpus > 1 else CommProfile.NONE)


def snap(topology: Topology, quotas: dict, running=(), pending=(), now: float = 100.0, unavailable=None, hints=None):
    return ClusterSnapshot(now, topology, quotas, tuple(running), tuple(pending), dict(unavailable or {}),
                           dict(hints or {}))


def by_id(decisions) -> dict:
    return {d.job_id: d for d in decisions}
