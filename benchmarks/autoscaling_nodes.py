"""Node layer of the autoscaling benchmark: GPU nodes held under a replica series, with and
without rayfin's drain. See docs/autoscaling.md ("Give back what sits idle").

Input: the replicas a Serve policy asked for per step (one GPU each) and its forecast. Model,
the same for every node policy:
- nodes of `gpus_per_node` GPUs; a replica that finds no room waits for a new node, which Ray's
  autoscaler starts for pending replicas and which is ready `node_start_s` later;
- downscale stops replicas on the nodes with the fewest replicas first (Serve's own rule,
  deployment_scheduler._get_replicas_to_stop), for every policy: the drain does not move work;
- Ray's autoscaler terminates a node that has been empty for `idle_timeout_s` unless capacity
  requested ahead of demand (rayfin's planner) still asks for it;
- power: a GPU holding a replica draws `busy_w`, any other GPU of a held (or starting) node
  `idle_w`.
Policies:
- serve_spread: Serve's default placement (SPREAD: the least-used node);
- serve_pack: pack placement (the fullest node with room), as Serve's opt-in compact
  scheduling places new replicas (its migration of running replicas is not modelled);
- rayfin_drain: `rayfin.autoscale.drain.plan_drain` every step on the forecast (replicas the
  policy's forecast needs): new replicas pack onto nodes that are not draining, the nodes the
  plan keeps are requested ahead of demand (so the idle timeout takes only released nodes), and
  nodes are started when the forecast x (1 + headroom) exceeds the kept GPUs (the planner's
  capacity ahead of demand).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from rayfin.autoscale.drain import DrainParams, NodeLoad, plan_drain

POLICIES = ("serve_spread", "serve_pack", "rayfin_drain")


@dataclass
class NodeConfig:
    gpus_per_node: int = 2
    node_start_s: float = 180.0
    idle_timeout_s: float = 300.0       # Ray's idle_timeout_minutes default: 5
    idle_w: float = 70.0                # per GPU, idle (an H100 idles at about 60-80 W)
    busy_w: float = 400.0               # per GPU, holding a replica
    headroom: float = 0.0               # rayfin_drain: kept above the forecast (the replica
                                        # series already holds the policy's calibrated margin)
    release_after_s: float = 300.0      # rayfin_drain: surplus this long before release


@dataclass
class _Node:
    id: str
    ready_at: float
    used: int = 0
    draining: bool = False
    draining_since: float | None = None
    empty_since: float | None = None


@dataclass
class NodeRun:
    policy: str
    node_hours: float = 0.0
    energy_kwh: float = 0.0
    node_starts: int = 0
    pending_replica_s: float = 0.0          # replica-seconds spent waiting for a node
    waits: list[float] = field(default_factory=list)   # per wait episode: seconds until capacity
    drains: int = 0

    def as_dict(self) -> dict:
        w = np.array(self.waits) if self.waits else np.zeros(1)
        return {"node_hours": round(self.node_hours, 3), "energy_kwh": round(self.energy_kwh, 3),
                "node_starts": self.node_starts, "pending_replica_hours": round(self.pending_replica_s / 3600, 4),
                "capacity_waits": len(self.waits), "time_to_capacity_s_mean": round(float(w.mean()), 1),
                "time_to_capacity_s_p95": round(float(np.percentile(w, 95)), 1), "drains": self.drains}


def simulate_nodes(policy: str, replicas: np.ndarray, forecast_replicas: np.ndarray, dt: float,
                   cfg: NodeConfig, days: range | None = None) -> NodeRun:
    """Replay the replica series on nodes; metrics over the steps of `days` (all if None)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown node policy {policy!r}; policies are {POLICIES}")
    G = cfg.gpus_per_node
    per_day = int(round(86_400 / dt))
    scored = np.zeros(len(replicas), bool)
    if days is None:
        scored[:] = True
    else:
        for d in days:
            scored[d * per_day:(d + 1) * per_day] = True
    nodes: list[_Node] = []
    seq = 0
    pending = 0
    wait_start: float | None = None
    run = NodeRun(policy)
    drain_params = DrainParams(headroom=cfg.headroom, min_nodes=1, release_after_s=cfg.release_after_s)
    for k in range(len(replicas)):
        t = k * dt
        want = int(replicas[k])
        placed = sum(n.used for n in nodes)
        # Downscale: pending first, then Serve's rule (fewest replicas on the node first).
        surplus = placed + pending - want
        if surplus > 0:
            cut = min(pending, surplus)
            pending -= cut
            surplus -= cut
            while surplus > 0:
                victim = min((n for n in nodes if n.used > 0), key=lambda n: (n.used, n.id))
                victim.used -= 1
                surplus -= 1
        elif surplus < 0:
            pending += -surplus
        keep_requested: set[str] = set()
        if policy == "rayfin_drain":
            fc = forecast_replicas[k]
            fc = float(want) if not math.isfinite(fc) else max(float(fc), float(want))
            plan = plan_drain([NodeLoad(n.id, "pool", G, n.used, n.draining, n.draining_since)
                               for n in nodes], {"pool": fc}, drain_params, now=t)
            draining = plan.draining
            released = set(plan.release)
            for n in nodes:
                if n.id in draining and not n.draining:
                    run.drains += 1 if scored[k] else 0
                    n.draining_since = t
                n.draining = n.id in draining
                if not n.draining:
                    n.draining_since = None
            keep_requested = {n.id for n in nodes if n.id not in released}
        # Place pending replicas on ready nodes with room.
        while pending > 0:
            room = [n for n in nodes if t >= n.ready_at and n.used < G and not n.draining]
            if not room:
                break
            if policy == "serve_spread":
                n = min(room, key=lambda n: (n.used, n.id))
            else:
                n = max(room, key=lambda n: (n.used, n.id))
            n.used += 1
            pending -= 1
        # Ray's autoscaler: start nodes for pending replicas not covered by nodes starting; under
        # rayfin also for the forecast (the planner's request_resources of the pool's bundles).
        starting_room = sum(G - n.used for n in nodes if t < n.ready_at)
        short = pending - starting_room
        if policy == "rayfin_drain":
            # Draining nodes count: the plan brings them back before a new node is worth starting.
            have = sum(G for n in nodes)
            short = max(short, math.ceil(fc * (1.0 + cfg.headroom) - have - 1e-9))
        if short > 0:
            for _ in range(math.ceil(short / G)):
                seq += 1
                nodes.append(_Node(f"n{seq}", ready_at=t + cfg.node_start_s))
                run.node_starts += 1 if scored[k] else 0
        # Idle timeout: empty nodes nobody requests go away.
        for n in nodes:
            n.empty_since = (n.empty_since if n.empty_since is not None else t) if n.used == 0 and t >= n.ready_at else None
        nodes = [n for n in nodes if not (n.empty_since is not None and n.id not in keep_requested
                                          and t - n.empty_since >= cfg.idle_timeout_s)]
        if pending > 0 and wait_start is None:
            wait_start = t
        elif pending == 0 and wait_start is not None:
            if scored[k]:
                run.waits.append(t - wait_start)
            wait_start = None
        if scored[k]:
            busy = sum(n.used for n in nodes)
            run.node_hours += len(nodes) * dt / 3600.0
            run.energy_kwh += (busy * cfg.busy_w + (len(nodes) * G - busy) * cfg.idle_w) * dt / 3.6e6
            run.pending_replica_s += pending * dt
    return run
