"""Train a small signal model (an MLP on synthetic features), data-parallel over the job's gang.

A stand-in for a desk's model training: real torch, real DistributedDataParallel (gloo on CPU,
nccl on CUDA), seeded data, and checkpoints that survive a preemption:

    client.submit(jobs.train_signal.train, steps=200, gpus=4, workers="per_gpu", comm="allreduce",
                  retries=2)
    python -m jobs.train_signal --steps 200        # as an entrypoint or by hand

Each rank trains on its own shard of the data (its own seeded batches; the global batch is
`batch * world_size`), and DDP all-reduces the gradients every step.

Preemption: every rank checks `should_stop_all()` at the same step (an all-reduce of the stop
flag, so all leave together). Then rank 0 saves model, optimiser and step to
`job_context().checkpoint_dir` inside the grace period and the job returns. rayfin requeues it
(with `retries`), and the next attempt finds the checkpoint and resumes from that step.

Elastic: submitted with workers=(min, max), rayfin resizes the gang the same way (stop at a
step, checkpoint, restart at the new world size). The checkpoint holds no per-rank state, so
any world size resumes it; `world_sizes` in the result lists the sizes it ran at.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from jobs.dist import context, join, leave

CHECKPOINT = "train_signal.pt"


def _model(features: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int,
                    sizes: list[int] | None = None) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "sizes": sizes or []}, tmp)
    os.replace(tmp, path)   # atomic: a kill mid-write leaves the previous checkpoint


def train(steps: int = 200, features: int = 32, hidden: int = 64, batch: int = 256, seed: int = 0,
          lr: float = 1e-2, checkpoint_every: int = 50) -> dict[str, float | int | str | None]:
    started_group = not dist.is_initialized()
    gang = join()
    started_group = started_group and dist.is_initialized()
    ctx = context()
    torch.manual_seed(seed)                                  # same initial weights on every rank
    true_w = torch.randn(features, 1)
    model = _model(features, hidden).to(gang.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ckpt = Path(ctx.checkpoint_dir) / CHECKPOINT if ctx is not None and ctx.checkpoint_dir else None
    start, sizes = 0, []
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=gang.device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        sizes = list(state.get("sizes", []))
    sizes.append(gang.world_size)     # the world sizes it has run at (an elastic gang's resizes)
    net = DistributedDataParallel(model) if gang.backend is not None else model
    gen = torch.Generator()   # re-seeded per (rank, step): a resumed run sees the data it would have seen
    first = last = None
    stopped_at = None
    t0 = time.perf_counter()
    for step in range(start, steps):
        gen.manual_seed(seed * 1_000_003 + gang.rank * 100_003 + step)
        x = torch.randn(batch, features, generator=gen)
        y = torch.tanh(x @ true_w) + 0.05 * torch.randn(batch, 1, generator=gen)
        loss = nn.functional.mse_loss(net(x.to(gang.device)), y.to(gang.device))
        opt.zero_grad()
        loss.backward()   # DDP all-reduces the gradients here
        opt.step()
        last = loss.item()
        first = last if first is None else first
        done = step + 1
        if ctx is not None:
            ctx.report_progress(done / steps)
            if ckpt is not None and gang.is_root and checkpoint_every and done % checkpoint_every == 0:
                save_checkpoint(ckpt, model, opt, done, sizes)
                ctx.report_checkpoint()   # a preemption now would lose only the steps since
            if ctx.should_stop_all():   # every rank leaves at this same step
                if ckpt is not None and gang.is_root:
                    save_checkpoint(ckpt, model, opt, done, sizes)
                    ctx.report_checkpoint()
                stopped_at = done
                break
    seconds = time.perf_counter() - t0
    trained = (stopped_at or steps) - start
    if gang.backend is not None:
        dist.barrier()
    out = {"first_loss": first, "final_loss": last, "steps": steps, "resumed_from": start, "stopped_at": stopped_at,
           "rank": gang.rank, "world_size": gang.world_size, "world_sizes": sizes, "backend": gang.backend or "none",
           "device": str(gang.device), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
           "seconds": round(seconds, 3), "steps_per_s": round(trained / seconds, 3) if seconds > 0 else None,
           "samples_per_s": round(trained * batch * gang.world_size / seconds, 1) if seconds > 0 else None}
    leave(gang, started_group)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.train_signal")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch < 1:
        p.error("--steps and --batch must be >= 1")
    print(json.dumps(train(steps=a.steps, batch=a.batch, seed=a.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
