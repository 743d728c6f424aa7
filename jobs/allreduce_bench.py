"""Time an all-reduce over the job's gang, and a send/recv between rank pairs: the job a platform
team runs to check what a placement gives (nccl on GPUs, gloo on CPU).

    client.submit_entrypoint("python -m jobs.allreduce_bench --size-mb 16", gpus=8, workers="per_gpu")
    client.submit(jobs.allreduce_bench.bench, size_mb=16, gpus=8, workers="per_gpu")

Figures, as nccl-tests reports them: for an all-reduce of S bytes over n ranks taking t seconds,
algorithm bandwidth = S / t and bus bandwidth = S / t * 2 (n - 1) / n (what each link carries
in a ring). A pair (i, j) is timed alone (everyone else waits at a barrier): rank i sends S
bytes, rank j sends them back; bandwidth = 2 S / t. `--pairs ring` times the ring's neighbours
(i, i+1), whose links a ring all-reduce uses; `--pairs all` every pair. Rank 0 prints one JSON
line; every rank returns it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

from jobs.dist import join, leave


def _timed(fn, iters: int, device: torch.device) -> list[float]:
    out = []
    for _ in range(iters):
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def bench(size_mb: float = 4.0, iters: int = 5, warmup: int = 2, pairs: str = "ring") -> dict:
    if size_mb <= 0 or iters < 1 or warmup < 0 or pairs not in ("ring", "all", "none"):
        raise ValueError("size_mb > 0, iters >= 1, warmup >= 0, pairs in ring|all|none")
    started_group = not dist.is_initialized()
    gang = join()
    started_group = started_group and dist.is_initialized()
    if gang.backend is None:
        raise RuntimeError("allreduce_bench needs a gang: submit it with workers >= 2")
    n, me = gang.world_size, gang.rank
    numel = max(1, int(size_mb * 1024 * 1024 / 4))
    size = numel * 4
    buf = torch.ones(numel, dtype=torch.float32, device=gang.device)
    for _ in range(warmup):
        dist.all_reduce(buf)
    times = _timed(lambda: dist.all_reduce(buf), iters, gang.device)
    islands = [None] * n
    dist.all_gather_object(islands, os.environ.get("RAYFIN_ISLAND", ""))
    t = statistics.median(times)
    result = {"backend": gang.backend, "world_size": n, "bytes": size, "iters": iters,
              "allreduce": {"median_s": t, "min_s": min(times), "max_s": max(times),
                            "algbw_gbps": size / t / 1e9, "busbw_gbps": size / t / 1e9 * 2 * (n - 1) / n},
              "islands": islands, "pairs": []}
    todo = [] if pairs == "none" else ([(i, (i + 1) % n) for i in range(n)] if n > 2 else [(0, 1)]) \
        if pairs == "ring" else [(i, j) for i in range(n) for j in range(i + 1, n)]
    for i, j in todo:
        samples = []
        for k in range(warmup + iters):
            dist.barrier()
            t0 = time.perf_counter()
            if me == i:
                dist.send(buf, j)
                dist.recv(buf, j)
            elif me == j:
                dist.recv(buf, i)
                dist.send(buf, i)
            if gang.device.type == "cuda":
                torch.cuda.synchronize()
            if k >= warmup:
                samples.append(time.perf_counter() - t0)
        box = torch.tensor([statistics.median(samples) if me == i else 0.0], dtype=torch.float64, device=gang.device)
        dist.broadcast(box, i)   # rank i timed the round trip
        pt = float(box.item())
        result["pairs"].append({"ranks": [i, j], "islands": [islands[i], islands[j]], "median_s": pt,
                                "gbps": 2 * size / pt / 1e9 if pt > 0 else None})
    leave(gang, started_group)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.allreduce_bench", description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=float, default=4.0)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--pairs", choices=["ring", "all", "none"], default="ring")
    a = p.parse_args(argv)
    if a.size_mb <= 0 or a.iters < 1 or a.warmup < 0:
        p.error("--size-mb must be > 0, --iters >= 1, --warmup >= 0")
    out = bench(a.size_mb, a.iters, a.warmup, a.pairs)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
