"""Card-transaction fraud scorer: an MLP fitted at start-up on seeded synthetic transactions.

Features per row: amount, hour (0-23), merchant_risk (0-1), distance_km, tx_last_hour, card_present.
Labels come from a known logistic ground truth (`true_logit`) so the fit can be checked: the
served score is a probability of fraud in [0, 1].
"""
from __future__ import annotations

import torch

from serve_apps.models.base import FittedModel, fit_regression, mlp

FEATURES = ("amount", "hour", "merchant_risk", "distance_km", "tx_last_hour", "card_present")


def true_logit(rows: torch.Tensor) -> torch.Tensor:
    amount, hour, risk, dist, velocity, present = rows.unbind(-1)
    night = ((hour < 6) | (hour >= 23)).float()
    return (-4.0 + 0.9 * torch.log(amount / 100.0) + 3.0 * risk + 0.7 * torch.log1p(dist / 10.0)
            + 0.35 * velocity - 1.5 * present + 1.2 * night)


def _transform(rows: torch.Tensor) -> torch.Tensor:
    amount, hour, risk, dist, velocity, present = rows.unbind(-1)
    angle = hour * (2 * torch.pi / 24.0)
    night = ((hour < 6) | (hour >= 23)).float()
    return torch.stack([torch.log(amount / 100.0), torch.sin(angle), torch.cos(angle), night, risk * 2.0,
                        torch.log1p(dist / 10.0), velocity / 5.0, present], dim=-1)


def _output(rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(out[:, 0])


def sample(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    amount = torch.exp(torch.randn(n, generator=g) * 1.2 + 4.0).clamp(0.5, 50_000)
    hour = torch.randint(0, 24, (n,), generator=g).float()
    risk = torch.rand(n, generator=g)
    dist = torch.exp(torch.randn(n, generator=g) * 1.5 + 2.0).clamp(0, 20_000)
    velocity = torch.poisson(torch.full((n,), 1.5), generator=g)
    present = (torch.rand(n, generator=g) < 0.6).float()
    rows = torch.stack([amount, hour, risk, dist, velocity, present], dim=-1)
    labels = (torch.rand(n, generator=g) < torch.sigmoid(true_logit(rows))).float()
    return rows, labels


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve by the rank-sum formula."""
    order = torch.argsort(scores)
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    pos = labels > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_fraud_scorer(*, seed: int = 0, device: str = "cpu", steps: int = 500, n: int = 32768) -> FittedModel:
    torch.manual_seed(seed)
    rows, labels = sample(n, seed)
    net = mlp(8, 64).to(device)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    loss = fit_regression(net, _transform(rows).to(device), labels.to(device), steps=steps, seed=seed,
                          loss_fn=lambda out, t: bce(out[:, 0], t))
    net.eval()
    model = FittedModel("fraud_scorer", net, device, FEATURES, _transform, _output)
    test_rows, test_labels = sample(8192, seed + 1)
    scores = model.predict(test_rows)
    model.fit_metrics = {"train_bce": loss, "test_auc": auc(scores, test_labels),
                         "oracle_auc": auc(torch.sigmoid(true_logit(test_rows)), test_labels), "steps": steps}
    return model
