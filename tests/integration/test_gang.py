"""Gang jobs on the local multi-node cluster: one worker per GPU bundle, torch.distributed wired
(gloo on CPU), ranks in topology order, all or nothing, and nothing left behind.

The `quant` desk of configs/test.yaml owns no GPUs and borrows across both pools, so a 10-GPU
job spans three islands on two nodes."""
from __future__ import annotations

import os
import time

import pytest

from rayfin.errors import InvalidRequest
from rayfin.policy.model import JobState
from tests.support.cluster import wait_for


def probe(hold_s: float = 0.0):
    """Every rank: who am I, where, which GPUs; all-reduce rank + 1 over the gang."""
    import ray
    import torch
    import torch.distributed as dist

    from rayfin.runner import job_context

    ctx = job_context()
    t = torch.tensor([float(ctx.rank + 1)])
    dist.all_reduce(t)
    print(f"rank {ctx.rank} of {ctx.world_size} says hello", flush=True)
    time.sleep(hold_s)
    rc = ray.get_runtime_context()
    return {"rank": ctx.rank, "world_size": ctx.world_size, "local_rank": ctx.local_rank,
            "sum": t.item(), "node_id": rc.get_node_id(), "island": (rc.get_node_labels() or {}).get("rayfin.io/island"),
            "cuda_visible_devices": os.environ["CUDA_VISIBLE_DEVICES"], "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "env": {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK",
                                               "MASTER_ADDR", "MASTER_PORT")}}


def fail_on_rank(bad: int):
    import torch.distributed as dist

    from rayfin.runner import job_context

    ctx = job_context()
    if ctx.rank == bad:
        raise ValueError(f"rank {ctx.rank} cannot price this book")
    dist.barrier()   # the others wait for a peer that never comes: rayfin must stop them
    return ctx.rank


def until_stopped(save_every_s: float = 0.0):
    """Loop until every rank agrees to stop; return how each rank left. `save_every_s`: rank 0
    writes a file into its checkpoint_dir that often and as it stops, and never calls
    report_checkpoint()."""
    import os

    from rayfin.runner import job_context

    ctx = job_context()

    def save() -> None:
        nonlocal saves
        with open(os.path.join(ctx.checkpoint_dir, "state.txt"), "w") as fh:
            fh.write(str(steps))
        saves += 1
        ctx.report_progress(saves / 100)     # so a test can see how many saves were made
    steps, saves, saved = 0, 0, time.monotonic()
    while not ctx.should_stop_all():
        steps += 1
        time.sleep(0.05)
        if save_every_s and ctx.rank == 0 and time.monotonic() - saved >= save_every_s:
            save()
            saved = time.monotonic()
    if save_every_s and ctx.rank == 0:
        save()                 # in the grace: the runner's last look sees it
    return {"rank": ctx.rank, "steps": steps}


def _gang_actors(job_id: str) -> list:
    """The job's runner and workers still alive (found by the repr they show on the dashboard)."""
    from ray.util.state import list_actors

    alive = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10000, raise_on_missing_output=False)
    return [a for a in alive if a.class_name in ("GangWorker", "JobRunner") and f"job={job_id}," in (a.repr_name or "")]


def _no_gang_workers_left(job_id: str, timeout: float = 30.0) -> None:
    wait_for(lambda: not _gang_actors(job_id), timeout=timeout, what=f"every worker of {job_id} to be gone")


def _cli(rayfin_env, monkeypatch, *argv: str) -> str:
    """A `rayfin` CLI command in this process, against the test controller."""
    import contextlib
    import io

    from rayfin import cli

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main([argv[0], "--url", rayfin_env.api_url, "--color", "never", *argv[1:]])
    assert rc == 0, buf.getvalue()
    return buf.getvalue()


def test_per_gpu_gang_uses_every_reserved_gpu(connect_desk, rayfin_env, monkeypatch):
    quant = connect_desk("quant")
    job = quant.submit(probe, gpus=10, workers="per_gpu", comm="allreduce", name="gang-probe")
    out = job.results(timeout=240)
    st = job.status()
    assert st.state is JobState.SUCCEEDED
    assert len(out) == 10 and [r["rank"] for r in out] == list(range(10))
    assert len(st.placement) == 3, st.placement                        # three islands
    # Every worker holds exactly one GPU, no (node, GPU) pair twice.
    assert all(len(r["cuda_visible_devices"].split(",")) == 1 for r in out)
    pairs = {(r["node_id"], r["cuda_visible_devices"]) for r in out}
    assert len(pairs) == 10
    # What ran is what the ledger recorded: workers per island = GPUs reserved there.
    ran: dict[str, int] = {}
    for r in out:
        ran[r["island"]] = ran.get(r["island"], 0) + 1
    assert ran == {i: int(g) for i, g in st.placement}
    # torch.distributed works over the whole gang: sum of rank + 1 over 10 ranks.
    assert all(r["sum"] == 55.0 for r in out)
    # Ranks of one island are contiguous (the ring crosses each island boundary once).
    islands = [r["island"] for r in out]
    assert sum(1 for a, b in zip(islands, islands[1:]) if a != b) == 2
    # torchrun variables, and one rendezvous for all.
    assert all(r["env"]["RANK"] == str(r["rank"]) and r["env"]["WORLD_SIZE"] == "10" for r in out)
    assert len({(r["env"]["MASTER_ADDR"], r["env"]["MASTER_PORT"]) for r in out}) == 1
    assert job.result() == out[0]
    # The rank layout is on the job (rayfin explain shows it), and every rank's output is kept.
    ranks = st.info["ranks"]
    assert [r["island"] for r in ranks] == islands
    lines = job.logs()
    assert {ln.rank for ln in lines if "says hello" in ln.text} == set(range(10))
    assert [ln.text for ln in job.logs(rank=3)] == ["rank 3 of 10 says hello"]
    # The CLI shows the same: the rank layout in `rayfin explain`, one rank's output in `rayfin logs`.
    explain = _cli(rayfin_env, monkeypatch, "explain", job.job_id, "--token", "quant-demo-token")
    assert "workers: 10" in explain and all(f"rank {r:>3}  {islands[r]}" in explain for r in range(10))
    logs = _cli(rayfin_env, monkeypatch, "logs", job.job_id, "--rank", "7", "--token", "quant-demo-token")
    assert logs.strip() == "rank 7 of 10 says hello"
    every = _cli(rayfin_env, monkeypatch, "logs", job.job_id, "--tail", "2", "--token", "quant-demo-token")
    assert len(every.strip().splitlines()) == 2 and every.startswith("[rank ")
    _no_gang_workers_left(job.job_id)


def one_rank_allreduce():
    import torch
    import torch.distributed as dist

    t = torch.tensor([5.0])
    dist.all_reduce(t)
    return {"world": dist.get_world_size(), "backend": dist.get_backend(), "sum": t.item()}


def test_a_one_worker_allreduce_job_gets_a_process_group(connect_desk):
    """`workers="per_gpu"` on one GPU is a gang of one, and its code still calls the collectives.
    Found on a real one-GPU machine: the group was made only for two workers or more, or when the
    job's code had imported torch before it ran (here torch is imported inside the function)."""
    fx = connect_desk("fx")
    out = fx.submit(one_rank_allreduce, gpus=1, workers="per_gpu", comm="allreduce").result(timeout=120)
    assert out == {"world": 1, "backend": "gloo", "sum": 5.0}


def test_entrypoint_gang_with_env_rendezvous(connect_desk):
    fx = connect_desk("fx")
    job = fx.submit_entrypoint("python -m jobs.allreduce_bench --size-mb 0.25 --iters 2 --warmup 1", gpus=4,
                               workers="per_gpu", comm="allreduce", name="allreduce-bench")
    res = job.result(timeout=240)
    assert res["returncode"] == 0
    import json

    report = json.loads(res["output"].strip().splitlines()[-1])
    assert report["world_size"] == 4 and report["backend"] == "gloo"
    assert report["allreduce"]["busbw_gbps"] > 0 and len(report["pairs"]) == 4
    assert len(job.results()) == 4


def test_one_failing_rank_fails_the_gang_and_leaves_no_worker(connect_desk):
    fx = connect_desk("fx")
    t0 = time.monotonic()
    job = fx.submit(fail_on_rank, 2, gpus=4, workers="per_gpu", name="one-bad-rank")
    st = job.wait(timeout=240)
    assert st.state is JobState.FAILED
    assert "rank 2" in st.reason and "cannot price this book" in st.reason, st.reason
    assert time.monotonic() - t0 < 200
    _no_gang_workers_left(job.job_id)
    assert any("cannot price this book" in ln.text for ln in job.logs(rank=2))


def test_cancel_stops_every_worker_and_frees_the_gpus(connect_desk):
    fx = connect_desk("fx")
    job = fx.submit(until_stopped, gpus=4, workers=2, name="cancel-me")
    wait_for(lambda: job.status().state is JobState.RUNNING, timeout=180, what="gang running")
    assert len(job.status().info["ranks"]) == 2
    job.cancel()
    _no_gang_workers_left(job.job_id)
    nxt = fx.submit(probe, gpus=4, workers="per_gpu", name="after-cancel")
    assert [r["sum"] for r in nxt.results(timeout=240)] == [10.0] * 4


def test_preempted_gang_stops_on_every_rank(connect_desk):
    quant, risk = connect_desk("quant"), connect_desk("risk")
    # three 4-GPU workers: 12 GPUs, so one island is risk's (few workers: each costs a process start)
    gang = quant.submit(until_stopped, 2.0, gpus=12, workers=3, priority="batch", name="borrowing-gang")
    wait_for(lambda: gang.status().state is JobState.RUNNING, timeout=240, what="gang running")
    assert any(i.startswith("n1") for i, _ in gang.status().placement)     # it borrowed risk's GPUs
    # Rank 0 saves every 2 s; its runner looks every 2 s and dates a new file at the look before
    # (never later than it was written), so the first save seen may date from before the start.
    # After the third save, and one more look, a save dated after the start has been seen. (The
    # 1 s grace of this config can end before the save made as it stops is reported.)
    wait_for(lambda: gang.status().progress >= 0.03, timeout=120, what="three saves")
    time.sleep(3)
    owner = risk.submit(probe, gpus=8, workers=2, name="reclaims")
    st = gang.wait(timeout=120)
    assert st.state is JobState.PREEMPTED, st
    assert "of work since its last checkpoint lost" in st.reason, st.reason
    _no_gang_workers_left(gang.job_id)
    assert [r["sum"] for r in owner.results(timeout=240)] == [3.0] * 2


def test_preempted_training_checkpoints_and_resumes(connect_desk):
    """jobs/train_signal: stopped in its grace period, it saves a checkpoint; requeued, it resumes."""
    import jobs.train_signal as train_signal

    quant, risk = connect_desk("quant"), connect_desk("risk")
    job = quant.submit(train_signal.train, gpus=12, workers=3, priority="batch", retries=1, name="resumable",
                       kwargs={"steps": 400, "batch": 32, "checkpoint_every": 0})
    wait_for(lambda: (s := job.status()).state is JobState.RUNNING and s.progress > 0.05, timeout=240,
             what="training under way")
    owner = risk.submit(probe, 3.0, gpus=8, workers=2, name="takes-its-gpus-back")
    wait_for(lambda: job.status().state is JobState.PENDING, timeout=120, what="training requeued")
    _no_gang_workers_left(job.job_id)          # the first attempt's workers are gone before the next
    assert owner.results(timeout=240)[0]["sum"] == 3.0
    out = job.results(timeout=300)
    assert job.status().attempts == 1
    assert len(out) == 3 and all(r["world_size"] == 3 and r["backend"] == "gloo" for r in out)
    assert 0 < out[0]["resumed_from"] < 400 and out[0]["stopped_at"] is None
    events = [e["kind"] for e in job.explain()["events"]]
    assert "preemption_planned" in events and "requeued" in events


def test_bad_worker_counts_are_refused_with_the_field(connect_desk):
    fx = connect_desk("fx")
    with pytest.raises(InvalidRequest) as bad:
        fx.submit(probe, gpus=4, workers=3)
    assert bad.value.field == "workers" and "divisor" in str(bad.value)
    with pytest.raises(InvalidRequest) as span:
        connect_desk("quant").submit(probe, gpus=8, workers=1)  # islands hold 4 GPUs
    assert span.value.field == "workers"


def test_a_dead_worker_fails_the_gang_whole_and_it_is_retried(connect_desk):
    import signal

    fx = connect_desk("fx")
    job = fx.submit(until_stopped, gpus=4, workers="per_gpu", retries=1, name="loses-a-worker")
    st = wait_for(lambda: (s := job.status()).state is JobState.RUNNING and s, timeout=240, what="gang running")
    victim = st.info["ranks"][2]
    os.kill(int(victim["pid"]), signal.SIGKILL)             # rank 2's process dies (as with its node)
    st = wait_for(lambda: (s := job.status()).attempts == 1 and s, timeout=120, what="gang requeued whole")
    events = job.explain()["events"]
    requeued = [e["reason"] for e in events if e["kind"] == "requeued"]
    assert requeued and "rank 2" in requeued[0] and "worker died" in requeued[0], requeued
    st = wait_for(lambda: (s := job.status()).state is JobState.RUNNING and s, timeout=240, what="second attempt")
    assert len(st.info["ranks"]) == 4 and victim["pid"] not in {r["pid"] for r in st.info["ranks"]}
    job.cancel()
    _no_gang_workers_left(job.job_id)


def mark_rank(marker: str, seconds: float) -> int:
    from rayfin.runner import job_context

    ctx = job_context()
    with open(marker, "a") as f:
        f.write(f"rank{ctx.rank}\n")
    time.sleep(seconds)
    print(f"rank {ctx.rank} done", flush=True)
    return ctx.rank


def test_controller_restart_readopts_a_running_gang(rayfin_env, connect_desk, tmp_path):
    import ray

    fx = connect_desk("fx")
    marker = str(tmp_path / "ranks.txt")
    job = fx.submit(mark_rank, marker, 8.0, gpus=4, workers=2, dist_backend=None, name="survives-restart")
    wait_for(lambda: job.status().state is JobState.RUNNING, timeout=240, what="gang running")
    before = ray.get(rayfin_env.controller.ping.remote())["value"]["pid"]
    ray.kill(rayfin_env.controller, no_restart=False)
    after = wait_for(lambda: (p := _ping(rayfin_env.controller)) and p["pid"] != before and p, 90,
                     what="controller restarted")
    assert job.job_id in after["recovery"]["adopted"]
    assert job.results(timeout=120) == [0, 1]
    assert sorted(open(marker).read().split()) == ["rank0", "rank1"]        # each rank ran once
    assert {ln.text for ln in job.logs()} >= {"rank 0 done", "rank 1 done"}
    _no_gang_workers_left(job.job_id)


def _ping(controller):
    import ray

    try:
        return ray.get(controller.ping.remote(), timeout=5)["value"]
    except Exception:  # noqa: BLE001 - restarting
        return None
