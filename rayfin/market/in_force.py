"""Which quotas are in force at a time `t`: the controller's question each cycle, answered purely.

The calendar says which window `t` lies in (`plan.window_at`) and when it ends (`next_switch`).
A switch that takes GPUs from a desk forces reclaim of that desk's work above its new quota, and
reclaimed work gets a preemption grace period. So that the desk that gains quota has it at the
boundary rather than a grace period later, the policy is shown the next window's quotas from
`switch - lead_s` (lead_s = the preemption grace):

    t in [window.start, switch - lead)   effective = window.name          phase NORMAL
    t in [switch - lead, switch)         effective = next window's name   phase RECLAIM_AHEAD

A reclaim decided at `switch - lead` gives its victims `now + grace = switch`: they leave at the
boundary. (Equivalently, `effective` is the calendar window in force at `t + lead_s`, when no
window is shorter than the lead.)

`QuotaClock` caches one answer until the next instant it can change (the reclaim start, then
the switch), so asking every cycle costs a comparison, not a calendar walk. Pure: the clock
is passed in; nothing here imports Ray.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Mapping

from rayfin.market.calendar import MarketCalendar
from rayfin.market.plan import QuotaPlan, Window, WindowName, next_switch, quotas_in, serving_gpus_in, window_at
from rayfin.policy.model import DeskQuota


class Phase(str, Enum):
    NORMAL = "normal"                  # the window's own quotas
    RECLAIM_AHEAD = "reclaim_ahead"    # the next window's quotas, one lead ahead of its start


@dataclass(frozen=True)
class InForce:
    """The answer at `at`: the calendar's window, the quotas the policy applies and the next switch."""

    at: datetime
    window: Window                      # the calendar's window at `at`
    effective: WindowName               # whose quotas the policy applies now
    phase: Phase
    switch_at: datetime                 # when `window` ends
    next_window: WindowName             # the one that starts then
    reclaim_from: datetime              # switch_at - lead: from then on the next window's quotas apply
    quotas: Mapping[str, DeskQuota]     # each desk's quota in `effective`
    serving_gpus: Mapping[str, float]   # serving GPUs per desk in `effective` (desks that set them)
    next_quotas: Mapping[str, DeskQuota]
    next_serving_gpus: Mapping[str, float]

    @property
    def valid_until(self) -> datetime:
        """The next instant the answer can change."""
        return self.reclaim_from if self.phase is Phase.NORMAL else self.switch_at


def in_force(cal: MarketCalendar, plan: QuotaPlan, base: Mapping[str, DeskQuota], t: datetime,
             lead_s: float) -> InForce:
    """The quotas in force at `t` with reclaim `lead_s` ahead of each switch (see module docstring)."""
    w = window_at(cal, plan.bounds, t)
    switch, nxt = next_switch(cal, plan.bounds, t)
    # A window shorter than the lead starts its reclaim at its own start, never before it.
    reclaim_from = max(w.start, switch - timedelta(seconds=max(0.0, lead_s)))
    phase = Phase.RECLAIM_AHEAD if t >= reclaim_from else Phase.NORMAL
    effective = nxt if phase is Phase.RECLAIM_AHEAD else w.name
    return InForce(at=t, window=w, effective=effective, phase=phase, switch_at=switch, next_window=nxt,
                   reclaim_from=reclaim_from, quotas=quotas_in(plan, base, effective),
                   serving_gpus=serving_gpus_in(plan, effective), next_quotas=quotas_in(plan, base, nxt),
                   next_serving_gpus=serving_gpus_in(plan, nxt))


class QuotaClock:
    """`in_force` with its answers cached: the one for now and the next one, computed in advance,
    so the cycle that crosses a boundary (the reclaim start, the switch) does no calendar work
    (a walk over the library's sessions takes tens of milliseconds, far more on a loaded host).
    The answer after that is computed on the next call that crosses nothing. A clock that goes
    back (a test, a drill) recomputes."""

    def __init__(self, cal: MarketCalendar, plan: QuotaPlan, base: Mapping[str, DeskQuota], lead_s: float) -> None:
        self.cal, self.plan, self.base, self.lead_s = cal, plan, dict(base), float(lead_s)
        self._chain: list[InForce] = []    # contiguous: each answer's valid_until is the next one's `at`
        self._since: datetime | None = None

    def _compute(self, t: datetime) -> InForce:
        return in_force(self.cal, self.plan, self.base, t, self.lead_s)

    def at(self, t: datetime) -> InForce:
        chain = self._chain
        if chain and self._since is not None and self._since <= t:
            for k, f in enumerate(chain):
                if t < f.valid_until:
                    if k:                       # crossed a boundary: answer at once, extend later
                        del chain[:k]
                        self._since = f.at
                    elif len(chain) < 2:
                        chain.append(self._compute(f.valid_until))
                    return f
        f = self._compute(t)
        self._chain = [f, self._compute(f.valid_until)]
        self._since = t
        return f


def quota_fields(q: DeskQuota) -> dict[str, float | None]:
    """A desk quota as an audit event carries it."""
    return {"nominal": q.nominal, "borrowing_limit": q.borrowing_limit, "lending_limit": q.lending_limit,
            "weight": q.weight}


__all__ = ["InForce", "Phase", "QuotaClock", "in_force", "quota_fields"]
