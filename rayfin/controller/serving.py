"""Serving reservations: a Serve deployment's GPUs charged to its desk on one island.

A reservation is its own record (`ServingReservation`, the ledger's `serving` table), not a job:
it is never queued or preempted, and the scheduler sees it as running work that cannot be
moved. `rayfin up` reserves before it deploys a model and releases when it undeploys.
"""
from __future__ import annotations

from typing import Any

from placement.topology import island_resource
from rayfin.controller.cycle import snapshot
from rayfin.controller.records import ServingReservation
from rayfin.controller.state import ControllerState
from rayfin.errors import InvalidRequest, QuotaExceeded
from rayfin.policy import check_quota
from rayfin.policy.quota import attribute_lenders
from rayfin.reasons import ReasonCode


def reserve(s: ControllerState, model: str, desk: str, replicas: int, gpus_per_replica: float) -> dict[str, Any]:
    """Charge `replicas` x `gpus_per_replica` GPUs to `desk` and pick the island its replicas use
    (best fit: the fullest island that still holds them all). The same reservation again is a
    no-op; a different one replaces it."""
    if replicas < 1 or gpus_per_replica < 0:
        raise InvalidRequest(field="replicas/gpus_per_replica", value=(replicas, gpus_per_replica),
                             allowed="replicas >= 1, gpus_per_replica >= 0")
    total = replicas * gpus_per_replica
    with s.lock:
        old = s.serving.get(model)
        if old is not None:
            if abs(old.gpus - total) < 1e-9:
                return resources(old)
            _drop(s, model, "serving deployment replaced", ReasonCode.SERVING_REPLACED)
        if total == 0:
            return {"resources": {}, "num_gpus": 0.0, "island": None}
        quota = s.desks[desk]
        snap = snapshot(s)
        q = check_quota(quota, total, s.desks, snap.usage(), float(s.topology.total_gpus))
        free = snap.free()
        options = sorted((free[i.id], i.id) for i in s.topology.in_pools(quota.pools) if free[i.id] >= total)
        if not q.fits or not options:
            why = q.reason if not q.fits else f"no island in pools {sorted(quota.pools)} has {total:g} free GPUs"
            code = q.code if not q.fits else ReasonCode.NO_FREE_GPUS
            s.ledger.record(s.clock(), f"serve-{model}", desk, "refused", "", why, {"gpus": total}, code)
            raise QuotaExceeded(f"serving deployment {model!r} ({replicas} x {gpus_per_replica:g} GPU) refused: "
                                f"{why}", desk=desk, requested=total, available=0.0)
        island = options[0][1]
        lenders = attribute_lenders(desk, q.borrowed, s.desks, snap.usage(), float(s.topology.total_gpus),
                                    {i.pool for i in s.topology.islands if i.id == island}) if q.borrowed else ()
        res = ServingReservation(model, desk, replicas, gpus_per_replica, island, s.clock(), q.reason,
                                 lenders=lenders)
        s.ledger.put_serving(res, ("serving_reserved", q.reason), ts=res.reserved_at)
        s.serving[model] = res
    return resources(res)


def release(s: ControllerState, model: str) -> dict[str, Any]:
    """Give a serving deployment's GPUs back to its desk (undeploy, or a failed deploy)."""
    with s.lock:
        res = s.serving.get(model)
        if res is None:
            return {"released": False}
        _drop(s, model, "serving deployment released", ReasonCode.SERVING_RELEASED)
    return {"released": True, "gpus": res.gpus, "desk": res.desk}


def _drop(s: ControllerState, model: str, why: str, code: ReasonCode) -> None:
    s.ledger.drop_serving(model, ("cancelled", why, code), ts=s.clock())
    s.serving.pop(model, None)


def resources(res: ServingReservation) -> dict[str, Any]:
    """What each replica asks Ray for: the island's resource, so it lands where it was charged."""
    return {"resources": {island_resource(res.island): res.gpus_per_replica}, "num_gpus": res.gpus_per_replica,
            "island": res.island}


__all__ = ["reserve", "release", "resources"]
