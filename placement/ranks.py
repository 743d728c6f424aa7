"""Gang workers: how many GPUs each worker holds, and which rank runs where.

A job of `gpus` GPUs runs as `workers` processes of `gpus / workers` GPUs each (the job's
*unit*). A worker never spans islands: its GPUs talk over NVLink, and Ray hands one bundle (one
island) to one actor. So every island of a placement must hold a whole number of units.

Ranks follow the topology: the workers of one island get contiguous ranks, islands of one node
are adjacent, nodes of one rack are adjacent, racks in configuration order. The ring that
NCCL or gloo builds over ranks 0..W-1 then crosses each slow link as few times as possible:
once per island boundary, not once per worker. Pure values; no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Union

from placement.topology import Topology

Workers = Union[int, Literal["per_gpu"]]
PER_GPU = "per_gpu"


class WorkerRuleError(ValueError):
    """A gang request that can never be met; `field` names the offending argument."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        super().__init__(f"{field}={value!r}: {allowed}")
        self.field, self.value, self.allowed = field, value, allowed


def worker_count(gpus: int, workers: Workers) -> int:
    """The number of workers for a request (`"per_gpu"` = one per GPU)."""
    if workers == PER_GPU:
        return gpus
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise WorkerRuleError("workers", workers, "a whole number >= 1 or 'per_gpu'")
    if workers > gpus:
        raise WorkerRuleError("workers", workers, f"at most one worker per GPU: 1 to {gpus} for gpus={gpus}")
    if gpus % workers:
        divisors = [w for w in range(1, gpus + 1) if gpus % w == 0]
        raise WorkerRuleError("workers", workers, f"a divisor of gpus={gpus} ({', '.join(map(str, divisors))}) "
                                                  "or 'per_gpu': every worker holds the same number of GPUs")
    return workers


def check_unit_fits(topology: Topology, pools: Iterable[str], gpus: int, unit: int) -> None:
    """Raise WorkerRuleError if no placement of `gpus` GPUs in whole `unit`-GPU workers exists
    in `pools` even on an empty cluster."""
    islands = topology.in_pools(pools)
    largest = max((i.gpus for i in islands), default=0)
    if unit > largest:
        raise WorkerRuleError("workers", gpus // unit,
                              f"a worker never spans NVLink islands, and the largest island in pools "
                              f"{sorted(set(pools))} has {largest} GPUs: use more workers (at least "
                              f"{-(-gpus // max(largest, 1))}) or workers='per_gpu'")
    room = sum((i.gpus // unit) * unit for i in islands)
    if room < gpus:
        raise WorkerRuleError("workers", gpus // unit,
                              f"islands in pools {sorted(set(pools))} hold only {room} GPUs in whole "
                              f"{unit}-GPU workers; use smaller workers (e.g. workers='per_gpu')")


@dataclass(frozen=True)
class WorkerSlot:
    """One worker of a gang: its rank, where it runs and its torchrun-style coordinates."""

    rank: int
    island: str
    node: str
    rack: str
    gpus: float
    local_rank: int          # rank among the workers on the same node
    local_world_size: int    # workers on that node
    node_rank: int           # index of the node among the gang's nodes, in rank order

    def to_dict(self) -> dict[str, object]:
        return {"rank": self.rank, "island": self.island, "node": self.node, "rack": self.rack,
                "gpus": self.gpus, "local_rank": self.local_rank, "local_world_size": self.local_world_size,
                "node_rank": self.node_rank}


def rank_layout(topology: Topology, placement: Iterable[tuple[str, float]], unit: float) -> tuple[WorkerSlot, ...]:
    """Workers of a placement in rank order (see the module docstring for why this order).

    `placement` is ((island, gpus), ...); each island's GPUs must be a multiple of `unit`.
    """
    if unit <= 0:
        raise ValueError(f"unit must be positive, got {unit}")
    order = {isl.id: k for k, isl in enumerate(topology.islands)}
    racks = {isl.rack: None for isl in topology.islands}   # rack order = configuration order
    rack_pos = {r: k for k, r in enumerate(racks)}
    rows = []
    for island_id, g in placement:
        isl = topology.island(island_id)
        n = g / unit
        if abs(n - round(n)) > 1e-9 or round(n) < 1:
            raise ValueError(f"island {island_id} holds {g:g} GPUs, not a whole number of {unit:g}-GPU workers")
        rows.append((rack_pos[isl.rack], isl.node, order[island_id], isl, int(round(n))))
    # Nodes of one rack in configuration order: their first island's position decides.
    first: dict[str, int] = {}
    for isl in topology.islands:
        first.setdefault(isl.node, order[isl.id])
    rows.sort(key=lambda r: (r[0], first[r[1]], r[2]))
    per_node: dict[str, int] = {}
    for *_, isl, n in rows:
        per_node[isl.node] = per_node.get(isl.node, 0) + n
    slots: list[WorkerSlot] = []
    seen_local: dict[str, int] = {}
    node_ranks: dict[str, int] = {}
    for *_, isl, n in rows:
        node_ranks.setdefault(isl.node, len(node_ranks))
        for _ in range(n):
            local = seen_local.get(isl.node, 0)
            seen_local[isl.node] = local + 1
            slots.append(WorkerSlot(len(slots), isl.id, isl.node, isl.rack, float(unit), local,
                                    per_node[isl.node], node_ranks[isl.node]))
    return tuple(slots)


def ring_crossings(topology: Topology, slots: Iterable[WorkerSlot]) -> dict[str, int]:
    """How many hops of the ring 0 -> 1 -> ... -> W-1 -> 0 cross each link level."""
    s = list(slots)
    out = {"nvlink": 0, "intra_node": 0, "intra_rack": 0, "inter_rack": 0}
    if len(s) < 2:
        return out
    for a, b in zip(s, s[1:] + s[:1]):
        out[topology.level(a.island, b.island).name.lower()] += 1
    return out


__all__ = ["PER_GPU", "WorkerRuleError", "WorkerSlot", "Workers", "check_unit_fits", "rank_layout",
           "ring_crossings", "worker_count"]
