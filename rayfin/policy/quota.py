"""Quota arithmetic over a cohort of desks (Kueue-style nominal + borrowing + lending).

    usage(d)      GPUs desk d holds now (batch jobs + serving replicas, fractions count)
    borrowed(d)   = max(0, usage(d) - nominal(d))
    lendable(e)   = min(max(0, nominal(e) - usage(e)), lending_limit(e))   (no limit: all unused)
    pool_spare    = capacity - sum(nominal)          GPUs no desk is guaranteed
    borrowable    = pool_spare + sum_e lendable(e) - sum_d borrowed(d)

A request of g GPUs by desk d fits its quota when
    usage(d) + g <= nominal(d) + borrowing_limit(d)                  (its own ceiling)
and the part above nominal, max(0, usage(d) + g - nominal(d)) - borrowed(d), fits `borrowable`.

Who lent it (`attribute_lenders`, for chargeback): the `above` GPUs of an admission are split,
at admission, over the snapshot the cycle sees then:
    1. unowned spare first: spare_left = max(0, pool_spare - sum_d borrowed(d)), credited to
       `UNOWNED` (GPUs no desk is guaranteed: nobody lent them);
    2. then the other desks e with lendable(e) > 0 whose pools hold the placement (they lent
       the GPUs the job physically sits on), in proportion to lendable(e);
    3. then the remaining other desks, in proportion to lendable(e).
Each share is at most the lender's lendable(e), so within its lending_limit. Shares are exact
multiples of 1e-6 GPU (largest remainder, ties by desk name) and sum to `above` exactly; the
result is sorted by lender name. Anything the tiers cannot cover (not possible after
`check_quota` passed) goes to `UNOWNED`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping

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


UNOWNED = "(unowned)"       # the lender of GPUs no desk is guaranteed (capacity - sum of nominals)
Lenders = tuple[tuple[str, float], ...]   # (lender desk, GPUs), sorted by desk
_QUANTUM = 10 ** 6            # shares are whole micro-GPUs


def lendable(desk: DeskQuota, usage: float) -> float:
    """GPUs of `desk`'s unused nominal it may lend now (capped by its lending_limit)."""
    unused = max(0.0, desk.nominal - usage)
    return unused if desk.lending_limit is None else min(unused, max(0.0, desk.lending_limit))


def _split(amount: int, weights: Mapping[str, int]) -> dict[str, int]:
    """`amount` micro-GPUs over integer `weights` in proportion, largest remainder (ties by
    name); sums to `amount` exactly. Integer arithmetic only (it runs inside the cycle)."""
    total = sum(weights.values())
    out: dict[str, int] = {}
    rem: dict[str, int] = {}
    for k, w in weights.items():
        out[k], rem[k] = divmod(amount * w, total)
    left = amount - sum(out.values())
    if left:
        for k in sorted(rem, key=lambda k: (-rem[k], k))[:left]:
            out[k] += 1
    return out


def attribute_lenders(borrower: str, above: float, desks: Mapping[str, DeskQuota], usage: Mapping[str, float],
                      capacity: float, placed_pools: Collection[str] = ()) -> Lenders:
    """Which desks lend the `above` GPUs desk `borrower` takes above its nominal (module
    docstring): `usage` as before this admission, `placed_pools` the pools of its placement."""
    need = round(above * _QUANTUM)
    if need <= 0:
        return ()
    got: dict[str, int] = {}
    borrowed_now = sum(max(0.0, usage.get(n, 0.0) - d.nominal) for n, d in desks.items())
    spare = max(0.0, capacity - sum(d.nominal for d in desks.values()) - borrowed_now)
    take = min(need, round(spare * _QUANTUM))
    if take > 0:
        got[UNOWNED] = take
        need -= take
    can = {n: round(lendable(d, usage.get(n, 0.0)) * _QUANTUM) for n, d in desks.items() if n != borrower}
    pools = set(placed_pools)
    near = {n for n in can if not pools.isdisjoint(desks[n].pools)}
    for tier in (near, set(can)):
        weights = {n: can[n] for n in sorted(tier) if can[n] > 0}
        if need <= 0 or not weights:
            continue
        for n, g in _split(min(need, sum(weights.values())), weights).items():
            if g:
                got[n] = got.get(n, 0) + g
                can[n] -= g
                need -= g
    if need > 0:
        got[UNOWNED] = got.get(UNOWNED, 0) + need
    return tuple((n, g / _QUANTUM) for n, g in sorted(got.items()))


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
    if gpus > desk.ever_gpus:
        if desk.plan_ceiling is not None:
            return ReasonCode.OVER_CEILING, (f"desk {desk.name} may hold at most {desk.ever_gpus:g} GPUs in any "
                                           f"window of the quota plan; asked for {gpus:g}")
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
