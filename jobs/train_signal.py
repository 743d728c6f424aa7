"""Train a small signal model (an MLP on synthetic features) on the job's device.

A stand-in for a desk's model training: real torch, real optimisation, seeded data.
`client.submit(jobs.train_signal.train, steps=200, gpus=2, comm="allreduce")`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import nn


def train(steps: int = 200, features: int = 32, hidden: int = 64, batch: int = 256, seed: int = 0,
          lr: float = 1e-2) -> dict[str, float | str]:
    t0 = time.perf_counter()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    true_w = torch.randn(features, 1)
    model = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ctx = None
    try:
        from rayfin.runner import job_context

        ctx = job_context()
    except ImportError:
        pass
    first = last = None
    for step in range(steps):
        x = torch.randn(batch, features)
        y = torch.tanh(x @ true_w) + 0.05 * torch.randn(batch, 1)
        loss = nn.functional.mse_loss(model(x.to(dev)), y.to(dev))
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = loss.item()
        first = last if first is None else first
        if ctx is not None:
            ctx.report_progress((step + 1) / steps)
            if ctx.should_stop():
                raise RuntimeError(f"stopped by rayfin at step {step}")
    return {"first_loss": first, "final_loss": last, "steps": steps, "device": str(dev),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "seconds": round(time.perf_counter() - t0, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.train_signal")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(json.dumps(train(steps=a.steps, seed=a.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
