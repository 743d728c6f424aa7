"""What the controller shows: the desk usage table, GPUs per node pool, demand per pool.

Read-only over the state; callers hold the state's lock."""
from __future__ import annotations

from typing import Any

from rayfin.controller.cycle import snapshot
from rayfin.controller.state import ControllerState
from rayfin.policy import JobState


def usage_table(s: ControllerState) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for name, q in s.desks.items():
        table[name] = {"desk": name, "nominal": q.nominal, "max": q.max_gpus, "weight": q.weight,
                       "in_use": 0.0, "serving": 0.0, "borrowed": 0.0, "lent": 0.0, "queued": 0, "queued_gpus": 0.0,
                       "running": 0, "oldest_wait_s": 0.0}
    now = s.clock()
    for job in s.active.values():
        row = table.get(job.desk)
        if row is None:
            continue
        if job.state is JobState.PENDING:
            row["queued"] += 1
            row["queued_gpus"] += job.gpus
            row["oldest_wait_s"] = max(row["oldest_wait_s"], now - job.submitted_at)
        else:
            row["in_use"] += job.gpus
            row["running"] += 1
    for res in s.serving.values():
        row = table.get(res.desk)
        if row is not None:
            row["in_use"] += res.gpus
            row["serving"] += res.gpus
    borrowed_total = 0.0
    for row in table.values():
        row["borrowed"] = max(0.0, row["in_use"] - row["nominal"])
        borrowed_total += row["borrowed"]
    # Lent: what each desk's unused nominal is carrying of others' borrowing, in desk order.
    left = borrowed_total - max(0.0, s.topology.total_gpus - sum(q.nominal for q in s.desks.values()))
    for row in table.values():
        unused = max(0.0, row["nominal"] - row["in_use"])
        row["lent"] = min(unused, max(0.0, left))
        left -= row["lent"]
    for name, row in table.items():
        row.update({state.lower(): n for state, n in s.finished[name].items()})
    return table


def pool_demand(s: ControllerState) -> dict[str, float]:
    """GPUs each node pool is asked for now: placements (jobs and serving) plus queued requests
    (a queued job counts against its desk's first pool). What the capacity planner forecasts."""
    demand = {i.pool: 0.0 for i in s.topology.islands}
    placed = [j.placement for j in s.active.values() if j.state is not JobState.PENDING]
    placed += [r.placement for r in s.serving.values()]
    for job in s.active.values():
        if job.state is JobState.PENDING:
            pools = s.config.desk(job.desk).pools
            demand[pools[0]] = demand.get(pools[0], 0.0) + job.gpus
    for placement in placed:
        for island, g in placement:
            pool = s.topology.island(island).pool
            demand[pool] = demand.get(pool, 0.0) + g
    return demand


def pools(s: ControllerState) -> dict[str, dict[str, float]]:
    """Capacity per node pool: configured, lost (nodes down), held outside rayfin, in use, free."""
    free = snapshot(s).free()
    out: dict[str, dict[str, float]] = {}
    for isl in s.topology.islands:
        row = out.setdefault(isl.pool, {"capacity": 0.0, "lost": 0.0, "outside": 0.0, "free": 0.0, "in_use": 0.0})
        lost = min(float(isl.gpus), s.unavailable.get(isl.id, 0.0))
        outside = min(float(isl.gpus) - lost, s.held_outside.get(isl.id, 0.0))
        row["capacity"] += isl.gpus
        row["lost"] += lost
        row["outside"] += outside
        row["free"] += max(0.0, free[isl.id])
        row["in_use"] += isl.gpus - lost - outside - max(0.0, free[isl.id])
    return out


__all__ = ["usage_table", "pool_demand", "pools"]
