"""Quota arithmetic over a cohort of desks (Kueue-style nominal + borrowing + lending).

    usage(d)      GPUs desk d holds now (batch jobs + serving replicas, fractions count)
    borrowed(d)   = max(0, usage(d) - nominal(d))
    lendable(e)   = min(max(0, nominal(e) - usage(e)), lending_limit(e))   (no limit: all unused)
    pool_spare    = capacity - sum(nominal)          GPUs no desk is guaranteed
    borrowable    = pool_spare + sum_e lendable(e) - sum_d borrowed(d)

A request of g GPUs by desk d fits its quota when
    usage(d) + g <= nominal(d) + borrowing_limit(d)                  (its own ceiling)
and the part above nominal, max(0, usage(d) + g - nominal(d)) - borrowed(d), fits `borrowable`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from rayfin.policy.model import DeskQuota
from rayfin.reasons import ReasonCode


@dataclass(frozen=True)
class QuotaCheck:
    fits: bool
    borrowed: float          # GPUs of this request above nominal
    reason: str
    code: ReasonCode = ReasonCode.WITHIN_NOMINAL


def borrowable(desks: Mapping[str, DeskQuota], usage: Mapping[str, float], capacity: float,
               exclude: str | None = None) -> float:
    """GPUs the cohort can still lend to desk `exclude` (its own unused nominal is not 'lent')."""
    spare = max(0.0, capacity - sum(d.nominal for d in desks.values()))
    lendable = 0.0
    borrowed_now = 0.0
    for name, d in desks.items():
        u = usage.get(name, 0.0)
        borrowed_now += max(0.0, u - d.nominal)
        if name == exclude:
            continue
        unused = max(0.0, d.nominal - u)
        lendable += unused if d.lending_limit is None else min(unused, d.lending_limit)
    return spare + lendable - borrowed_now


def check_quota(desk: DeskQuota, gpus: float, desks: Mapping[str, DeskQuota],
                usage: Mapping[str, float], capacity: float) -> QuotaCheck:
    u = usage.get(desk.name, 0.0)
    ceiling = desk.max_gpus
    if u + gpus > ceiling + 1e-9:
        return QuotaCheck(False, 0.0, f"desk {desk.name} holds {u:g} GPUs; +{gpus:g} would exceed its ceiling "
                                      f"{ceiling:g} (nominal {desk.nominal:g} + borrowing {desk.borrowing_limit:g})",
                          ReasonCode.OVER_CEILING)
    above = max(0.0, u + gpus - desk.nominal) - max(0.0, u - desk.nominal)
    if above <= 1e-9:
        return QuotaCheck(True, 0.0, f"within nominal quota ({u + gpus:g}/{desk.nominal:g})")
    can = borrowable(desks, usage, capacity, exclude=desk.name)
    if above > can + 1e-9:
        return QuotaCheck(False, 0.0, f"desk {desk.name} needs to borrow {above:g} GPUs above nominal "
                                      f"{desk.nominal:g} but the other desks lend only {max(can, 0):g} now",
                          ReasonCode.CANNOT_BORROW)
    return QuotaCheck(True, above, f"borrows {above:g} GPUs above nominal {desk.nominal:g} "
                                   f"({max(can, 0):g} lendable)", ReasonCode.BORROWING)


def why_never_fits(desk: DeskQuota, gpus: float, pool_capacity: float) -> tuple[ReasonCode, str] | None:
    """Why a request can never run (refuse at once), as (code, text), or None."""
    if gpus > desk.max_gpus:
        return ReasonCode.OVER_CEILING, (f"desk {desk.name} may hold at most {desk.max_gpus:g} GPUs (nominal "
                                       f"{desk.nominal:g} + borrowing {desk.borrowing_limit:g}); asked for {gpus:g}")
    if gpus > pool_capacity:
        return ReasonCode.POOL_TOO_SMALL, (f"desk {desk.name}'s pools {sorted(desk.pools)} have {pool_capacity:g} "
                                           f"GPUs in all; asked for {gpus:g}")
    return None


def never_fits(desk: DeskQuota, gpus: float, pool_capacity: float) -> str | None:
    """Why a request can never run (refuse at once), or None."""
    why = why_never_fits(desk, gpus, pool_capacity)
    return None if why is None else why[1]
