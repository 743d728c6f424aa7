"""Real CUDA: the torch jobs run on the GPU they are given, through rayfin on a real GPU node."""
from __future__ import annotations

import json
import math
import os
import subprocess
import time

import pytest
import torch

from jobs.train_signal import train
from jobs.var_mc import run_var

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def need_cuda():
    assert torch.cuda.is_available(), "RAYFIN_GPU_TESTS=1 but torch sees no CUDA device"


def test_var_mc_on_cuda_matches_cpu_statistically():
    gpu = run_var(paths=400_000, options=300, underlyings=20, seed=3)
    assert gpu["device"].startswith("cuda")
    cpu = run_var(paths=400_000, options=300, underlyings=20, seed=3, device="cpu")
    assert cpu["device"] == "cpu"
    assert math.isfinite(gpu["var"]) and gpu["es"] >= gpu["var"] > 0
    # Same book, different RNG streams: the 99% quantile agrees to a few percent at 400k paths.
    assert abs(gpu["var"] - cpu["var"]) / cpu["var"] < 0.05


def test_training_on_cuda_converges():
    out = train(steps=300)
    assert out["device"].startswith("cuda") and out["final_loss"] < 0.5 * out["first_loss"]


@pytest.fixture(scope="module")
def gpu_rayfin(tmp_path_factory):
    """A rayfin on this machine's real GPUs: one node, one island of every GPU, desk `risk`.
    Yields (GPU count, a connected risk client)."""
    import hashlib

    from rayfin.cluster import free_port
    from rayfin.config import parse_config
    from rayfin.sdk import connect
    from rayfin.up import bring_up

    n = torch.cuda.device_count()
    name = "rayfin-gpu-tier"
    cfg = parse_config({
        "cluster": {"racks": [{"name": "r0", "nodes": [{"name": "n0", "islands": [n]}]}]},
        "desks": [{"name": "risk", "nominal_gpus": n,
                   "credential_sha256": hashlib.sha256(b"risk-demo-token").hexdigest()}],
        "controller": {"ledger_path": str(tmp_path_factory.mktemp("ledger") / "ledger.db"), "name": name},
        "serve": {"enabled": False}, "dashboard": {"port": free_port(), "metrics_export_port": free_port()},
    }, name)
    run = bring_up(cfg, serve=False, serve_port=free_port())
    try:
        yield n, connect("risk", "risk-demo-token", url=run.api_url)
    finally:
        run.shutdown()


def _inside_job():
    import os

    import torch as t

    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "count": t.cuda.device_count(),
            "name": t.cuda.get_device_name(0), "var": run_var(paths=100_000)["device"]}


def test_job_through_rayfin_sees_exactly_its_gpu(gpu_rayfin):
    """One real GPU node: the job's CUDA_VISIBLE_DEVICES is what Ray reserved, and torch uses it."""
    _, client = gpu_rayfin
    info = client.submit(_inside_job, gpus=1).result(timeout=300)
    assert info["count"] == 1 and info["var"].startswith("cuda") and info["visible"] not in (None, "")


def test_entrypoint_job_runs_var_mc_on_cuda(gpu_rayfin):
    """The README's command-line job, on the real GPU it was given."""
    _, client = gpu_rayfin
    out = client.submit_entrypoint("python -m jobs.var_mc --paths 400000 --options 300", gpus=1).result(timeout=300)
    assert out["returncode"] == 0, out["output"][-3000:]
    res = json.loads(out["output"].strip().splitlines()[-1])
    assert res["device"].startswith("cuda") and res["es"] >= res["var"] > 0 and res["cuda_visible_devices"] != ""


def _nccl_rank():
    import os

    import torch as t
    import torch.distributed as dist

    from rayfin.runner import job_context

    ctx = job_context()
    x = t.tensor([float(ctx.rank + 1)], device="cuda")
    dist.all_reduce(x)
    return {"rank": ctx.rank, "backend": dist.get_backend(), "sum": x.item(),
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "name": t.cuda.get_device_name(0)}


def test_gang_with_nccl_on_real_gpus(gpu_rayfin):
    """One worker per real GPU, the default process group on nccl, an all-reduce across them."""
    n, client = gpu_rayfin
    out = client.submit(_nccl_rank, gpus=n, workers="per_gpu", comm="allreduce").results(timeout=600)
    assert [r["rank"] for r in out] == list(range(n))
    assert all(r["backend"] == "nccl" and r["sum"] == n * (n + 1) / 2 for r in out)
    assert len({r["visible"] for r in out}) == n            # one distinct GPU per worker


def test_training_gang_on_nccl_converges(gpu_rayfin):
    """jobs.train_signal as a gang through rayfin: every rank trains on CUDA over nccl."""
    n, client = gpu_rayfin
    out = client.submit(train, gpus=n, workers="per_gpu", comm="allreduce",
                        kwargs={"steps": 300}).results(timeout=600)
    assert len(out) == n and [r["rank"] for r in out] == list(range(n))
    for r in out:
        assert r["backend"] == "nccl" and r["device"].startswith("cuda") and r["world_size"] == n
        assert r["final_loss"] < 0.5 * r["first_loss"]


def _sneak_onto_the_gpu():
    """Desk code in a one-GPU job: a Ray task that asks for no GPU (and is told
    CUDA_VISIBLE_DEVICES="") starts a command that sets it back and takes GPU memory."""
    import os
    import subprocess
    import sys

    import ray

    @ray.remote(num_gpus=0, num_cpus=0)
    def sneak():
        code = ("import torch, time; x = torch.ones(2**28, device='cuda'); torch.cuda.synchronize(); "
                "print('on the gpu', flush=True); time.sleep(600)")
        told = os.environ.get("CUDA_VISIBLE_DEVICES")
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"}, check=True)
        return told

    return ray.get(sneak.remote())


def _on_gpu() -> set[int]:
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"], capture_output=True,
                         text=True, check=True).stdout
    return {int(x) for x in out.split() if x.strip().isdigit()}


def test_policing_stops_a_process_on_a_gpu_its_worker_does_not_hold(gpu_rayfin):
    """Ray's GPU isolation is an environment variable. rayfin lists the processes on each real GPU
    (NVML) and stops one whose Ray worker holds no GPU: the worker and its command are killed, the
    job whose code started it fails with the reason, and the GPU memory is freed."""
    from rayfin.errors import JobFailed

    _, client = gpu_rayfin
    t0 = time.time()
    job = client.submit(_sneak_onto_the_gpu, gpus=1)
    with pytest.raises(JobFailed) as err:
        job.result(timeout=180)
    assert "does not hold" in err.value.reason
    found = [e for e in client.audit(since=t0) if e["kind"] == "outside_found"]
    assert found and found[0]["data"]["kind"] == "gpu_process", found
    deadline = time.monotonic() + 30
    while _on_gpu() - {os.getpid()} and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _on_gpu() - {os.getpid()} == set()          # nothing of the job is left on the GPU
    print(f"policing: found {found[0]['ts'] - t0:.1f} s after submit ({found[0]['reason']}); "
          f"detect_s {found[0]['data'].get('detect_s')}")
