"""Monte Carlo Value-at-Risk of a portfolio of European options (torch).

Simulates correlated log-normal moves of the underlyings over the horizon, reprices every
option with Black-Scholes at the horizon, and reports VaR and expected shortfall of the
portfolio P&L. Runs on the GPU it was given (CUDA when present, CPU otherwise).

In a gang (`workers=W`), rank r simulates its own 1/W of the paths from its own random stream,
the ranks all-gather their losses, and every rank computes the same VaR and ES over all paths.

    python -m jobs.var_mc --paths 200000 --options 500 --underlyings 20 --seed 7
    client.submit_entrypoint("python -m jobs.var_mc --paths 200000", gpus=1)
    client.submit(jobs.var_mc.run_var, paths=200000, gpus=1)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist

from jobs.dist import context, join, leave


def _norm_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def black_scholes(spot, strike, vol, rate, tau, is_call):
    """Vectorised Black-Scholes price; tau in years (> 0)."""
    sqrt_t = torch.sqrt(tau)
    d1 = (torch.log(spot / strike) + (rate + 0.5 * vol**2) * tau) / (vol * sqrt_t)
    d2 = d1 - vol * sqrt_t
    disc = torch.exp(-rate * tau)
    call = spot * _norm_cdf(d1) - strike * disc * _norm_cdf(d2)
    put = strike * disc * _norm_cdf(-d2) - spot * _norm_cdf(-d1)
    return torch.where(is_call, call, put)


def make_book(n_options: int, n_under: int, gen: torch.Generator, dev: torch.device) -> dict[str, torch.Tensor]:
    under = torch.randint(0, n_under, (n_options,), generator=gen).to(dev)
    spot0 = (50 + 150 * torch.rand(n_under, generator=gen)).to(dev)
    vol = (0.1 + 0.4 * torch.rand(n_under, generator=gen)).to(dev)
    moneyness = (0.8 + 0.4 * torch.rand(n_options, generator=gen)).to(dev)
    return {
        "under": under, "spot0": spot0, "vol": vol,
        "strike": spot0[under] * moneyness,
        "tau": (0.1 + 1.9 * torch.rand(n_options, generator=gen)).to(dev),
        "is_call": (torch.rand(n_options, generator=gen) < 0.5).to(dev),
        "qty": torch.randint(-100, 101, (n_options,), generator=gen).to(dev).float(),
    }


def correlation(n: int, rho: float, dev: torch.device) -> torch.Tensor:
    c = torch.full((n, n), rho, device=dev)
    c.fill_diagonal_(1.0)
    return c


def run_var(paths: int = 100_000, options: int = 200, underlyings: int = 10, horizon_days: float = 1.0,
            confidence: float = 0.99, rho: float = 0.3, rate: float = 0.03, seed: int = 7,
            batch: int = 50_000, device: str | None = None) -> dict[str, float | str | int]:
    """Returns VaR and ES (positive numbers = loss) of the book's P&L over the horizon."""
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1); got {confidence}")
    t0 = time.perf_counter()
    started_group = not dist.is_initialized()
    gang = join()
    started_group = started_group and dist.is_initialized()
    dev = torch.device(device) if device else gang.device   # `device="cpu"` forces the CPU on a GPU node
    gen = torch.Generator().manual_seed(seed)   # the same book on every rank
    book = make_book(options, underlyings, gen, dev)
    chol = torch.linalg.cholesky(correlation(underlyings, rho, dev))
    dt = horizon_days / 252.0
    tau0 = book["tau"]
    value0 = (book["qty"] * black_scholes(book["spot0"][book["under"]], book["strike"], book["vol"][book["under"]],
                                          torch.tensor(rate, device=dev), tau0, book["is_call"])).sum()
    pnl_chunks = []
    share = -(-paths // gang.world_size)                       # ceil: every rank's slot is this long
    mine = max(0, min(share, paths - gang.rank * share))
    sim_gen = torch.Generator(device=dev).manual_seed(seed + 1 + 7919 * gang.rank)
    done = 0
    ctx = context()
    while done < mine:
        n = min(batch, mine - done)
        z = torch.randn(n, underlyings, generator=sim_gen, device=dev) @ chol.T
        vol = book["vol"]
        spot_t = book["spot0"] * torch.exp((rate - 0.5 * vol**2) * dt + vol * math.sqrt(dt) * z)  # (n, U)
        s = spot_t[:, book["under"]]                                                                  # (n, O)
        prices = black_scholes(s, book["strike"], vol[book["under"]], torch.tensor(rate, device=dev),
                               torch.clamp(tau0 - dt, min=1e-4), book["is_call"])
        pnl_chunks.append((prices * book["qty"]).sum(dim=1) - value0)
        done += n
        if ctx is not None:
            ctx.report_progress(done / max(mine, 1))
            if ctx.should_stop():
                raise RuntimeError(f"stopped by rayfin after {done} of {mine} paths (rank {gang.rank})")
    losses = -torch.cat(pnl_chunks) if pnl_chunks else torch.empty(0, device=dev)
    if gang.backend is not None:   # gather every rank's losses: NaN pads the short last slot
        padded = torch.full((share,), float("nan"), device=dev)
        padded[:losses.numel()] = losses
        parts = [torch.empty_like(padded) for _ in range(gang.world_size)]
        dist.all_gather(parts, padded)
        losses = torch.cat(parts)
        losses = losses[~torch.isnan(losses)]
    var = torch.quantile(losses, confidence).item()
    es = losses[losses >= var].mean().item()
    leave(gang, started_group)
    return {"var": var, "es": es, "confidence": confidence, "paths": int(losses.numel()), "options": options,
            "portfolio_value": value0.item(), "device": str(dev), "rank": gang.rank, "world_size": gang.world_size,
            "paths_simulated_here": mine,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "seconds": round(time.perf_counter() - t0, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.var_mc", description=__doc__.splitlines()[0])
    p.add_argument("--paths", type=int, default=100_000)
    p.add_argument("--options", type=int, default=200)
    p.add_argument("--underlyings", type=int, default=10)
    p.add_argument("--horizon-days", type=float, default=1.0)
    p.add_argument("--confidence", type=float, default=0.99)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args(argv)
    if a.paths < 1 or a.options < 1 or a.underlyings < 1:
        p.error("--paths, --options and --underlyings must be >= 1")
    try:
        out = run_var(a.paths, a.options, a.underlyings, a.horizon_days, a.confidence, seed=a.seed)
    except ValueError as exc:
        p.error(str(exc))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
