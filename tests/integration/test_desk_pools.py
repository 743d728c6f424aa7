"""Desk GPU pools end to end on a real local Ray cluster with simulated GPU nodes."""
from __future__ import annotations

import os
import time

import pytest

from rayfin.errors import JobFailed, JobNotFound, QuotaExceeded, Unauthorized
from tests.support.cluster import wait_for


def where_am_i(hold_s: float = 0.0):
    """Runs inside a job: report what Ray gave it."""
    import ray

    rc = ray.get_runtime_context()
    start = time.time()
    time.sleep(hold_s)
    return {"node_id": rc.get_node_id(), "labels": rc.get_node_labels(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "start": start, "end": time.time()}


def gpu_env_of_a_task_without_gpus():
    """Runs inside a job: what a Ray task that asked for no GPU is told about GPUs."""
    import ray

    @ray.remote(num_gpus=0, num_cpus=0)
    def look():
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    return {"job": os.environ.get("CUDA_VISIBLE_DEVICES"), "task": ray.get(look.remote(), timeout=60)}


def boom():
    raise ZeroDivisionError("the model diverged")


def test_job_runs_on_its_own_group_pool_and_gpus(connect_desk):
    risk = connect_desk("risk")
    job = risk.submit(where_am_i, gpus=2, name="whereami")
    info = job.result(timeout=120)
    st = job.status()
    assert st.state.value == "SUCCEEDED"
    islands = [i for i, _ in st.placement]
    assert info["labels"]["rayfin.io/island"] in islands              # ran where rayfin reserved
    assert info["labels"]["rayfin.io/pool"] == "risk"                 # risk's own pool (node n1)
    assert len(info["gpu_ids"]) == 2
    assert info["cuda_visible_devices"] == ",".join(info["gpu_ids"])  # what Ray assigned is what the job sees
    assert st.cuda_visible_devices == info["cuda_visible_devices"]     # and what rayfin recorded


def run_together(barrier_dir: str, n: int, hold_s: float = 1.0, timeout_s: float = 120.0) -> dict:
    """`where_am_i` for a job that runs only alongside n - 1 others: it announces itself in
    `barrier_dir`, waits until all n have (at most `timeout_s`), then holds `hold_s`. So the n
    jobs provably hold their GPUs at the same time; `together` says whether they all met."""
    import uuid
    from pathlib import Path

    arrived = time.time()                  # running, on its GPUs, from here to "end"
    d = Path(barrier_dir)
    (d / uuid.uuid4().hex).touch()
    deadline = time.time() + timeout_s
    while len(list(d.iterdir())) < n and time.time() < deadline:
        time.sleep(0.1)
    together = len(list(d.iterdir())) >= n
    return {**where_am_i(hold_s), "start": arrived, "together": together}


def test_two_desks_never_share_a_gpu(connect_desk, tmp_path):
    eq, fx = connect_desk("equities"), connect_desk("fx")
    # Four 2-GPU jobs, two per desk, each desk at its nominal 4: together they fill the general
    # pool's 8 GPUs, and each waits for the other three, so all four hold their GPUs at once.
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    jobs = ([eq.submit(run_together, str(barrier), 4, gpus=2) for _ in range(2)]
            + [fx.submit(run_together, str(barrier), 4, gpus=2) for _ in range(2)])
    infos = [(j, j.result(timeout=180)) for j in jobs]
    assert all(i["together"] for _, i in infos), "the four jobs never ran at the same time"
    assert max(i["start"] for _, i in infos) < min(i["end"] for _, i in infos)      # they overlapped
    desk_of = {j.job_id: j.job_id.split("-")[0] for j, _ in infos}
    assert sorted(desk_of.values()) == ["equities", "equities", "fx", "fx"]
    for a, ia in infos:
        for b, ib in infos:
            if a.job_id >= b.job_id:
                continue
            if ia["node_id"] == ib["node_id"]:
                assert not set(ia["gpu_ids"]) & set(ib["gpu_ids"]), (desk_of[a.job_id], desk_of[b.job_id])
        assert ia["labels"]["rayfin.io/pool"] == "general"
        assert len(ia["gpu_ids"]) == 2
    # Ray numbers GPUs per node: eight distinct (node, GPU) pairs, the whole pool, none shared.
    held = {(i["node_id"], g) for _, i in infos for g in i["gpu_ids"]}
    assert len(held) == 8


def test_over_quota_is_refused_with_fields(connect_desk):
    fx = connect_desk("fx")
    with pytest.raises(QuotaExceeded) as err:
        fx.submit(where_am_i, gpus=5)            # fx: nominal 4, borrowing 0
    assert err.value.desk == "fx" and err.value.requested == 5 and err.value.available == 4


def test_cancel_frees_gpus_for_next_job(connect_desk):
    risk = connect_desk("risk")
    first = risk.submit(time.sleep, 300, gpus=8, workers=2, dist_backend=None, name="hog")
    wait_for(lambda: first.status().state.value == "RUNNING", what="hog running")
    second = risk.submit(where_am_i, gpus=4, name="next")

    def decided():
        """The controller's decision on it, not a fixed time later: admitted, or waiting for risk."""
        s = second.status()
        return s if s.state.value != "PENDING" or "risk" in (s.reason or "") else None

    st = wait_for(decided, 60, what="a decision on the next job")
    assert st.state.value == "PENDING" and "risk" in st.reason
    assert first.cancel().state.value == "CANCELLED"
    assert second.result(timeout=120)["labels"]["rayfin.io/pool"] == "risk"
    assert first.status().state.value == "CANCELLED"


def test_failing_job_ends_failed_with_error(connect_desk):
    fx = connect_desk("fx")
    job = fx.submit(boom, gpus=1)
    with pytest.raises(JobFailed) as err:
        job.result(timeout=120)
    assert err.value.state == "FAILED" and "ZeroDivisionError: the model diverged" in err.value.reason
    assert job.status().state.value == "FAILED"


def test_entrypoint_job_runs_var_mc(connect_desk):
    risk = connect_desk("risk")
    job = risk.submit_entrypoint("python -m jobs.var_mc --paths 20000 --options 50", gpus=1)
    out = job.result(timeout=180)
    assert out["returncode"] == 0
    import json

    res = json.loads(out["output"].strip().splitlines()[-1])
    assert res["var"] > 0 and res["es"] >= res["var"] and res["cuda_visible_devices"] != ""


def test_a_task_that_asks_for_no_gpu_is_shown_none(connect_desk):
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES unset for work without GPUs, so on a real GPU node it
    sees every GPU (measured on an H200 machine: torch used it). rayfin's nodes set Ray's
    RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO: such a task is told "". (Advice only: policing checks the
    processes on the GPUs themselves, tests/gpu.)"""
    out = connect_desk("fx").submit(gpu_env_of_a_task_without_gpus, gpus=1).result(timeout=120)
    assert out["job"] not in (None, "") and out["task"] == ""


def test_desk_isolation_over_the_sdk(connect_desk):
    fx, eq = connect_desk("fx"), connect_desk("equities")
    job = fx.submit(where_am_i, gpus=1)
    with pytest.raises(JobNotFound):
        eq.job(job.job_id)
    with pytest.raises(Unauthorized):
        connect_desk("fx", token="equities-demo-token")
    assert job.job_id not in {j.job_id for j in eq.jobs()}
    admin = connect_desk(None)
    assert admin.job(job.job_id).status().desk == "fx"
    job.result(timeout=120)


def test_usage_reports_desk_table(connect_desk):
    risk = connect_desk("risk")
    u = risk.usage()
    assert u["desk"] == "risk" and u["nominal"] == 8 and "borrowed" in u and "queued" in u
