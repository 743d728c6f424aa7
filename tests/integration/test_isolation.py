"""Isolation on the real cluster: Ray's token auth on, desk namespaces, pool-pinned bundles."""
from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

import ray
from ray.util.placement_group import placement_group_table

from tests.integration.conftest import wait_for


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


def hostile_fx_code():
    """Desk fx's job, written as a hostile desk would: find risk's runners through Ray itself and
    try to stop, read and start them. Returns what each attempt gave."""
    import ray as _ray

    seen = [a for a in _ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "rayfin-desk-risk" and a["name"].startswith("job-")]
    out = {"found": len(seen), "refused": 0, "obeyed": 0}
    for a in seen:
        handle = _ray.get_actor(a["name"], namespace=a["namespace"])
        for call in (lambda: handle.request_stop.remote(""), lambda: handle.poll.remote("guess"),
                     lambda: handle.start.remote(None)):
            try:
                _ray.get(call(), timeout=30)
                out["obeyed"] += 1
            except Exception as exc:  # noqa: BLE001 - the refusal arrives as a RayTaskError
                out["refused"] += "RunnerAccessDenied" in repr(exc) or "answers only the rayfin controller" in str(exc)
    return out


def risk_book(seconds: float):
    from rayfin.runner import job_context

    t0 = time.time()
    while time.time() - t0 < seconds:
        if job_context().should_stop():
            return "stopped early"
        time.sleep(0.1)
    return "risk numbers"


def test_a_desk_cannot_drive_another_desks_runner_through_ray(connect_desk):
    risk, fx = connect_desk("risk"), connect_desk("fx")
    victim = risk.submit(risk_book, 8.0, gpus=1, name="eod-risk")
    wait_for(lambda: victim.status().state.value == "RUNNING", 90, what="risk job running")
    attack = fx.submit(hostile_fx_code, gpus=1, name="hostile")
    got = attack.result(timeout=120)
    assert got["found"] >= 1 and got["obeyed"] == 0 and got["refused"] == 3 * got["found"], got
    assert victim.result(timeout=120) == "risk numbers"
