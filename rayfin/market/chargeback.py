"""Chargeback: who used how many GPU-hours, lent and borrowed to and from whom, at what cost.

Input: `UsageRecord`s, one per allocation interval (a job's run between start and end, or a
serving reservation), ledger-like; the controller adapter that reads them from the ledger comes
later. A record's `borrowed` maps lender desk -> GPUs of this allocation above the desk's nominal
that were lent by that desk.

    gpu_hours(r)   = gpus x |[start, end) ∩ [since, until)| / 3600
    batch / serving: gpu_hours by the record's kind
    borrowed(desk) = sum over desk's records of borrowed[lender] x overlap; lent(lender) the same
                     sums seen from the lender
    preempted      = gpu_hours of records that ended in a preemption
    cost           = gpu_hours x rate[pool]  (per GPU-hour)

A desk's own view (`chargeback(..., desk=D)`, what the API shows a desk): rows of D's records,
plus the hours other desks borrowed from D (D's `lent`, and those flows); nothing else of theirs.

Rates (`ChargebackSettings`, the config's `chargeback:` section): cost per GPU-hour per node pool,
`default` for a pool without its own; the config is refused when a pool has no rate.

Sums are exact: overlaps are whole microseconds and every sum is a `Fraction`, so the rows add
up to the total and the total to the records, to the last digit (`reconcile`). Floats appear
only in the output records.
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from fractions import Fraction
from typing import Iterable, Mapping

from pydantic import Field, field_validator

from rayfin.config_base import ConfigModel
from rayfin.market.calendar import _aware

DEFAULT_RATE_KEY = "default"


class ChargebackSettings(ConfigModel):
    """`chargeback: {rates: {POOL or default: COST_PER_GPU_HOUR}, currency: USD}`. Without the
    section every pool costs 1.0 per GPU-hour (cost = GPU-hours)."""

    rates: dict[str, float] = Field(default_factory=lambda: {DEFAULT_RATE_KEY: 1.0},
                                    description="cost per GPU-hour per node pool; `default` for the others")
    currency: str = Field("USD", min_length=1, max_length=16)

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("give at least one rate, e.g. {default: 2.5} (cost per GPU-hour)")
        bad = {k: r for k, r in v.items() if not r >= 0 or r == float("inf")}
        if bad:
            raise ValueError(f"rates must be finite and >= 0 (cost per GPU-hour); got {bad}")
        return v

    def missing(self, pools: Iterable[str]) -> list[str]:
        """Pools that would have no rate (empty when a `default` is given)."""
        return [] if DEFAULT_RATE_KEY in self.rates else sorted(set(pools) - set(self.rates))

    def rates_for(self, pools: Iterable[str]) -> dict[str, float]:
        """Rate per pool: its own, else `default` (a pool with neither is left out: `chargeback`
        then refuses it rather than price it at zero)."""
        pools = list(pools)
        out = {p: self.rates[p] for p in pools if p in self.rates}
        if DEFAULT_RATE_KEY in self.rates:
            for p in pools:
                out.setdefault(p, self.rates[DEFAULT_RATE_KEY])
        return out


class WorkKind(str, Enum):
    BATCH = "batch"
    SERVING = "serving"


class GroupBy(str, Enum):
    DESK = "desk"
    JOB = "job"
    MODEL = "model"


@dataclass(frozen=True)
class UsageRecord:
    job_id: str
    desk: str
    kind: WorkKind
    pool: str
    gpus: float
    start: datetime
    end: datetime
    preempted: bool = False
    borrowed: Mapping[str, float] = field(default_factory=dict)   # lender desk -> GPUs borrowed from it
    model: str | None = None

    def __post_init__(self) -> None:
        _aware(self.start), _aware(self.end)
        if self.end < self.start:
            raise ValueError(f"usage record {self.job_id}: end {self.end} before start {self.start}")
        if sum(self.borrowed.values()) > self.gpus + 1e-9:
            raise ValueError(f"usage record {self.job_id}: borrows {sum(self.borrowed.values())} of {self.gpus} GPUs")


_H_US = 3600 * 10 ** 6


def _overlap_us(r: UsageRecord, since: datetime, until: datetime) -> int:
    a, b = max(r.start, since), min(r.end, until)
    if b <= a:
        return 0
    d = b - a
    return (d.days * 86400 + d.seconds) * 10 ** 6 + d.microseconds


def _f(x: float) -> Fraction:
    return Fraction(x).limit_denominator(10 ** 6) if not isinstance(x, Fraction) else x


@dataclass(frozen=True)
class ChargeRow:
    key: str
    batch_gpu_h: Fraction = Fraction(0)
    serving_gpu_h: Fraction = Fraction(0)
    borrowed_gpu_h: Fraction = Fraction(0)
    lent_gpu_h: Fraction = Fraction(0)
    preempted_gpu_h: Fraction = Fraction(0)
    cost: Fraction = Fraction(0)

    @property
    def gpu_h(self) -> Fraction:
        return self.batch_gpu_h + self.serving_gpu_h

    def view(self) -> dict:
        """As `record`, keyed `key` (the API's row)."""
        return self.record("key")

    def record(self, by: str) -> dict:
        return {by: self.key, "gpu_hours": _out(self.gpu_h), "batch_gpu_hours": _out(self.batch_gpu_h),
                "serving_gpu_hours": _out(self.serving_gpu_h), "borrowed_gpu_hours": _out(self.borrowed_gpu_h),
                "lent_gpu_hours": _out(self.lent_gpu_h), "preempted_gpu_hours": _out(self.preempted_gpu_h),
                "cost": _out(self.cost)}


def _out(x: Fraction) -> float:
    return round(float(x), 6)


@dataclass(frozen=True)
class Flow:
    lender: str
    borrower: str
    gpu_h: Fraction


@dataclass(frozen=True)
class ChargebackReport:
    by: GroupBy
    since: datetime
    until: datetime
    rows: tuple[ChargeRow, ...]
    total: ChargeRow
    flows: tuple[Flow, ...]

    def records(self) -> list[dict]:
        return [r.record(self.by.value) for r in self.rows] + [self.total.record(self.by.value)]

    def to_json(self) -> str:
        return json.dumps({"since": self.since.isoformat(), "until": self.until.isoformat(), "by": self.by.value,
                           "rows": [r.record(self.by.value) for r in self.rows],
                           "total": self.total.record(self.by.value),
                           "flows": [{"lender": f.lender, "borrower": f.borrower, "gpu_hours": _out(f.gpu_h)}
                                     for f in self.flows]}, indent=2)

    def view(self) -> dict:
        """The API's reply: rows keyed `key`, numbers as in `to_json` (the CLI's)."""
        return {"since": self.since.timestamp(), "until": self.until.timestamp(), "by": self.by.value,
                "rows": [r.view() for r in self.rows], "total": self.total.view(),
                "flows": [{"lender": f.lender, "borrower": f.borrower, "gpu_hours": _out(f.gpu_h)}
                          for f in self.flows]}

    def to_csv(self) -> str:
        buf = io.StringIO()
        recs = self.records()
        w = csv.DictWriter(buf, fieldnames=list(recs[0]))
        w.writeheader()
        w.writerows(recs)
        return buf.getvalue()

    def format_table(self) -> str:
        recs = self.records()
        cols = list(recs[0])
        width = {c: max(len(c), *(len(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c])) for r in recs))
                 for c in cols}
        cell = lambda r, c: f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c])  # noqa: E731
        lines = ["  ".join(f"{c:>{width[c]}}" for c in cols)]
        lines += ["  ".join(f"{cell(r, c):>{width[c]}}" for c in cols) for r in recs]
        if self.flows:   # who lent to whom
            wl = max(len("lender"), *(len(f.lender) for f in self.flows))
            wb = max(len("borrower"), *(len(f.borrower) for f in self.flows))
            lines += ["", f"{'lender':>{wl}}  ->  {'borrower':<{wb}}  gpu_hours"]
            lines += [f"{f.lender:>{wl}}  ->  {f.borrower:<{wb}}  {float(f.gpu_h):9.2f}" for f in self.flows]
        return "\n".join(lines)


def chargeback(records: Iterable[UsageRecord], since: datetime, until: datetime,
               rates: Mapping[str, float], by: GroupBy = GroupBy.DESK, desk: str | None = None) -> ChargebackReport:
    """Aggregate `records` over [since, until) (module docstring). A pool without a rate is an
    error: a chargeback must never price GPUs at zero by omission. `desk`: that desk's own view."""
    _aware(since), _aware(until)
    acc: dict[str, dict[str, Fraction]] = defaultdict(lambda: defaultdict(Fraction))
    flows: dict[tuple[str, str], Fraction] = defaultdict(Fraction)
    for r in records:
        us = _overlap_us(r, since, until)
        if not us:
            continue
        if desk is not None and r.desk != desk:     # another desk's: only what it borrowed from `desk`
            if r.borrowed.get(desk):
                bh = _f(r.borrowed[desk]) * Fraction(us, _H_US)
                flows[(desk, r.desk)] += bh
                if by is GroupBy.DESK:
                    acc[desk]["lent"] += bh
            continue
        if r.pool not in rates:
            raise ValueError(f"no rate for pool {r.pool!r} (record {r.job_id}); configured pools: {sorted(rates)}")
        h = Fraction(us, _H_US)
        gh = _f(r.gpus) * h
        key = {GroupBy.DESK: r.desk, GroupBy.JOB: r.job_id, GroupBy.MODEL: r.model or "(none)"}[by]
        a = acc[key]
        a["serving" if r.kind is WorkKind.SERVING else "batch"] += gh
        if r.preempted:
            a["preempted"] += gh
        a["cost"] += gh * _f(rates[r.pool])
        for lender, g in r.borrowed.items():
            bh = _f(g) * h
            a["borrowed"] += bh
            flows[(lender, r.desk)] += bh
            if by is GroupBy.DESK:
                acc[lender]["lent"] += bh
    rows = tuple(ChargeRow(k, v["batch"], v["serving"], v["borrowed"], v["lent"], v["preempted"], v["cost"])
                 for k, v in sorted(acc.items()))
    total = ChargeRow("TOTAL", sum((r.batch_gpu_h for r in rows), Fraction(0)),
                      sum((r.serving_gpu_h for r in rows), Fraction(0)),
                      sum((r.borrowed_gpu_h for r in rows), Fraction(0)), sum((r.lent_gpu_h for r in rows), Fraction(0)),
                      sum((r.preempted_gpu_h for r in rows), Fraction(0)), sum((r.cost for r in rows), Fraction(0)))
    return ChargebackReport(by, since, until, rows,
                            total, tuple(Flow(a, b, g) for (a, b), g in sorted(flows.items())))


def reconcile(report: ChargebackReport, records: Iterable[UsageRecord]) -> bool:
    """Sum the records directly (no grouping) and compare, exactly, with the report's total."""
    gh = Fraction(0)
    for r in records:
        gh += _f(r.gpus) * Fraction(_overlap_us(r, report.since, report.until), _H_US)
    rows = sum((r.gpu_h for r in report.rows), Fraction(0))
    lent_ok = report.by is not GroupBy.DESK or report.total.lent_gpu_h == report.total.borrowed_gpu_h
    return gh == report.total.gpu_h == rows and lent_ok
