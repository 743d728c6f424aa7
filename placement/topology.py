"""GPU topology as rayfin models it: racks > nodes > NVLink islands > GPUs.

An island is the unit rayfin places on: GPUs inside one island talk over NVLink (all-to-all),
GPUs on the same node but different islands over PCIe/UPI, nodes in one rack over the rack
switch, and racks over the spine. Pure values; no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Iterable, Mapping

import numpy as np
import numpy.typing as npt

# (capacity, island_node, island_rack, node_rack): the layout as arrays, for the placement hot path.
LayoutArrays = tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]


class LinkLevel(IntEnum):
    """Distance between two GPUs, nearest first. Higher is slower."""

    NVLINK = 0
    INTRA_NODE = 1
    INTRA_RACK = 2
    INTER_RACK = 3


# A pool's island indices, and its placement domains per link level (Layout.pool_domains)
PoolDomains = tuple[tuple[int, ...], dict[LinkLevel, tuple[tuple[int, ...], ...]]]


@dataclass(frozen=True)
class Bandwidths:
    nvlink: float = 300.0
    intra_node: float = 64.0
    intra_rack: float = 25.0
    inter_rack: float = 12.5

    def at(self, level: LinkLevel) -> float:
        return (self.nvlink, self.intra_node, self.intra_rack, self.inter_rack)[level]


@dataclass(frozen=True)
class Island:
    id: str          # "<node>-i<k>", e.g. "n3-i1"
    node: str
    rack: str
    pool: str
    gpus: int
    index: int = 0   # position of the island inside its node

    @property
    def resource(self) -> str:
        """Ray custom resource that pins a bundle to this island (one unit per GPU)."""
        return island_resource(self.id)


def island_resource(island_id: str) -> str:
    return "rayfin_island_" + island_id.replace("-", "_")


def pool_resource(pool: str) -> str:
    return "rayfin_pool_" + pool.replace("-", "_")


@dataclass(frozen=True)
class Topology:
    islands: tuple[Island, ...]
    bandwidth: Bandwidths = Bandwidths()
    _by_id: Mapping[str, Island] = field(default_factory=dict, compare=False, repr=False)   # set in __post_init__
    _layout: "Layout | None" = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {i.id: i for i in self.islands})

    @property
    def layout(self) -> "Layout":
        """Integer-indexed view of the tree, built once per topology (the scheduler's hot path uses it)."""
        if self._layout is None:
            object.__setattr__(self, "_layout", Layout.build(self))
        return self._layout  # type: ignore[return-value]

    @classmethod
    def from_config(cls, cluster: Any) -> "Topology":
        """Build from a `rayfin.config.ClusterConfig` (duck-typed to keep this module config-free)."""
        islands = []
        for rack in cluster.racks:
            for node in rack.nodes:
                for k, n in enumerate(node.islands):
                    islands.append(Island(id=f"{node.name}-i{k}", node=node.name, rack=rack.name,
                                          pool=node.pool, gpus=int(n), index=k))
        bw = cluster.bandwidth_gbps
        return cls(tuple(islands), Bandwidths(bw.nvlink, bw.intra_node, bw.intra_rack, bw.inter_rack))

    def island(self, island_id: str) -> Island:
        return self._by_id[island_id]

    def __contains__(self, island_id: str) -> bool:
        return island_id in self._by_id

    @property
    def total_gpus(self) -> int:
        return sum(i.gpus for i in self.islands)

    def capacity(self) -> dict[str, int]:
        return {i.id: i.gpus for i in self.islands}

    def in_pools(self, pools: Iterable[str]) -> tuple[Island, ...]:
        allowed = set(pools)
        return tuple(i for i in self.islands if i.pool in allowed)

    def pool_capacity(self, pools: Iterable[str]) -> int:
        return sum(i.gpus for i in self.in_pools(pools))

    def largest_island(self, pools: Iterable[str]) -> int:
        return max((i.gpus for i in self.in_pools(pools)), default=0)

    def level(self, a: str, b: str) -> LinkLevel:
        ia, ib = self._by_id[a], self._by_id[b]
        if ia.id == ib.id:
            return LinkLevel.NVLINK
        if ia.node == ib.node:
            return LinkLevel.INTRA_NODE
        if ia.rack == ib.rack:
            return LinkLevel.INTRA_RACK
        return LinkLevel.INTER_RACK

    def ideal_level(self, gpus: int) -> LinkLevel:
        """Nearest level any placement of `gpus` GPUs could reach on an empty cluster."""
        lay = self.layout
        if gpus <= 1 or gpus <= lay.max_island:
            return LinkLevel.NVLINK
        if gpus <= lay.max_node:
            return LinkLevel.INTRA_NODE
        if gpus <= lay.max_rack:
            return LinkLevel.INTRA_RACK
        return LinkLevel.INTER_RACK

    def span_level(self, island_ids: Iterable[str]) -> LinkLevel:
        """The slowest link a set of islands must cross (bounds a ring all-reduce)."""
        ids = list(island_ids)
        if len(ids) <= 1:
            return LinkLevel.NVLINK
        nodes = {self._by_id[i].node for i in ids}
        if len(nodes) == 1:
            return LinkLevel.INTRA_NODE
        racks = {self._by_id[i].rack for i in ids}
        return LinkLevel.INTRA_RACK if len(racks) == 1 else LinkLevel.INTER_RACK


@dataclass(frozen=True)
class Layout:
    """The topology as integer indices: islands 0..I-1 grouped into nodes, nodes into racks.

    Island indices follow `Topology.islands`; node and rack indices follow first appearance.
    """

    island_ids: tuple[str, ...]
    index: Mapping[str, int]                 # island id -> island index
    capacity: tuple[int, ...]                # GPUs per island
    island_node: tuple[int, ...]             # island index -> node index
    island_rack: tuple[int, ...]             # island index -> rack index
    island_pool: tuple[str, ...]
    node_islands: tuple[tuple[int, ...], ...]
    node_rack: tuple[int, ...]
    rack_nodes: tuple[tuple[int, ...], ...]
    node_names: tuple[str, ...]
    rack_names: tuple[str, ...]
    max_island: int
    max_node: int
    max_rack: int
    _memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)   # derived arrays, per pool set

    def pool_mask(self, pools: frozenset[str]) -> npt.NDArray[np.bool_]:
        """Boolean numpy mask of the islands in `pools` (memoised)."""
        key = ("mask", pools)
        if key not in self._memo:
            self._memo[key] = np.array([p in pools for p in self.island_pool], dtype=bool)
        mask: npt.NDArray[np.bool_] = self._memo[key]
        return mask

    def pool_capacity(self, pools: frozenset[str]) -> int:
        key = ("cap", pools)
        if key not in self._memo:
            self._memo[key] = sum(c for c, p in zip(self.capacity, self.island_pool) if p in pools)
        cap: int = self._memo[key]
        return cap

    def pool_domains(self, pools: frozenset[str]) -> PoolDomains:
        """The islands of `pools` (indices, in order) and, per link level, the domains a job could
        be placed in at that level: one per island, per node, per rack, or the whole pool
        (memoised: a reclaim plan looks them up for every job it plans). Shared: read only."""
        key = ("domains", pools)
        if key not in self._memo:
            in_pool = tuple(np.flatnonzero(self.pool_mask(pools)).tolist())
            self._memo[key] = (in_pool, {lv: self._domains(lv, in_pool) for lv in LinkLevel})
        got: PoolDomains = self._memo[key]
        return got

    def _domains(self, level: LinkLevel, in_pool: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        if level == LinkLevel.NVLINK:
            return tuple((i,) for i in in_pool)
        keyf = {LinkLevel.INTRA_NODE: self.island_node, LinkLevel.INTRA_RACK: self.island_rack}.get(level)
        if keyf is None:
            return (in_pool,)
        groups: dict[int, list[int]] = {}
        for i in in_pool:
            groups.setdefault(keyf[i], []).append(i)
        return tuple(tuple(g) for g in groups.values())

    def arrays(self) -> LayoutArrays:
        """(capacity, island_node, island_rack, node_rack) as numpy arrays (memoised)."""
        if "arrays" not in self._memo:
            self._memo["arrays"] = (np.array(self.capacity, dtype=np.float64),
                                    np.array(self.island_node, dtype=np.int64),
                                    np.array(self.island_rack, dtype=np.int64),
                                    np.array(self.node_rack, dtype=np.int64))
        arrays: LayoutArrays = self._memo["arrays"]
        return arrays

    @classmethod
    def build(cls, topo: "Topology") -> "Layout":
        node_ix: dict[str, int] = {}
        rack_ix: dict[str, int] = {}
        node_islands: list[list[int]] = []
        node_rack: list[int] = []
        rack_nodes: list[list[int]] = []
        island_node, island_rack = [], []
        for k, isl in enumerate(topo.islands):
            if isl.rack not in rack_ix:
                rack_ix[isl.rack] = len(rack_ix)
                rack_nodes.append([])
            r = rack_ix[isl.rack]
            if isl.node not in node_ix:
                node_ix[isl.node] = len(node_ix)
                node_islands.append([])
                node_rack.append(r)
                rack_nodes[r].append(node_ix[isl.node])
            n = node_ix[isl.node]
            node_islands[n].append(k)
            island_node.append(n)
            island_rack.append(r)
        cap = tuple(i.gpus for i in topo.islands)
        node_cap = [sum(cap[i] for i in isl) for isl in node_islands]
        rack_cap = [sum(node_cap[n] for n in nodes) for nodes in rack_nodes]
        return cls(
            island_ids=tuple(i.id for i in topo.islands),
            index={i.id: k for k, i in enumerate(topo.islands)},
            capacity=cap, island_node=tuple(island_node), island_rack=tuple(island_rack),
            island_pool=tuple(i.pool for i in topo.islands),
            node_islands=tuple(tuple(x) for x in node_islands), node_rack=tuple(node_rack),
            rack_nodes=tuple(tuple(x) for x in rack_nodes),
            node_names=tuple(node_ix), rack_names=tuple(rack_ix),
            max_island=max(cap, default=0), max_node=max(node_cap, default=0), max_rack=max(rack_cap, default=0))
