"""Serving replicas are charged to the owning desk in the real controller's ledger."""
from __future__ import annotations

import ray

from tests.support.cluster import wait_for


def _call(controller, method, *args, **kwargs):
    return ray.get(getattr(controller, method).remote(*args, **kwargs), timeout=60)


def test_reserve_and_release_serving_share_the_desk_budget(rayfin_env, connect_desk):
    ctl, key = rayfin_env.controller, rayfin_env.deploy_key
    fx = connect_desk("fx")
    # Only the deploy key (held by `rayfin up`) or an admin may reserve serving capacity.
    refused = _call(ctl, "reserve_serving", "fx-demo-token", model="pricer", desk="fx", replicas=2,
                    gpus_per_replica=0.5)
    assert not refused["ok"] and refused["error"]["type"] == "Unauthorized"
    ok = _call(ctl, "reserve_serving", key, model="pricer", desk="fx", replicas=2, gpus_per_replica=0.5)
    assert ok["ok"] and ok["value"]["num_gpus"] == 0.5
    (resource, amount), = ok["value"]["resources"].items()
    assert resource.startswith("rayfin_island_n0_") and amount == 0.5          # fx's pool is node n0
    assert fx.usage()["serving"] == 1.0
    # fx: nominal 4, no borrowing. 1 GPU serves, so 4 more GPUs cannot be reserved...
    over = _call(ctl, "reserve_serving", key, model="big", desk="fx", replicas=4, gpus_per_replica=1.0)
    assert not over["ok"] and over["error"]["type"] == "QuotaExceeded"
    # ...and batch work shares the same budget: a 4-GPU job waits while serving holds 1.
    job = fx.submit(sum, [1, 2], gpus=4)
    wait_for(lambda: "fx" in job.status().reason and job.status().state.value == "PENDING", 30,
             what="job queued behind serving")
    released = _call(ctl, "release_serving", key, model="pricer")
    assert released["ok"] and released["value"]["released"]
    assert job.result(timeout=120) == 3
    assert fx.usage()["serving"] == 0.0
