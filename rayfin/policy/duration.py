"""Online duration predictor: quantiles of past runtimes, keyed from specific to general.

A finished job's runtime is recorded under five keys, most specific first:

    (desk, user, name, gpus)   the same job submitted again (the common case in ML clusters,
                               where users re-run the same script many times; Hu et al., SC'21)
    (desk, user, gpus)         the same user's jobs of that size
    (desk, user)               the same user
    (desk, gpus)               the desk's jobs of that size
    (desk,)                    the desk

A prediction uses the first key with at least `min_samples` runtimes (the desk key with one),
and returns their `quantile`. The default, 0.8, leans long: a job predicted short that runs long
blocks others more than the reverse costs it (chosen against 0.5 on a tuning window only). Each key keeps its last `window` runtimes, so it follows a
user whose jobs change. No history at all: None, and the scheduler falls back to
least-attained-service order (rayfin.policy.ordering).

State in, state out (like rayfin.forecast): `observe` returns a new `DurationState`; the
predictor object holds only parameters. `to_dict` / `from_dict` give a JSON-safe form the
controller persists, so a restart loses no history.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

Key = tuple[str, ...]


@dataclass(frozen=True)
class DurationParams:
    quantile: float = 0.8   # chosen on window 0 of the dev trace only (docs/scheduling.md)
    min_samples: int = 2
    window: int = 32

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1); got {self.quantile}")
        if self.min_samples < 1 or self.window < 1:
            raise ValueError(f"min_samples and window must be >= 1; got {self.min_samples}, {self.window}")


@dataclass(frozen=True)
class JobKey:
    desk: str
    user: str
    name: str
    gpus: int

    def levels(self) -> tuple[Key, ...]:
        g = str(self.gpus)
        return (("n", self.desk, self.user, self.name, g), ("ug", self.desk, self.user, g), ("u", self.desk, self.user),
                ("g", self.desk, g), ("d", self.desk))


@dataclass(frozen=True)
class Prediction:
    seconds: float
    level: int      # index into JobKey.levels(): 0 most specific
    samples: int


@dataclass(frozen=True)
class DurationState:
    """Runtimes per key, oldest first. Treat as immutable: `observe` copies what it changes."""

    history: Mapping[Key, tuple[float, ...]] = field(default_factory=dict)
    observed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"observed": self.observed, "history": [[list(k), list(v)] for k, v in self.history.items()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DurationState":
        try:
            hist = {tuple(str(x) for x in k): tuple(float(x) for x in v) for k, v in data.get("history", [])}
            return cls(hist, int(data.get("observed", 0)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"duration state: history must be a list of [key, runtimes] pairs ({exc})") from exc


class DurationPredictor:
    def __init__(self, params: DurationParams = DurationParams()):
        self.params = params

    def observe(self, state: DurationState, key: JobKey, seconds: float) -> DurationState:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"runtime must be a finite number >= 0; got {seconds!r}")
        hist = dict(state.history)
        w = self.params.window
        for k in key.levels():
            hist[k] = (hist.get(k, ()) + (float(seconds),))[-w:]
        return DurationState(hist, state.observed + 1)

    def predict(self, state: DurationState, key: JobKey) -> Prediction | None:
        levels = key.levels()
        for i, k in enumerate(levels):
            runs = state.history.get(k)
            if runs and (len(runs) >= self.params.min_samples or i == len(levels) - 1):
                return Prediction(quantile(runs, self.params.quantile), i, len(runs))
        return None


def quantile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated q-quantile (numpy's default), in pure Python: no arrays for 32 values."""
    xs = sorted(values)
    if not xs:
        raise ValueError("quantile of no values")
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    q_value: float = xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
    return q_value
