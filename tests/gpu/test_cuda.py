"""Real CUDA: the torch jobs run on the GPU they are given, through rayfin on a real GPU node."""
from __future__ import annotations

import math

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
    assert gpu["device"] == "cuda"
    cpu = run_var(paths=400_000, options=300, underlyings=20, seed=3, device="cpu")
    assert cpu["device"] == "cpu"
    assert math.isfinite(gpu["var"]) and gpu["es"] >= gpu["var"] > 0
    # Same book, different RNG streams: the 99% quantile agrees to a few percent at 400k paths.
    assert abs(gpu["var"] - cpu["var"]) / cpu["var"] < 0.05


def test_training_on_cuda_converges():
    out = train(steps=300)
    assert out["device"] == "cuda" and out["final_loss"] < 0.5 * out["first_loss"]


def _inside_job():
    import os

    import torch as t

    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "count": t.cuda.device_count(),
            "name": t.cuda.get_device_name(0), "var": run_var(paths=100_000)["device"]}


def _one_gpu_node(tmp_path, name: str):
    """A rayfin on this machine's real GPUs: one node, one island of every GPU, desk `risk`."""
    import hashlib

    from rayfin.cluster import free_port
    from rayfin.config import parse_config
    from rayfin.up import bring_up

    n = torch.cuda.device_count()
    cfg = parse_config({
        "cluster": {"racks": [{"name": "r0", "nodes": [{"name": "n0", "islands": [n]}]}]},
        "desks": [{"name": "risk", "nominal_gpus": n,
                   "credential_sha256": hashlib.sha256(b"risk-demo-token").hexdigest()}],
        "controller": {"ledger_path": str(tmp_path / "ledger.db"), "name": name},
        "serve": {"enabled": False}, "dashboard": {"port": free_port(), "metrics_export_port": free_port()},
    }, name)
    return n, bring_up(cfg, serve=False, serve_port=free_port())


def test_job_through_rayfin_sees_exactly_its_gpu(tmp_path):
    """One real GPU node: the job's CUDA_VISIBLE_DEVICES is what Ray reserved, and torch uses it."""
    from rayfin.sdk import connect

    _, run = _one_gpu_node(tmp_path, "rayfin-gpu-test")
    try:
        client = connect("risk", "risk-demo-token", url=run.api_url)
        info = client.submit(_inside_job, gpus=1).result(timeout=300)
        assert info["count"] == 1 and info["var"] == "cuda" and info["visible"] not in (None, "")
    finally:
        run.shutdown()


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


def test_gang_with_nccl_on_real_gpus(tmp_path):
    """One worker per real GPU, the default process group on nccl, an all-reduce across them."""
    from rayfin.sdk import connect

    n, run = _one_gpu_node(tmp_path, "rayfin-gpu-gang")
    try:
        client = connect("risk", "risk-demo-token", url=run.api_url)
        out = client.submit(_nccl_rank, gpus=n, workers="per_gpu", comm="allreduce").results(timeout=600)
        assert [r["rank"] for r in out] == list(range(n))
        assert all(r["backend"] == "nccl" and r["sum"] == n * (n + 1) / 2 for r in out)
        assert len({r["visible"] for r in out}) == n            # one distinct GPU per worker
    finally:
        run.shutdown()
