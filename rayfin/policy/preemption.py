"""Whom to preempt so that a job a desk is entitled to can start: a plan, no side effects.

A job is *entitled* when it fits the desk's nominal quota counting only the desk's work of
equal or higher priority. When such a job finds no free GPUs, the planner looks for victims:

- borrowed work: running jobs of other desks whose usage is above their nominal (Kueue's
  "reclaim within cohort"), as long as their desk is still borrowing when picked;
- lower-priority work of the same desk (priority preemption within the desk's nominal);
- GPUs already coming free: jobs whose preemption was decided in an earlier cycle
  (`preempt_deadline` set). They cost nothing and are used first, so the scheduler never
  preempts twice for one need.

Victims must free GPUs *where the job can run*: the planner searches domains (islands, then
nodes, racks, the whole cluster for the bandwidth-aware strategy; the whole cluster only for
first fit). In each domain it takes candidates lowest priority first, then most recently
started, until free + freed GPUs hold the job; then drops every victim that turns out not to be
needed. Across domains it keeps the plan whose victims have the lowest top priority, then the
fewest victims, then the most recently started (its oldest victim started last).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence


from placement.gang import FreeIndex
from placement.topology import Layout, LinkLevel
from rayfin.policy.model import DeskQuota, PendingJob, RunningJob

_EPS = 1e-9
_LEVELS = tuple(LinkLevel)
_UNSEEN: "int | None" = -1   # _memo: not classified yet (kinds are 0, 1 or None)


@dataclass
class ReclaimPlan:
    level: LinkLevel | None
    placement: list[tuple[int, int]]            # (island index, GPUs) once the victims are gone
    reserve: list[tuple[int, int]]              # free GPUs to hold for the job meanwhile
    draining: list[RunningJob] = field(default_factory=list)   # already being preempted
    victims: list[RunningJob] = field(default_factory=list)    # to preempt now
    lost: float = 0.0                                          # summed victim cost (work lost)

    @property
    def score(self) -> tuple[int, int, float, float, int]:
        """Lower is better: lowest top priority, fewest victims, least work lost (when victims are
        costed), most recently started, then fewest GPUs already coming free taken from others."""
        top = max((int(v.priority) for v in self.victims), default=-1)
        oldest = min((v.started_at for v in self.victims), default=0.0)
        return (top, len(self.victims), self.lost, -oldest, len(self.draining))


@dataclass
class ReclaimContext:
    """What the planner reads from the cycle (it never mutates any of it)."""

    layout: Layout
    index: FreeIndex
    on_island: Sequence[Sequence[RunningJob]]   # island index -> running jobs touching it
    usage: Mapping[str, float]                  # projected usage per desk
    desks: Mapping[str, DeskQuota]
    taken: set[str]                             # job ids already claimed this cycle
    pending_ids: set[str]
    reclaim: bool
    priority_preemption: bool
    best_fit: bool
    victim_cost: Callable[[RunningJob], float] | None = None   # equal-priority victims, lower first (per GPU)
    victim_ok: Callable[[RunningJob], bool] | None = None      # extra victims (LAS: a lower queue)
    placed: Mapping[str, Sequence[tuple[int, float]]] | None = None   # job id -> (island index, GPUs); None: built
    gpus_at: Mapping[str, Mapping[int, float]] | None = None   # job id -> GPUs per island index; None: built
    own_outside: bool = True    # need_own may be met by own-desk victims outside the domain (False: only
                                # the GPUs they free inside it count)
    free: list[float] = field(init=False, default_factory=list)   # index.free as Python floats (read_free)
    whole: list[int] = field(init=False, default_factory=list)     # whole free GPUs per island (index.whole)
    def read_free(self) -> None:
        """Copy the free map out of numpy once per plan (a numpy scalar per look-up is slow), and
        only when a plan is made: a context is built for many jobs that never get that far."""
        self.free = self.index.free.tolist()
        self.whole = [int(f + _EPS) for f in self.free]
        if self.placed is None:
            self.placed = placed_by_index(self.layout, (v for jobs in self.on_island for v in jobs))
        if self.gpus_at is None:
            self.gpus_at = gpus_by_island(self.placed)


def placed_by_index(layout: Layout, running: Iterable[RunningJob]) -> dict[str, list[tuple[int, float]]]:
    """Each running job's placement as (island index, GPUs), islands the layout lacks left out:
    translated once per cycle rather than at every look-up of a plan."""
    at = layout.index.get
    return {v.job_id: [(i, gg) for isl, gg in v.placement if (i := at(isl)) is not None] for v in running}


def gpus_by_island(placed: Mapping[str, Sequence[tuple[int, float]]]) -> dict[str, dict[int, float]]:
    """Each job's GPUs per island index (a job listing an island twice: summed), from `placed`."""
    out: dict[str, dict[int, float]] = {}
    for job_id, where in placed.items():
        on: dict[int, float] = {}
        for i, gg in where:
            on[i] = on.get(i, 0) + gg
        out[job_id] = on
    return out


def plan_reclaim(ctx: ReclaimContext, job: PendingJob, need_own: float,
                 start: LinkLevel, stop: LinkLevel = LinkLevel.INTER_RACK) -> ReclaimPlan | None:
    """Cheapest plan that lets `job` start, or None. `need_own`: GPUs of the job's own desk's
    lower-priority work that must go for the job to fit the desk's quota."""
    desk = ctx.desks[job.desk]
    ctx.read_free()
    in_pool, domains = ctx.layout.pool_domains(desk.pools)   # memoised there: they depend on the layout only
    kind = _memo(_classifier(ctx, job))
    if not ctx.best_fit:
        return _plan_in(ctx, job, in_pool, kind, need_own, None)
    # A domain is a subset of the pool: if even the whole pool cannot be freed for the job, no
    # island, node or rack can (checked once here instead of in every domain of every level).
    if _plan_in(ctx, job, in_pool, kind, need_own, LinkLevel.INTER_RACK, feasible_only=True) is None:
        return None
    # With own victims outside the domain allowed, a domain's own floor does not bound its plan.
    bounds = _IslandBounds(ctx, in_pool, kind, exact=need_own <= _EPS or not ctx.own_outside)
    for level in _LEVELS:
        if level < start or level > stop:
            continue
        best = _best_domain(ctx, job, need_own, level, kind, bounds, domains[level])
        if best is not None:
            return best
    return None


def _best_domain(ctx: ReclaimContext, job: PendingJob, need_own: float, level: LinkLevel, kind: "Kind",
                 bounds: "_IslandBounds", domains: Sequence[Sequence[int]]) -> ReclaimPlan | None:
    """The plan of the first domain (in `domains` order) with the lowest score; or, as soon as
    one is found, the first domain that needs no new victim (nothing can do better).

    Domains are tried best floor first (`_IslandBounds.score_floor`), and the search stops at the
    first floor above the best score found: a plan at or above its floor cannot win. Ties keep
    the earlier domain, so the result is the one the plain in-order scan returns. Domains that
    need no new victim have the lowest floor of all, so they come first, in order."""
    g = job.gpus
    ranked = bounds.rank(domains, g)
    best: ReclaimPlan | None = None
    best_pos = -1
    for floor, pos in ranked:
        if best is not None and floor > best.score[:4]:
            break
        plan = _plan_in(ctx, job, domains[pos], kind, need_own, level)
        if plan is None:
            continue
        if best is None or (plan.score, pos) < (best.score, best_pos):
            best, best_pos = plan, pos
        if plan.score[0] == -1 and not plan.victims:
            break   # nothing new preempted: the first such domain in order wins
    return best


class _IslandBounds:
    """Per island, what any plan in a domain containing it can at best achieve, computed once per
    `plan_reclaim` (one pass over the running jobs of the pool) so most domains are ruled out
    without building a plan:

    - reach: free GPUs plus every candidate's GPUs on the island. A domain whose reach is below
      the job's size cannot hold it (the same test `_plan_in` makes).
    - a floor on `ReclaimPlan.score[:4]` per domain, componentwise (so also in tuple order):
      no new victim is needed only when the domain's free GPUs plus the GPUs already coming free
      in it hold the job (the planner takes those first); otherwise at least one victim, whose
      priority, cost (x GPUs) and start time are bounded by the best over the domain's new-victim
      candidates. `_plan_in` adds own-desk victims from outside the domain when the job must
      free its desk's own lower-priority work (need_own > 0); the floor is then not used.
    A domain whose floor is above the best plan's score cannot replace it (a plan wins only when
    strictly lower), so skipping it changes no decision."""

    def __init__(self, ctx: ReclaimContext, in_pool: Sequence[int], kind: "Kind", exact: bool):
        gpus_at = ctx.gpus_at or {}
        cost = ctx.victim_cost
        self.exact = exact
        self._capacity = ctx.layout.capacity
        n = len(self._capacity)
        inf = float("inf")
        # per island index (islands outside the pool keep these and are never asked about)
        self._reach: list[float] = [0.0] * n      # free + every candidate's GPUs
        self._free0: list[int] = [0] * n          # free + GPUs already coming free
        self._prio: list[float] = [inf] * n       # lowest priority of a new-victim candidate
        self._lost: list[float] = [inf] * n       # lowest cost x GPUs of one
        self._start: list[float] = [-inf] * n     # latest start of one
        free, whole, on_island = ctx.free, ctx.whole, ctx.on_island
        for i in in_pool:
            reach, k0, prio, lost, start = float(whole[i]), 0.0, inf, inf, -inf
            for v in on_island[i]:
                k = kind(v)
                if k is None:
                    continue
                here = gpus_at[v.job_id][i]
                reach += here
                if k == 0:
                    k0 += here
                    continue
                p = int(v.priority)
                if p < prio:
                    prio = p
                c = cost(v) * v.gpus if cost is not None else 0.0
                if c < lost:
                    lost = c
                if v.started_at > start:
                    start = v.started_at
            self._reach[i], self._prio[i], self._lost[i], self._start[i] = reach, prio, lost, start
            self._free0[i] = int(free[i] + k0 + _EPS)

    def rank(self, domains: Sequence[Sequence[int]], g: int) -> list[tuple[tuple[float, float, float, float], int]]:
        """(floor, position) of each domain that could hold `g` GPUs (capacity and reach), lowest
        floor first, then position."""
        cap, reach, free0, prio, lost, start = (self._capacity.__getitem__, self._reach.__getitem__,
                                                self._free0.__getitem__, self._prio.__getitem__,
                                                self._lost.__getitem__, self._start.__getitem__)
        out: list[tuple[tuple[float, float, float, float], int]] = []
        if domains and all(len(dom) == 1 for dom in domains):   # islands: the same floors, without the sums
            for pos, (i,) in enumerate(domains):
                if cap(i) < g or reach(i) < g:
                    continue
                if not self.exact:
                    out.append(((-1, 0, 0.0, -float("inf")), pos))
                elif free0(i) >= g:
                    out.append(((-1, 0, 0.0, -0.0), pos))
                else:
                    out.append(((prio(i), 1, lost(i), -start(i)), pos))
            out.sort()
            return out
        for pos, dom in enumerate(domains):
            if sum(map(cap, dom)) < g or sum(map(reach, dom)) < g:
                continue
            if not self.exact:
                floor: tuple[float, float, float, float] = (-1, 0, 0.0, -float("inf"))
            elif sum(map(free0, dom)) >= g:
                floor = (-1, 0, 0.0, -0.0)
            else:
                floor = (min(map(prio, dom)), 1, min(map(lost, dom)), -max(map(start, dom)))
            out.append((floor, pos))
        out.sort()
        return out


def _memo(kind: Callable[[RunningJob], int | None]) -> Callable[[RunningJob], int | None]:
    """`kind` of each running job computed once per plan (it reads only what the plan never changes)."""
    seen: dict[str, int | None] = {}
    get = seen.get

    def cached(v: RunningJob) -> int | None:
        k = get(v.job_id, _UNSEEN)
        if k is _UNSEEN:
            k = seen[v.job_id] = kind(v)
        return k
    return cached


def _classifier(ctx: ReclaimContext, job: PendingJob) -> Callable[[RunningJob], int | None]:
    """0: GPUs already coming free; 1: a new victim; None: not a candidate."""
    def kind(v: RunningJob) -> int | None:
        if not v.preemptible or v.job_id in ctx.taken:
            return None
        if v.preempt_deadline is not None:
            mine = v.preempted_for is None or v.preempted_for == job.job_id or v.preempted_for not in ctx.pending_ids
            return 0 if mine else None
        if ctx.victim_ok is not None and v.priority <= job.priority and ctx.victim_ok(v):
            return 1
        if v.desk == job.desk:
            return 1 if ctx.priority_preemption and v.priority < job.priority else None
        if ctx.reclaim:
            other = ctx.desks.get(v.desk)
            if other is not None and ctx.usage.get(v.desk, 0.0) > other.nominal + _EPS:
                return 1
        return None
    return kind


Kind = Callable[[RunningJob], "int | None"]   # 0: GPUs already coming free; 1: a new victim; None: neither
Chosen = list[tuple[int, RunningJob]]           # (kind, job) of the candidates taken so far


def _plan_in(ctx: ReclaimContext, job: PendingJob, dom: Sequence[int], kind: Kind, need_own: float,
             level: LinkLevel | None, feasible_only: bool = False) -> ReclaimPlan | None:
    """The plan in one domain, or None. `feasible_only`: stop once the answer is known to be a
    plan, and return an empty one (the whole-pool test of `plan_reclaim` needs no more)."""
    g = job.gpus
    in_dom = set(dom)
    cands: dict[str, tuple[int, RunningJob]] = {}
    bound: float = sum(map(ctx.whole.__getitem__, dom))
    placed = ctx.placed or {}
    for i in dom:
        for v in ctx.on_island[i]:
            if v.job_id in cands:
                continue
            k = kind(v)
            if k is not None:
                cands[v.job_id] = (k, v)
                bound += sum(gg for j, gg in placed[v.job_id] if j in in_dom)
    if bound < g:
        return None
    cost = ctx.victim_cost or (lambda v: 0.0)
    order = sorted(cands.values(), key=lambda kv: (kv[0], int(kv[1].priority), cost(kv[1]), -kv[1].started_at,
                                                   kv[1].job_id))
    if need_own > _EPS and ctx.own_outside:   # own lower-priority work elsewhere also counts toward the quota need
        seen = set(cands)
        extra = [(1, v) for isl in range(len(ctx.on_island)) if isl not in in_dom for v in ctx.on_island[isl]
                 if v.job_id not in seen and kind(v) == 1 and v.desk == job.desk]
        order += sorted({v.job_id: (k, v) for k, v in extra}.values(),
                        key=lambda kv: (int(kv[1].priority), cost(kv[1]), -kv[1].started_at, kv[1].job_id))
    chosen: list[tuple[int, RunningJob]] = []
    removed: dict[str, float] = {}
    tally = _Tally(ctx, dom, in_dom, job.desk, job.unit)
    for k, v in order:
        if tally.satisfied(g, need_own):
            break
        if k == 1 and v.desk != job.desk:
            other = ctx.desks.get(v.desk)     # None: a desk no longer configured owns nothing
            nominal = other.nominal if other is not None else 0.0
            if ctx.usage.get(v.desk, 0.0) - removed.get(v.desk, 0.0) <= nominal + _EPS:
                continue   # its desk is no longer borrowing
        chosen.append((k, v))
        tally.add(v, +1)
        removed[v.desk] = removed.get(v.desk, 0.0) + v.gpus
    if not tally.satisfied(g, need_own):
        return None
    if feasible_only:
        return ReclaimPlan(level, [], [])
    for pos in range(len(chosen) - 1, -1, -1):   # drop victims the plan turns out not to need
        v = chosen[pos][1]
        tally.add(v, -1)
        if tally.satisfied(g, need_own):
            del chosen[pos]
        else:
            tally.add(v, +1)
    avail, extra_whole = _avail(ctx, dom, in_dom, chosen, job.unit)
    placement = _fill(ctx, dom, avail, g, level)
    reserve = []
    for i, take in placement:
        from_free = max(0, take - extra_whole.get(i, 0))
        if from_free:
            reserve.append((i, from_free))
    victims = [v for k, v in chosen if k == 1]
    lost = sum(cost(v) * v.gpus for v in victims) if ctx.victim_cost is not None else 0.0
    return ReclaimPlan(level, placement, reserve, [v for k, v in chosen if k == 0], victims, lost)


def _whole_units(gpus: int, unit: int) -> int:
    """The GPUs of an island a gang of `unit`-GPU workers can use: whole workers only (a worker
    never spans islands), so a reclaim frees enough for the gang in one round."""
    return gpus if unit <= 1 else (gpus // unit) * unit


def _avail(ctx: ReclaimContext, dom: Sequence[int], in_dom: set[int], chosen: Chosen,
           unit: int = 1) -> tuple[dict[int, int], dict[int, int]]:
    """Per island of the domain: GPUs the job can use once `chosen` stop (in whole workers), and
    how many of the island's whole GPUs those victims free."""
    extra: dict[int, float] = {}
    for _, v in chosen:
        for i, gg in (ctx.placed or {})[v.job_id]:
            if i in in_dom:
                extra[i] = extra.get(i, 0.0) + gg
    avail: dict[int, int] = {}
    extra_whole: dict[int, int] = {}
    for i in dom:
        f = ctx.free[i]
        raw = int(f + extra.get(i, 0.0) + _EPS)
        avail[i] = _whole_units(raw, unit)
        extra_whole[i] = raw - int(f + _EPS)
    return avail, extra_whole


class _Tally:
    """Free + freed whole GPUs of a domain and the job's own desk's freed GPUs, kept up to date as
    victims are added and dropped (the same sums as `_avail` / `_satisfied`, without recounting
    the whole domain at every step)."""

    def __init__(self, ctx: ReclaimContext, dom: Sequence[int], in_dom: set[int], desk: str, unit: int = 1):
        self.ctx, self.in_dom, self.desk, self.unit = ctx, in_dom, desk, unit
        self.free = ctx.free
        self.extra: dict[int, float] = {}
        whole = map(ctx.whole.__getitem__, dom)   # int(free + eps) per island (read_free)
        self.total = sum(whole) if unit <= 1 else sum(_whole_units(w, unit) for w in whole)
        self.own = 0.0

    def add(self, v: RunningJob, sign: int) -> None:
        if v.desk == self.desk:   # own_outside False: only what it frees in the domain counts
            self.own += sign * (v.gpus if self.ctx.own_outside else
                                sum(gg for i, gg in (self.ctx.placed or {})[v.job_id] if i in self.in_dom))
        for i, gg in (self.ctx.placed or {})[v.job_id]:
            if i in self.in_dom:
                e = self.extra.get(i, 0.0)
                before = _whole_units(int(self.free[i] + e + _EPS), self.unit)
                e += sign * gg
                self.extra[i] = e
                self.total += _whole_units(int(self.free[i] + e + _EPS), self.unit) - before

    def satisfied(self, g: int, need_own: float) -> bool:
        return self.own + _EPS >= need_own and self.total >= g


def _satisfied(ctx: ReclaimContext, dom: Sequence[int], in_dom: set[int], chosen: Chosen, g: int, need_own: float,
               desk: str, unit: int = 1) -> bool:
    placed = ctx.placed or {}
    own = sum(v.gpus if ctx.own_outside else sum(gg for i, gg in placed[v.job_id] if i in in_dom)
              for _, v in chosen if v.desk == desk)
    if own + _EPS < need_own:
        return False
    avail, _ = _avail(ctx, dom, in_dom, chosen, unit)
    return sum(avail.values()) >= g


def _fill(ctx: ReclaimContext, dom: Sequence[int], avail: dict[int, int], g: int,
          level: LinkLevel | None) -> list[tuple[int, int]]:
    lay = ctx.layout
    if level is None:    # first fit: islands in configuration order
        order = sorted(dom)
    else:                # emptiest nodes first, their emptiest islands first
        node_avail: dict[int, int] = {}
        for i in dom:
            node_avail[lay.island_node[i]] = node_avail.get(lay.island_node[i], 0) + avail[i]
        order = sorted(dom, key=lambda i: (-node_avail[lay.island_node[i]], lay.island_node[i], -avail[i], i))
    need, out = g, []
    for i in order:
        if avail[i] <= 0:
            continue
        take = min(avail[i], need)
        out.append((i, take))
        need -= take
        if need == 0:
            break
    return out
