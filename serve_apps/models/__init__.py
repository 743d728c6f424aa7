"""Torch models served by rayfin, fitted at start-up from a seed (no downloaded weights).

`build(kind, seed=..., device=...)` returns a `FittedModel`: a small network plus the numbers of
its fit, ready for `predict(rows)` on a 2-D float tensor whose columns are the kind's features.
"""
from __future__ import annotations

from serve_apps.models.base import FittedModel, pick_device
from serve_apps.models.fraud_scorer import fit_fraud_scorer
from serve_apps.models.option_pricer import fit_option_pricer

BUILDERS = {"option_pricer": fit_option_pricer, "fraud_scorer": fit_fraud_scorer}


def build(kind: str, *, seed: int = 0, device: str | None = None, steps: int | None = None) -> FittedModel:
    try:
        fit = BUILDERS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {sorted(BUILDERS)}") from None
    kwargs = {} if steps is None else {"steps": steps}
    return fit(seed=seed, device=device or pick_device(), **kwargs)


__all__ = ["BUILDERS", "FittedModel", "build", "pick_device"]
