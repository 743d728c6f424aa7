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

import numpy as np
import numpy.typing as npt

from placement.topology import Island, Layout, LinkLevel

Placement = tuple[tuple[str, float], ...]
_EPS = 1e-9


def first_fit(islands: Iterable[Island], free: Mapping[str, float], gpus: int) -> Placement | None:
    """Topology-blind first fit over a free map (FreeIndex.first_fit is the same on arrays)."""
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


Mask = npt.NDArray[np.bool_] | None   # islands (or nodes) a placement may use; None: all


class FreeIndex:
    """Free GPUs of one cycle, indexed for placement: per island, per node, per rack (numpy
    arrays, so best fit is a vectorised arg-min, not a Python scan over every island). Mutable on
    purpose: it is the cycle's scratch copy, never the snapshot."""

    def __init__(self, layout: Layout, free: Sequence[float] | npt.NDArray[np.float64]):
        self.lay = layout
        _, self._inode, self._irack, self._nrack = layout.arrays()
        self.free = np.maximum(np.asarray(free, dtype=np.float64), 0.0)
        self._whole = np.floor(self.free + _EPS).astype(np.int64)
        n_nodes, n_racks = len(layout.node_islands), len(layout.rack_nodes)
        self.nfree = np.bincount(self._inode, weights=self._whole, minlength=n_nodes).astype(np.int64)
        self.rfree = np.bincount(self._nrack, weights=self.nfree, minlength=n_racks).astype(np.int64)
        self.total = int(self._whole.sum())
        self.all_pools = frozenset(layout.island_pool)
        self._k2 = int(layout.max_rack) + 1
        self._k1 = (int(layout.max_node) + 1) * self._k2

    # ---- queries --------------------------------------------------------------------------
    def whole(self, i: int) -> int:
        return int(self._whole[i])

    def pool_total(self, pools: frozenset[str]) -> int:
        if self.all_pools <= pools:
            return self.total
        return int(self._whole[self.lay.pool_mask(pools)].sum())

    def max_island_free(self) -> int:
        return int(self._whole.max(initial=0))

    def in_units(self, unit: int) -> "FreeIndex":
        """A scratch copy whose islands offer only whole `unit`-GPU workers: any placement found on
        it gives every island a multiple of `unit` GPUs (a gang worker never spans islands)."""
        if unit <= 1:
            return self
        return FreeIndex(self.lay, np.floor((self.free + _EPS) / unit) * unit)

    # ---- updates --------------------------------------------------------------------------
    def take(self, placement_ix: Iterable[tuple[int, float]]) -> None:
        for i, g in placement_ix:
            before = int(self._whole[i])
            f = max(0.0, float(self.free[i]) - g)
            self.free[i] = f
            after = int(f + _EPS)
            if after != before:
                d = before - after
                self._whole[i] = after
                self.nfree[self._inode[i]] -= d
                self.rfree[self._irack[i]] -= d
                self.total -= d

    def to_placement(self, placement_ix: Iterable[tuple[int, float]]) -> Placement:
        ids = self.lay.island_ids
        return tuple(sorted((ids[i], float(g)) for i, g in placement_ix))

    # ---- strategies -----------------------------------------------------------------------
    def first_fit(self, gpus: int, pools: frozenset[str]) -> list[tuple[int, int]] | None:
        if gpus <= 0 or self.pool_total(pools) < gpus:
            return None
        have = self._whole if self.all_pools <= pools else np.where(self.lay.pool_mask(pools), self._whole, 0)
        cand = np.flatnonzero(have > 0)
        csum = np.cumsum(have[cand])
        last = int(np.searchsorted(csum, gpus))
        out = [(int(i), int(have[i])) for i in cand[:last]]
        out.append((int(cand[last]), gpus - (int(csum[last - 1]) if last else 0)))
        return out

    def best_fit(self, gpus: int, pools: frozenset[str], start: LinkLevel = LinkLevel.NVLINK,
                 stop: LinkLevel = LinkLevel.INTER_RACK) -> tuple[list[tuple[int, int]], LinkLevel] | None:
        """Nearest-level placement, trying levels from `start` to `stop`; returns (placement, level)."""
        if gpus <= 0 or self.pool_total(pools) < gpus:
            return None
        mask = None if self.all_pools <= pools else self.lay.pool_mask(pools)
        for level in LinkLevel:
            if level < start or level > stop:
                continue
            got = (self._island, self._node, self._rack, self._cluster)[level](gpus, mask)
            if got is not None:
                return got, level
        return None

    def _island(self, g: int, mask: Mask) -> list[tuple[int, int]] | None:
        if g > self.lay.max_island:
            return None
        ok = self._whole >= g
        if mask is not None:
            ok &= mask
        cand = np.flatnonzero(ok)
        if cand.size == 0:
            return None
        key = (self._whole[cand] * self._k1 + self.nfree[self._inode[cand]] * self._k2
               + self.rfree[self._irack[cand]])
        return [(int(cand[int(np.argmin(key))]), g)]

    def _node_mask(self, mask: Mask) -> Mask:
        if mask is None:
            return None
        first = np.array([isl[0] for isl in self.lay.node_islands], dtype=np.int64)
        node_mask: npt.NDArray[np.bool_] = mask[first]
        return node_mask

    def _node(self, g: int, mask: Mask) -> list[tuple[int, int]] | None:
        if g > self.lay.max_node:
            return None
        ok = self.nfree >= g
        nmask = self._node_mask(mask)
        if nmask is not None:
            ok &= nmask
        cand = np.flatnonzero(ok)
        if cand.size == 0:
            return None
        key = self.nfree[cand] * self._k2 + self.rfree[self._nrack[cand]]
        return self._fill_nodes([int(cand[int(np.argmin(key))])], g)

    def _rack_nodes(self, r: int, nmask: Mask) -> list[int]:
        nodes = [n for n in self.lay.rack_nodes[r] if self.nfree[n] > 0 and (nmask is None or nmask[n])]
        nodes.sort(key=lambda n: (-int(self.nfree[n]), n))
        return nodes

    def _rack(self, g: int, mask: Mask) -> list[tuple[int, int]] | None:
        nmask = self._node_mask(mask)
        best_key, best_nodes = None, None
        for rack in np.flatnonzero(self.rfree >= g):
            r = int(rack)
            nodes = self._rack_nodes(r, nmask)
            have, used = 0, 0
            for n in nodes:
                used += 1
                have += int(self.nfree[n])
                if have >= g:
                    break
            if have < g:
                continue
            key = (used, int(self.rfree[r]), r)
            if best_key is None or key < best_key:
                best_key, best_nodes = key, nodes
        return None if best_nodes is None else self._fill_nodes(best_nodes, g)

    def _cluster(self, g: int, mask: Mask) -> list[tuple[int, int]] | None:
        nmask = self._node_mask(mask)
        racks = sorted(np.flatnonzero(self.rfree > 0).tolist(), key=lambda r: (-int(self.rfree[r]), r))
        nodes = [n for r in racks for n in self._rack_nodes(r, nmask)]
        return self._fill_nodes(nodes, g)

    def _fill_nodes(self, nodes: Iterable[int], g: int) -> list[tuple[int, int]] | None:
        need, out = g, []
        for n in nodes:
            isl = sorted(self.lay.node_islands[n], key=lambda i: (-int(self._whole[i]), i))
            for i in isl:
                have = int(self._whole[i])
                if have <= 0:
                    break
                take = min(have, need)
                out.append((i, take))
                need -= take
                if need == 0:
                    return out
        return None
