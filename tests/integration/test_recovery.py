"""Nothing accepted is lost: controller death and node loss on the real local cluster."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray

from rayfin.errors import JobNotFound
from tests.support.cluster import wait_for
from tests.support.jobs import mark_and_sleep


def test_controller_killed_mid_run_all_jobs_finish_once(rayfin_env, connect_desk, tmp_path):
    risk = connect_desk("risk")
    marker = str(tmp_path / "starts.txt")
    running = [risk.submit(mark_and_sleep, marker, f"run{i}", 6.0, gpus=4) for i in range(2)]
    queued = [risk.submit(mark_and_sleep, marker, f"queued{i}", 1.0, gpus=4) for i in range(2)]
    wait_for(lambda: all(j.status().state.value == "RUNNING" for j in running), 90, what="two jobs running")
    assert all(j.status().state.value == "PENDING" for j in queued)
    before = ray.get(rayfin_env.controller.ping.remote())["value"]["pid"]
    ray.kill(rayfin_env.controller, no_restart=False)          # the controller's process dies
    # A call sent right after the kill may still reach the dying process: wait for a new pid.
    after = wait_for(lambda: (p := _ping(rayfin_env.controller)) and p["pid"] != before and p, 90,
                     what="controller restarted in a new process")
    assert set(after["recovery"]["adopted"]) >= {j.job_id for j in running}
    for job in running + queued:
        assert job.result(timeout=120) in {f"run{i}" for i in range(2)} | {f"queued{i}" for i in range(2)}
    starts = Path(marker).read_text().splitlines()
    assert sorted(starts) == sorted(["run0", "run1", "queued0", "queued1"])   # each ran exactly once


def _ping(controller):
    try:
        return ray.get(controller.ping.remote(), timeout=5)["value"]
    except Exception:  # noqa: BLE001 - restarting
        return None


def test_node_loss_requeues_job_and_pool_shrinks(rayfin_env, connect_desk, tmp_path):
    risk, admin = connect_desk("risk"), connect_desk(None)
    marker = str(tmp_path / "starts.txt")
    job = risk.submit(mark_and_sleep, marker, "survivor", 120.0, gpus=4, retries=1)
    wait_for(lambda: job.status().state.value == "RUNNING", 90, what="job running")
    island = job.status().placement[0][0]
    rayfin_env.local.remove_island(island, graceful=False)     # the node crashes
    try:
        wait_for(lambda: admin.pools()["risk"]["lost"] == 4, 60, what="pool shrinks")
        assert job.result(timeout=120) == "survivor"
        st = job.status()
        assert st.attempts == 1 and st.placement[0][0] != island
        assert Path(marker).read_text().splitlines() == ["survivor", "survivor"]
        events = [e["kind"] for e in admin.audit()]
        assert "requeued" in events
    finally:
        rayfin_env.local.add_island(island)
    wait_for(lambda: admin.pools()["risk"]["lost"] == 0, 60, what="pool restored")


def test_other_desk_cannot_cancel(connect_desk):
    fx, eq = connect_desk("fx"), connect_desk("equities")
    job = fx.submit(time.sleep, 0.1, gpus=1)
    with pytest.raises(JobNotFound):
        eq.job(job.job_id)
    with pytest.raises(JobNotFound):
        eq.cancel(job.job_id)
    job.result(timeout=120)
    assert job.status().state.value == "SUCCEEDED"
