"""Isolation on the real cluster: Ray's token auth on, desk namespaces, pool-pinned bundles."""
from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

import ray
from ray.util.placement_group import placement_group_table

from tests.support.cluster import wait_for


def _status(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_ray_token_auth_stays_on(rayfin_env):
    assert rayfin_env.local.token_auth
    url = rayfin_env.dashboard_url.rstrip("/") + "/api/v0/nodes"
    assert _status(url) == 401                                  # no Ray token: refused
    token = open(os.path.expanduser("~/.ray/auth_token")).read().strip()
    assert _status(url, token) == 200


def test_runner_lives_in_desk_namespace_and_bundles_ask_for_the_pool(connect_desk):
    fx = connect_desk("fx")
    job = fx.submit(time.sleep, 20, gpus=2, name="ns-check")
    try:
        wait_for(lambda: job.status().state.value == "RUNNING", 90, what="job running")
        from ray.util.state import list_actors

        mine = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                if a.name and a.name.startswith(f"job-{job.job_id}~")]
        assert len(mine) == 1 and mine[0].ray_namespace == "rayfin-desk-fx"
        groups = [g for g in placement_group_table().values()
                  if (g.get("name") or "").startswith(f"rayfin-job-{job.job_id}~") and g["state"] == "CREATED"]
        assert len(groups) == 1
        bundles = list(groups[0]["bundles"].values())
        assert all(b.get("rayfin_pool_general") == b.get("GPU") for b in bundles)   # fx may use only 'general'
        assert sum(b["GPU"] for b in bundles) == 2
    finally:
        job.cancel()
    assert job.status().state.value == "CANCELLED"
    wait_for(lambda: not [g for g in placement_group_table().values()
                          if (g.get("name") or "").startswith(f"rayfin-job-{job.job_id}~") and g["state"] != "REMOVED"],
             30, what="group released")
    assert ray.is_initialized()

