"""Placement as Kubernetes does it without Topology-Aware Scheduling (the `kueue_node` baseline).

A job of g GPUs runs as pods of at most one node's GPUs: g <= node size is one pod, larger jobs
are pods of a whole node's GPUs plus one pod with the rest. The scheduler never splits a pod
across nodes (a pod lives on one node), but it knows nothing above the node: each pod goes to
the first node, in configuration order, with room for it. Inside a node the device plugin hands
out any free GPUs, islands in order.
"""
from __future__ import annotations

from placement.gang import FreeIndex


def pods(gpus: int, node_size: int) -> list[int]:
    """Pod sizes of a job, largest first: [8, 8, 4] for 20 GPUs on 8-GPU nodes."""
    if gpus <= 0 or node_size <= 0:
        return []
    whole, rest = divmod(gpus, node_size)
    return [node_size] * whole + ([rest] if rest else [])


def node_fit(index: FreeIndex, gpus: int, pools: frozenset[str]) -> list[tuple[int, int]] | None:
    """Island placement ((island index, GPUs), ...) for `gpus`, pod by pod, or None if a pod finds
    no node. Reads `index`, never changes it."""
    lay = index.lay
    if gpus <= 0 or index.pool_total(pools) < gpus:
        return None
    room = [int(index.nfree[n]) if lay.island_pool[lay.node_islands[n][0]] in pools else 0
            for n in range(len(lay.node_islands))]
    island_free = {i: index.whole(i) for i in range(len(lay.capacity))}
    out: dict[int, int] = {}
    for pod in pods(gpus, lay.max_node):
        node = next((n for n, r in enumerate(room) if r >= pod), None)
        if node is None:
            return None
        room[node] -= pod
        need = pod
        for i in lay.node_islands[node]:
            take = min(island_free[i], need)
            if take > 0:
                island_free[i] -= take
                out[i] = out.get(i, 0) + take
                need -= take
            if need == 0:
                break
    return sorted(out.items())
