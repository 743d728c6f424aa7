"""Job code that kills the controller for good (`ray.kill`, no restart): the supervisor of
`rayfin up` brings it back from the ledger, nothing accepted is lost, and the kill is audited."""
from __future__ import annotations

import time
from pathlib import Path

import ray

from tests.support.cluster import wait_for
from tests.support.jobs import mark_and_sleep


def kill_the_controller(name: str, namespace: str) -> str:
    """Hostile desk code: Ray lets any code in the cluster look up a named actor and kill it."""
    import ray

    ray.kill(ray.get_actor(name, namespace=namespace))      # no_restart=True: dead for good
    return "killed"


def test_controller_killed_by_job_code_comes_back_with_nothing_lost(rayfin_env, connect_desk, tmp_path):
    risk, fx, admin = connect_desk("risk"), connect_desk("fx"), connect_desk(None)
    c = rayfin_env.config.controller
    marker = str(tmp_path / "starts.txt")
    running = [risk.submit(mark_and_sleep, marker, f"run{i}", 8.0, gpus=4) for i in range(2)]
    queued = [risk.submit(mark_and_sleep, marker, f"queued{i}", 1.0, gpus=4) for i in range(2)]
    wait_for(lambda: all(j.status().state.value == "RUNNING" for j in running), 90, what="two jobs running")
    assert rayfin_env.supervisor.poll() is None                       # `rayfin supervise` is running
    t0 = time.time()
    killer = fx.submit(kill_the_controller, c.name, c.namespace, gpus=1, name="hostile")

    def killed():
        return [e for e in admin.audit(since=t0) if e["kind"] == "controller_killed"]

    kills = wait_for(killed, 120, what="the supervisor brought the controller back and audited the kill")
    event = kills[0]["data"]
    assert set(event["recovery"]["adopted"]) >= {j.job_id for j in running}
    # Nothing accepted is lost, nothing runs twice; the SDK rode through the outage over HTTP.
    for job in running + queued:
        assert job.result(timeout=180) in {f"run{i}" for i in range(2)} | {f"queued{i}" for i in range(2)}
    assert sorted(Path(marker).read_text().splitlines()) == sorted(["run0", "run1", "queued0", "queued1"])
    assert killer.result(timeout=120) == "killed"
    kills = killed()
    assert len(kills) == 1 and "died without restart" in kills[0]["reason"]
    assert kills[0]["data"]["death"].get("actor_id")                 # which actor died, as Ray tells
    assert kills[0]["data"]["death"]["reason"] == "RAY_KILL"          # and how
    assert killer.job_id in kills[0]["data"]["suspects"]             # the killer among the jobs then running
    controller = ray.get_actor(c.name, namespace=c.namespace)
    assert ray.get(controller.ping.remote(), timeout=30)["value"]["recovery"]["adopted"]
    rayfin_env.controller = controller                                # later users get the live handle
    print(f"\nsupervisor: {kills[0]['reason']}")
