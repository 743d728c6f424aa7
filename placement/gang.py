"""Gang placement: choose islands for all of a job's GPUs at once, or none.

Two strategies, both over a `FreeIndex` (free whole GPUs per island, node and rack, kept up to
date while one scheduling cycle places jobs):

- `first_fit`: topology blind. Walk islands in configuration order and take free GPUs until the
  job is covered (what a scheduler that knows only GPU counts does).
- `best_fit`: bandwidth aware. Try the nearest link level the job could ever reach, then the
  next one out, and at each level pick the tightest free domain:
    NVLINK      the island with the fewest free GPUs that still holds the job (best fit), ties
                to the island whose node (then rack) has the fewest free GPUs, so that empty
                islands and nodes stay whole for larger jobs;
    INTRA_NODE  the node with the fewest free GPUs that holds the job, its islands largest first;
    INTRA_RACK  the rack that needs the fewest nodes, its nodes emptiest first (whole islands);
    INTER_RACK  racks emptiest first, then as above.
  The ring all-reduce of the result is bound by the slowest level crossed (placement.allreduce),
  so the first level that succeeds is also the fastest placement available.

Placements are ((island_id, gpus), ...) sorted by island id; None means "does not fit now".
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from placement.topology import Island, Layout, LinkLevel

Placement = tuple[tuple[str, float], ...]
_EPS = 1e-9


def first_fit(islands: Iterable[Island], free: Mapping[str, float], gpus: int) -> Placement | None:
    """Topology-blind first fit over a free map (kept for callers of v1; see FreeIndex.first_fit)."""
    need = gpus
    taken: list[tuple[str, float]] = []
    for isl in islands:
        have = int(free.get(isl.id, 0.0) + _EPS)
        if have <= 0:
            continue
        take = min(have, need)
        taken.append((isl.id, float(take)))
        need -= take
        if need == 0:
            return tuple(sorted(taken))
    return None


class FreeIndex:
    """Free GPUs of one cycle, indexed for placement: per island, per node, per rack, and buckets
    of islands by whole free GPUs (so best fit looks at the smallest bucket that fits, not at
    every island). Mutable on purpose: it is the cycle's scratch copy, never the snapshot."""

    def __init__(self, layout: Layout, free: Sequence[float]):
        self.lay = layout
        self.free = [max(0.0, float(f)) for f in free]
        whole = [int(f + _EPS) for f in self.free]
        self.nfree = [sum(whole[i] for i in isl) for isl in layout.node_islands]
        self.rfree = [sum(self.nfree[n] for n in nodes) for nodes in layout.rack_nodes]
        self.total = sum(whole)
        self.buckets: list[set[int]] = [set() for _ in range(layout.max_island + 1)]
        for i, w in enumerate(whole):
            self.buckets[min(w, layout.max_island)].add(i)
        self.all_pools = frozenset(layout.island_pool)

    # ---- queries --------------------------------------------------------------------------
    def whole(self, i: int) -> int:
        return int(self.free[i] + _EPS)

    def pool_total(self, pools: frozenset[str]) -> int:
        if self.all_pools <= pools:
            return self.total
        return sum(self.whole(i) for i, p in enumerate(self.lay.island_pool) if p in pools)

    def max_island_free(self) -> int:
        for s in range(len(self.buckets) - 1, 0, -1):
            if self.buckets[s]:
                return s
        return 0

    # ---- updates --------------------------------------------------------------------------
    def take(self, placement_ix: Iterable[tuple[int, float]]) -> None:
        lay = self.lay
        for i, g in placement_ix:
            before = self.whole(i)
            self.free[i] = max(0.0, self.free[i] - g)
            after = self.whole(i)
            if after != before:
                d = before - after
                self.buckets[min(before, lay.max_island)].discard(i)
                self.buckets[min(after, lay.max_island)].add(i)
                self.nfree[lay.island_node[i]] -= d
                self.rfree[lay.island_rack[i]] -= d
                self.total -= d

    def to_placement(self, placement_ix: Iterable[tuple[int, float]]) -> Placement:
        ids = self.lay.island_ids
        return tuple(sorted((ids[i], float(g)) for i, g in placement_ix))

    # ---- strategies -----------------------------------------------------------------------
    def first_fit(self, gpus: int, pools: frozenset[str]) -> list[tuple[int, int]] | None:
        if self.pool_total(pools) < gpus:
            return None
        restricted = not self.all_pools <= pools
        need, out = gpus, []
        for i in range(len(self.free)):
            have = self.whole(i)
            if have <= 0 or (restricted and self.lay.island_pool[i] not in pools):
                continue
            take = min(have, need)
            out.append((i, take))
            need -= take
            if need == 0:
                return out
        return None

    def best_fit(self, gpus: int, pools: frozenset[str], start: LinkLevel = LinkLevel.NVLINK,
                 stop: LinkLevel = LinkLevel.INTER_RACK) -> tuple[list[tuple[int, int]], LinkLevel] | None:
        """Nearest-level placement, trying levels from `start` to `stop`; returns (placement, level)."""
        if gpus <= 0 or self.pool_total(pools) < gpus:
            return None
        restricted = not self.all_pools <= pools
        for level in LinkLevel:
            if level < start or level > stop:
                continue
            got = (self._island, self._node, self._rack, self._cluster)[level](gpus, pools, restricted)
            if got is not None:
                return got, level
        return None

    def _island(self, g: int, pools, restricted) -> list[tuple[int, int]] | None:
        lay = self.lay
        if g > lay.max_island:
            return None
        for s in range(g, lay.max_island + 1):
            best, best_key = -1, None
            for i in self.buckets[s]:
                if restricted and lay.island_pool[i] not in pools:
                    continue
                key = (self.nfree[lay.island_node[i]], self.rfree[lay.island_rack[i]], i)
                if best_key is None or key < best_key:
                    best, best_key = i, key
            if best >= 0:
                return [(best, g)]
        return None

    def _node_ok(self, n: int, pools, restricted) -> bool:
        return not restricted or self.lay.island_pool[self.lay.node_islands[n][0]] in pools

    def _node(self, g: int, pools, restricted) -> list[tuple[int, int]] | None:
        lay = self.lay
        if g > lay.max_node:
            return None
        best, best_key = -1, None
        for n, f in enumerate(self.nfree):
            if f >= g and self._node_ok(n, pools, restricted):
                key = (f, self.rfree[lay.node_rack[n]], n)
                if best_key is None or key < best_key:
                    best, best_key = n, key
        return None if best < 0 else self._fill_nodes([best], g)

    def _rack_nodes(self, r: int, pools, restricted) -> list[int]:
        nodes = [n for n in self.lay.rack_nodes[r] if self.nfree[n] > 0 and self._node_ok(n, pools, restricted)]
        nodes.sort(key=lambda n: (-self.nfree[n], n))
        return nodes

    def _rack(self, g: int, pools, restricted) -> list[tuple[int, int]] | None:
        best, best_key, best_nodes = -1, None, None
        for r, f in enumerate(self.rfree):
            if f < g:
                continue
            nodes = self._rack_nodes(r, pools, restricted)
            need, used, have = g, 0, 0
            for n in nodes:
                used += 1
                have += self.nfree[n]
                if have >= need:
                    break
            if have < g:
                continue
            key = (used, f, r)
            if best_key is None or key < best_key:
                best, best_key, best_nodes = r, key, nodes
        return None if best < 0 else self._fill_nodes(best_nodes, g)

    def _cluster(self, g: int, pools, restricted) -> list[tuple[int, int]] | None:
        racks = sorted(range(len(self.rfree)), key=lambda r: (-self.rfree[r], r))
        nodes = [n for r in racks if self.rfree[r] > 0 for n in self._rack_nodes(r, pools, restricted)]
        return self._fill_nodes(nodes, g)

    def _fill_nodes(self, nodes: Iterable[int], g: int) -> list[tuple[int, int]] | None:
        need, out = g, []
        for n in nodes:
            isl = sorted(self.lay.node_islands[n], key=lambda i: (-self.whole(i), i))
            for i in isl:
                have = self.whole(i)
                if have <= 0:
                    break
                take = min(have, need)
                out.append((i, take))
                need -= take
                if need == 0:
                    return out
        return None
