"""What every served model shares: the fitted network, its device and a batched predict."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def mlp(n_in: int, hidden: int, n_out: int = 1) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden), torch.nn.SiLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
        torch.nn.Linear(hidden, n_out),
    )


def fit_regression(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, seed: int,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: int = 512,
                   lr: float = 3e-3) -> float:
    """Mini-batch Adam with a cosine-decayed rate; returns the last full-data loss."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    n = x.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=gen).to(x.device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x[idx]), y[idx])
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return float(loss_fn(net(x), y))


@dataclass
class FittedModel:
    kind: str
    net: torch.nn.Module
    device: str
    features: tuple[str, ...]
    transform: Callable[[torch.Tensor], torch.Tensor]   # raw feature rows -> network input
    output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (raw rows, net out) -> answer
    fit_metrics: dict = field(default_factory=dict)

    @torch.inference_mode()
    def predict(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.to(self.device, dtype=torch.float32)
        return self.output(rows, self.net(self.transform(rows))).float().cpu()
