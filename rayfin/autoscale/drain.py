"""Give back what sits idle: which nodes of a pool to drain, bring back or release. Pure.

    plan = plan_drain(nodes, forecast_gpus={"fx": 3.0}, params=DrainParams(headroom=0.25))
    plan.drain      # node ids to cordon: no new work lands there (the scheduler's snapshot)
    plan.undrain    # draining nodes the forecast needs again
    plan.release    # draining nodes with nothing left on them: stop requesting them from Ray

Per pool, the GPUs to keep are need = max(forecast, used now) * (1 + headroom) (the forecast
is the planner's quantile peak over a node's start time). Nodes are kept fullest first (a full
node is the costliest to empty; a draining node that still holds work is preferred to an empty
one, since bringing it back costs nothing) until the kept GPUs cover the need and at least
`min_nodes` are kept. Every other node drains (no new work lands there) and is released once
nothing runs on it and it has been surplus for `release_after_s` (hysteresis: a load that dips
for a few minutes does not cost a node start when it comes back). Each node gets a verdict with a reason code and text.

A drain never moves work: it waits for jobs to end and for Serve's downscale, which stops
replicas on the nodes with the fewest replicas first, so the emptiest nodes empty first.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Mapping, Sequence

_EPS = 1e-9


class DrainAction(str, Enum):
    KEEP = "keep"
    DRAIN = "drain"
    UNDRAIN = "undrain"
    RELEASE = "release"
    WAIT = "wait"          # draining, still holds work


class DrainReason(str, Enum):
    NEEDED = "needed"                    # the forecast needs this node
    MIN_NODES = "min_nodes"              # kept to hold the pool's floor
    FORECAST_LOW = "forecast_low"        # the forecast needs fewer nodes: drain it
    DEMAND_RETURNED = "demand_returned"  # was draining, the forecast needs it again
    EMPTY = "empty"                      # draining and empty: release it
    DRAINING = "draining"                # draining, work still running on it


@dataclass(frozen=True)
class NodeLoad:
    node: str
    pool: str
    gpus: float                 # the node's GPUs
    used: float                 # GPUs held by running work (jobs, replicas)
    draining: bool = False
    draining_since: float | None = None   # when its drain began (None: not draining or unknown)


@dataclass(frozen=True)
class DrainParams:
    headroom: float = 0.25      # extra fraction kept above the forecast
    min_nodes: int = 1          # never fewer nodes per pool
    release_after_s: float = 300.0   # a surplus node drains this long before it is released

    def __post_init__(self) -> None:
        if self.release_after_s < 0:
            raise ValueError(f"release_after_s must be >= 0; got {self.release_after_s}")
        if self.headroom < 0:
            raise ValueError(f"headroom must be >= 0; got {self.headroom}")
        if self.min_nodes < 0:
            raise ValueError(f"min_nodes must be >= 0; got {self.min_nodes}")


@dataclass(frozen=True)
class NodeVerdict:
    node: str
    pool: str
    action: DrainAction
    reason: DrainReason
    detail: str


@dataclass(frozen=True)
class DrainPlan:
    verdicts: tuple[NodeVerdict, ...]

    def _ids(self, *actions: DrainAction) -> tuple[str, ...]:
        return tuple(v.node for v in self.verdicts if v.action in actions)

    @property
    def drain(self) -> tuple[str, ...]:
        return self._ids(DrainAction.DRAIN)

    @property
    def undrain(self) -> tuple[str, ...]:
        return self._ids(DrainAction.UNDRAIN)

    @property
    def release(self) -> tuple[str, ...]:
        return self._ids(DrainAction.RELEASE)

    @property
    def draining(self) -> frozenset[str]:
        """Nodes that take no new work after this plan: draining, or released and not yet gone."""
        return frozenset(self._ids(DrainAction.DRAIN, DrainAction.WAIT, DrainAction.RELEASE))

    def verdict(self, node: str) -> NodeVerdict:
        for v in self.verdicts:
            if v.node == node:
                return v
        raise KeyError(f"no verdict for node {node!r}; nodes are {[v.node for v in self.verdicts]}")


def plan_drain(nodes: Sequence[NodeLoad], forecast_gpus: Mapping[str, float],
               params: DrainParams = DrainParams(), now: float = 0.0) -> DrainPlan:
    """One verdict per node; see the module docstring. Pools without a forecast keep every node."""
    verdicts: list[NodeVerdict] = []
    by_pool: dict[str, list[NodeLoad]] = {}
    for n in nodes:
        by_pool.setdefault(n.pool, []).append(n)
    for pool in sorted(by_pool):
        verdicts.extend(_plan_pool(pool, by_pool[pool], forecast_gpus.get(pool), params, now))
    return DrainPlan(tuple(verdicts))


def _plan_pool(pool: str, nodes: list[NodeLoad], forecast: float | None,
               params: DrainParams, now: float) -> list[NodeVerdict]:
    if forecast is None:
        return [NodeVerdict(n.node, pool, DrainAction.UNDRAIN if n.draining else DrainAction.KEEP,
                            DrainReason.NEEDED, "no forecast for the pool: every node kept") for n in nodes]
    used = sum(n.used for n in nodes)
    need = max(float(forecast), used) * (1.0 + params.headroom)
    # Fullest first; among equals a draining node (its work has to stay anyway), then by id.
    order = sorted(nodes, key=lambda n: (-n.used, not n.draining, n.node))
    kept: list[NodeLoad] = []
    floor_only: set[str] = set()
    have = 0.0
    for n in order:
        covered = have + _EPS >= need
        if covered and len(kept) >= params.min_nodes:
            break
        if covered:
            floor_only.add(n.node)
        kept.append(n)
        have += n.gpus
    keep_ids = {n.node for n in kept}
    why = f"pool {pool}: need max(forecast {forecast:.3g}, used {used:.3g}) x {1 + params.headroom:g} = {need:.3g} GPUs"
    out = []
    for n in sorted(nodes, key=lambda n: n.node):
        if n.node in keep_ids:
            reason = DrainReason.MIN_NODES if n.node in floor_only else DrainReason.NEEDED
            action = DrainAction.UNDRAIN if n.draining else DrainAction.KEEP
            if n.draining:
                reason = DrainReason.DEMAND_RETURNED
            out.append(NodeVerdict(n.node, pool, action, reason, f"{why}; kept ({n.used:g}/{n.gpus:g} GPUs used)"))
        elif n.used <= _EPS and n.draining and now - (n.draining_since if n.draining_since is not None else now) \
                + _EPS >= params.release_after_s:
            # Surplus for release_after_s and empty: released (cordoned until Ray removes it).
            out.append(NodeVerdict(n.node, pool, DrainAction.RELEASE, DrainReason.EMPTY,
                                   f"{why}; {have:g} GPUs kept elsewhere; node empty"))
        elif n.used <= _EPS and n.draining:
            waited = now - (n.draining_since if n.draining_since is not None else now)
            out.append(NodeVerdict(n.node, pool, DrainAction.WAIT, DrainReason.DRAINING,
                                   f"{why}; empty, surplus for {waited:.0f}s of {params.release_after_s:g}s"))
        else:
            out.append(NodeVerdict(n.node, pool, DrainAction.WAIT if n.draining else DrainAction.DRAIN,
                                   DrainReason.DRAINING if n.draining else DrainReason.FORECAST_LOW,
                                   f"{why}; {have:g} GPUs kept elsewhere; {n.used:g} GPUs in use here"))
    return out


@dataclass(frozen=True)
class ReleaseAccount:
    """Node-hours and energy given back, accumulated per pool (state in, state out).

    A node counts as given back from its release until the pool holds as many nodes as before
    it (the next node of the pool that comes up takes its place). Energy saved is what its GPUs
    would have drawn idling: gpus x idle_w over that time.
    """

    released: Mapping[str, int] = field(default_factory=dict)   # nodes given back now
    node_s: Mapping[str, float] = field(default_factory=dict)
    energy_j: Mapping[str, float] = field(default_factory=dict)
    last_t: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"released": dict(self.released), "node_s": dict(self.node_s),
                "energy_j": dict(self.energy_j), "last_t": self.last_t}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ReleaseAccount":
        d = d or {}
        return cls(dict(d.get("released", {})), dict(d.get("node_s", {})), dict(d.get("energy_j", {})),
                   d.get("last_t"))

    def node_hours(self, pool: str) -> float:
        return self.node_s.get(pool, 0.0) / 3600.0

    def energy_kwh(self, pool: str) -> float:
        return self.energy_j.get(pool, 0.0) / 3.6e6


def account(acc: ReleaseAccount, now: float, released: Mapping[str, int], added: Mapping[str, int],
            gpus_per_node: Mapping[str, float], idle_w: float) -> ReleaseAccount:
    """Advance to `now` (the given-back nodes accrue), then apply this cycle's releases/additions."""
    dt = 0.0 if acc.last_t is None else max(0.0, now - acc.last_t)
    rel, node_s, energy = dict(acc.released), dict(acc.node_s), dict(acc.energy_j)
    for pool, n in rel.items():
        node_s[pool] = node_s.get(pool, 0.0) + n * dt
        energy[pool] = energy.get(pool, 0.0) + n * dt * gpus_per_node.get(pool, 0.0) * idle_w
    for pool, n in released.items():
        rel[pool] = rel.get(pool, 0) + int(n)
    for pool, n in added.items():
        rel[pool] = max(0, rel.get(pool, 0) - int(n))
    return replace(acc, released=rel, node_s=node_s, energy_j=energy, last_t=now)
