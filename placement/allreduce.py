"""Cost model of a ring all-reduce over a set of GPUs.

A ring all-reduce of S bytes over n GPUs moves 2 (n - 1) / n * S bytes through every link of
the ring, so its time is bounded by the slowest link it crosses:

    t = 2 (n - 1) / n * S / B_min

where B_min is the bandwidth (GB/s) of the slowest level the placement spans (NVLink inside one
island, then intra-node, intra-rack, inter-rack). One GPU needs no all-reduce (t = 0).

Runtime model used by the simulator (the same for every policy): a job whose trace duration is D
with its ideal placement runs, on a placement whose ring is bound by bandwidth B, for

    D * ((1 - f) + f * B_ideal / B)

where f is the fraction of its ideal runtime spent communicating (0.3 for multi-GPU jobs by
default, 0 for one GPU). E.g. a 4-GPU job that fits one island (B_ideal = 300 GB/s NVLink)
placed across two nodes of a rack (25 GB/s): 0.7 + 0.3 * 300 / 25 = 4.3 times as long.
"""
from __future__ import annotations

from typing import Iterable

from placement.topology import LinkLevel, Topology

Placement = tuple[tuple[str, int], ...]  # ((island_id, gpus), ...)


def ring_allreduce_seconds(topology: Topology, placement: Placement, size_gb: float = 1.0) -> float:
    n = sum(g for _, g in placement)
    if n <= 1:
        return 0.0
    bw = topology.bandwidth.at(topology.span_level(i for i, _ in placement))
    return 2.0 * (n - 1) / n * size_gb / bw


def achieved_bandwidth(topology: Topology, placement: Placement) -> float:
    """Bandwidth (GB/s) of the slowest link the placement's ring crosses."""
    return topology.bandwidth.at(topology.span_level(i for i, _ in placement))


def ideal_bandwidth(topology: Topology, gpus: int, island_sizes: Iterable[int] | None = None) -> float:
    """Best bandwidth any placement of `gpus` GPUs could get on an empty cluster: NVLink if an
    island holds it, else intra-node if a node does, else intra-rack if a rack does, else inter-rack.
    `island_sizes`, when given, restricts the NVLink test to those islands."""
    if island_sizes is not None and gpus > 1 and gpus > max(list(island_sizes), default=0):
        level = max(topology.ideal_level(gpus), LinkLevel.INTRA_NODE)
    else:
        level = topology.ideal_level(gpus)
    return topology.bandwidth.at(level)


def stretch_factor(topology: Topology, placement: Placement, comm_fraction: float) -> float:
    """How many times its ideal runtime a job runs on `placement` (see the module docstring)."""
    n = int(round(sum(g for _, g in placement)))
    if n <= 1 or comm_fraction <= 0:
        return 1.0
    ratio = ideal_bandwidth(topology, n) / achieved_bandwidth(topology, placement)
    return (1.0 - comm_fraction) + comm_fraction * max(1.0, ratio)
