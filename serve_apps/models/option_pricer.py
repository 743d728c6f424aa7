"""European option pricer: an MLP fitted at start-up to Black-Scholes prices.

Features per row: spot, strike, maturity_years, volatility, rate, is_call (1.0 call, 0.0 put).
The network sees scale-free inputs (log-moneyness, sqrt(T), total volatility sigma*sqrt(T), r*T,
is_call, and a d1-like ratio) and predicts price / strike, so one fit covers every scale of spot
and strike; the answer is multiplied back by the strike.
"""
from __future__ import annotations

import torch

from serve_apps.models.base import FittedModel, fit_regression, mlp

FEATURES = ("spot", "strike", "maturity_years", "volatility", "rate", "is_call")
# Training domain; the request schema accepts exactly this box (schemas.OptionInput).
MONEYNESS = (0.5, 1.5)
MATURITY = (0.02, 2.0)
VOL = (0.05, 0.8)
RATE = (0.0, 0.08)


def black_scholes(spot, strike, t, vol, r, is_call):
    """Closed-form European price, element-wise over tensors."""
    n = torch.distributions.Normal(0.0, 1.0)
    sq = vol * torch.sqrt(t)
    d1 = (torch.log(spot / strike) + (r + 0.5 * vol * vol) * t) / sq
    d2 = d1 - sq
    disc = strike * torch.exp(-r * t)
    call = spot * n.cdf(d1) - disc * n.cdf(d2)
    put = disc * n.cdf(-d2) - spot * n.cdf(-d1)
    return torch.where(is_call > 0.5, call, put)


def _transform(rows: torch.Tensor) -> torch.Tensor:
    spot, strike, t, vol, r, is_call = rows.unbind(-1)
    lm, sq = torch.log(spot / strike), torch.sqrt(t)
    return torch.stack([lm * 3.0, sq, vol * sq * 2.0, r * t * 10.0, is_call, lm / (vol * sq) / 4.0], dim=-1)


def _output(rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    strike = rows[:, 1]
    return torch.nn.functional.softplus(out[:, 0]) * strike


def sample(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g)
    strike = torch.full((n,), 100.0)
    spot = strike * u(*MONEYNESS)
    return torch.stack([spot, strike, u(*MATURITY), u(*VOL), u(*RATE),
                        (torch.rand(n, generator=g) < 0.5).float()], dim=-1)


def fit_option_pricer(*, seed: int = 0, device: str = "cpu", steps: int = 1200, n: int = 16384) -> FittedModel:
    torch.manual_seed(seed)
    rows = sample(n, seed)
    target = black_scholes(*rows.unbind(-1)) / rows[:, 1]
    net = mlp(6, 64).to(device)
    x, y = _transform(rows).to(device), target.to(device)
    loss = fit_regression(net, x, y, steps=steps, seed=seed, lr=1e-2,
                          loss_fn=lambda out, t: torch.mean((torch.nn.functional.softplus(out[:, 0]) - t) ** 2))
    net.eval()
    model = FittedModel("option_pricer", net, device, FEATURES, _transform, _output)
    test = sample(2048, seed + 1)
    err = (model.predict(test) - black_scholes(*test.unbind(-1))).abs()
    model.fit_metrics = {"train_mse": loss, "test_mae_per_100_strike": float(err.mean()),
                         "test_max_abs_err_per_100_strike": float(err.max()), "steps": steps}
    return model
