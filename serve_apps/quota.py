"""Per-desk serving quotas: token-bucket and lease arithmetic, with no Ray and no clock.

One budget, several gateway replicas
------------------------------------
Each desk has one central budget (`DeskBudget`, held by the quota broker) and every gateway
replica holds a small local lease of it (`LocalLease`):

    broker (one)                     gateway replica (R of them)
    DeskBudget.bucket  --tokens-->   LocalLease.tokens   (spent 1 per request, expire after ttl)
    DeskBudget.permits --permits-->  LocalLease.permits  (>= in-flight requests of this replica)
    DeskBudget.gpu_used <--report--  LocalLease.gpu_unreported

A request is admitted only with a token the broker already took out of the desk's bucket, so
tokens admitted can never exceed tokens issued. Worst-case overshoot (see docs/serving.md):

- requests/s: from a full bucket, admitted(T) <= burst + rate * T exactly (no overshoot). Over
  any sliding window of length T, admitted <= burst + rate * T + min(R * lease_cap, rate * ttl),
  because tokens leased just before the window may be spent inside it.
- in-flight: sum of permits held <= max_in_flight (no overshoot); permits idle in one replica
  can refuse another early, at most (R - 1) * permit_spare below the limit.
- GPU-seconds: charged after the fact, so the window may overrun by the cost of requests already
  admitted plus what replicas have not reported yet (one sync interval of each replica).

Every function takes `now` (seconds, monotonic) from the caller: tests drive the clock.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Mapping


class Limit(str, Enum):
    """Which limit refused a request (the `limit` field of a 429 body)."""

    RATE = "requests_per_s"
    IN_FLIGHT = "max_in_flight"
    GPU_SECONDS = "gpu_seconds_per_window"
    MODEL_CAPACITY = "model_queue"


@dataclass(frozen=True)
class QuotaSpec:
    """A desk's serving quota, as the quota code needs it (built from config.ModelQuota)."""

    requests_per_s: float
    burst: int
    max_in_flight: int
    gpu_seconds_per_window: float | None = None
    window_s: float = 60.0

    @classmethod
    def from_config(cls, q) -> "QuotaSpec":
        return cls(requests_per_s=q.requests_per_s, burst=q.burst, max_in_flight=q.max_in_flight,
                   gpu_seconds_per_window=q.gpu_seconds_per_window, window_s=q.window_s)


def lease_cap(spec: QuotaSpec, replicas: int) -> int:
    """Most tokens one replica may hold: half the burst shared out, at least 1.

    Keeping R * cap <= burst / 2 bounds both the sliding-window overshoot and the tokens that
    sit stranded in one replica while another is refused.
    """
    return max(1, int(spec.burst // (2 * max(1, replicas))))


def local_share(spec: QuotaSpec, replicas: int, fraction: float) -> tuple[float, float]:
    """(rate, burst) each replica admits from its own bucket, asking no one.

    `fraction` of the desk's quota is split evenly over the R replicas; the broker keeps the
    rest (`central_share`) for whichever replica needs more. The buckets add up to the quota,
    so the bound admitted <= burst + rate * T holds with no broker on the path at all. A desk
    whose share would be under one whole token per replica is served by the broker alone.
    """
    r = max(1, replicas)
    burst = math.floor(spec.burst * fraction / r)
    if fraction <= 0 or burst < 1:
        return 0.0, 0.0
    return spec.requests_per_s * fraction / r, float(burst)


def central_share(spec: QuotaSpec, replicas: int, fraction: float) -> tuple[float, float]:
    rate, burst = local_share(spec, replicas, fraction)
    r = max(1, replicas)
    return spec.requests_per_s - r * rate, spec.burst - r * burst


def local_permits(spec: QuotaSpec, replicas: int) -> int:
    """In-flight permits a replica owns outright when permits are local (no broker involved).

    `floor(max_in_flight / R)`, at least 1 so every replica can serve: the permits of all R
    replicas add up to at most `max(max_in_flight, R)`.
    """
    return max(1, int(spec.max_in_flight // max(1, replicas)))


def permit_spare(spec: QuotaSpec, replicas: int) -> int:
    """Idle in-flight permits a replica keeps so that most requests need no broker call."""
    return max(0, min(8, spec.max_in_flight // (4 * max(1, replicas))))


# --------------------------------------------------------------------------------------------
# Token bucket


@dataclass(frozen=True)
class TokenBucket:
    rate: float
    burst: float
    level: float
    updated_at: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> "TokenBucket":
        return cls(rate=rate, burst=burst, level=float(burst), updated_at=now)

    # Both run on every request of a gated replica and its edge: they construct the new bucket
    # directly (dataclasses.replace costs about five times as much).
    def refill(self, now: float) -> "TokenBucket":
        if now <= self.updated_at:
            return self
        return TokenBucket(self.rate, self.burst, self.available(now), now)

    def take(self, want: int, now: float) -> tuple[int, "TokenBucket"]:
        """Take up to `want` whole tokens; returns (taken, new bucket)."""
        level = self.available(now)
        taken = max(0, min(int(want), int(math.floor(level + 1e-9))))
        if taken == 0 and now <= self.updated_at:
            return 0, self
        return taken, TokenBucket(self.rate, self.burst, level - taken, max(now, self.updated_at))

    def available(self, now: float) -> float:
        """The level `refill(now)` would have, without making a new bucket."""
        if now <= self.updated_at:
            return self.level
        return min(self.burst, self.level + (now - self.updated_at) * self.rate)

    def seconds_until(self, tokens: float, now: float) -> float:
        """Time until `tokens` are in the bucket (0 if they already are; inf if never)."""
        b = self.refill(now)
        if b.level >= tokens:
            return 0.0
        if self.rate <= 0 or tokens > self.burst:
            return math.inf
        return (tokens - b.level) / self.rate


# --------------------------------------------------------------------------------------------
# Broker side: one DeskBudget per desk


@dataclass(frozen=True)
class LeaseRequest:
    """What a gateway replica asks the broker for, for one desk.

    `permits_target` is absolute (how many permits the replica wants to hold after this call),
    so a lost or repeated message cannot leak permits.
    """

    desk: str
    replica: str
    want_tokens: int = 0
    permits_target: int = 0
    gpu_seconds: float = 0.0  # consumed since the last report
    admitted: int = 0         # requests this replica admitted for the desk so far (monotonic)


@dataclass(frozen=True)
class Grant:
    desk: str
    tokens: int
    token_ttl_s: float
    permits_held: int
    gpu_used: float            # GPU-seconds charged in the current window, all replicas
    gpu_window_end: float      # broker clock; see `LocalLease.apply`
    retry_after_s: float       # until the next token when fewer than asked were granted
    now: float                 # broker clock at decision time


@dataclass(frozen=True)
class DeskBudget:
    desk: str
    spec: QuotaSpec
    bucket: TokenBucket
    permits: Mapping[str, tuple[int, float]] = field(default_factory=dict)  # replica -> (held, last_seen)
    gpu_window_start: float = 0.0
    gpu_used: float = 0.0

    @classmethod
    def new(cls, desk: str, spec: QuotaSpec, now: float, *, replicas: int = 1,
            local_fraction: float = 0.0) -> "DeskBudget":
        rate, burst = central_share(spec, replicas, local_fraction)
        return cls(desk=desk, spec=spec, bucket=TokenBucket.full(rate, burst, now),
                   gpu_window_start=_window_start(now, spec.window_s))

    def permits_held(self) -> int:
        return sum(h for h, _ in self.permits.values())


def _window_start(now: float, window_s: float) -> float:
    return math.floor(now / window_s) * window_s


def decide_grant(budget: DeskBudget, req: LeaseRequest, now: float, *, token_ttl_s: float,
                 holder_ttl_s: float) -> tuple[Grant, DeskBudget]:
    """Apply one lease request to a desk's budget. Pure: returns the grant and the new budget.

    Permits of replicas silent for more than `holder_ttl_s` are taken back (a dead replica
    must not hold the desk's in-flight budget forever).
    """
    spec = budget.spec
    permits = {r: v for r, v in budget.permits.items() if r == req.replica or now - v[1] <= holder_ttl_s}
    held_now = permits.get(req.replica, (0, now))[0]
    others = sum(h for r, (h, _) in permits.items() if r != req.replica)
    target = max(0, req.permits_target)
    if target <= held_now:
        held = target
    else:
        held = held_now + min(target - held_now, max(0, spec.max_in_flight - others - held_now))
    if held > 0:
        permits[req.replica] = (held, now)
    else:
        permits.pop(req.replica, None)

    taken, bucket = budget.bucket.take(req.want_tokens, now)
    retry = bucket.seconds_until(1.0, now) if taken < req.want_tokens else 0.0

    start, used = budget.gpu_window_start, budget.gpu_used
    if now >= start + spec.window_s:
        start, used = _window_start(now, spec.window_s), 0.0
    used += max(0.0, req.gpu_seconds)

    new = replace(budget, bucket=bucket, permits=permits, gpu_window_start=start, gpu_used=used)
    grant = Grant(desk=budget.desk, tokens=taken, token_ttl_s=token_ttl_s, permits_held=held,
                  gpu_used=used, gpu_window_end=start + spec.window_s, retry_after_s=retry, now=now)
    return grant, new


# --------------------------------------------------------------------------------------------
# Gateway side: one LocalLease per desk per replica


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused with 429; `body()` is the JSON the client gets."""

    desk: str
    limit: Limit
    retry_after_s: float
    detail: str

    def retry_after_header(self) -> str:
        # Retry-After is whole seconds (RFC 9110); never 0, or clients spin.
        return str(max(1, math.ceil(self.retry_after_s - 1e-9)))

    def body(self) -> dict:
        return {"error": "quota_exceeded", "desk": self.desk, "limit": self.limit.value,
                "retry_after_s": round(self.retry_after_s, 3), "message": self.detail}


class Shortage(str, Enum):
    NONE = "none"
    TOKENS = "tokens"
    PERMITS = "permits"


_LN2 = math.log(2)


class LocalLease:
    """A gateway replica's share of one desk's budget. Single-threaded (one event loop)."""

    RATE_HALF_LIFE_S = 1.0
    LEASE_HORIZON_S = 0.5    # lease about this much of the recent local rate at once (< token ttl)
    PERMIT_RETRY_S = 0.02    # after the broker had no permit free, ask again no sooner

    def __init__(self, desk: str, spec: QuotaSpec, replicas: int, now: float, local_fraction: float = 0.0,
                 permits_local: bool = False) -> None:
        self.desk, self.spec = desk, spec
        # permits_local: this replica owns floor(max_in_flight / R) permits outright and never asks
        # the broker for any, so a request is never held up by a broker call for a permit.
        self.permits_local = permits_local
        self.local = TokenBucket.full(*local_share(spec, replicas, local_fraction), now)
        self.cap = lease_cap(spec, replicas)
        self.spare = permit_spare(spec, replicas)
        self._chunks: list[list[float]] = []   # [expires_at, tokens], oldest first
        self.permits = local_permits(spec, replicas) if permits_local else 0
        self.in_use = 0
        self.gpu_used_known = 0.0
        self.gpu_unreported = 0.0
        self.gpu_window_end = now + spec.window_s
        self.tokens_blocked_until = 0.0
        self.permits_blocked_until = 0.0
        self._rate = 0.0
        self._rate_at = now
        self.last_sync = now

    # -- state ------------------------------------------------------------------------------
    def tokens(self, now: float) -> int:
        chunks = self._chunks
        if not chunks:
            return 0
        if any(c[0] <= now or c[1] <= 0 for c in chunks):     # rebuild only when one is gone
            chunks = self._chunks = [c for c in chunks if c[0] > now and c[1] > 0]
        return int(sum(c[1] for c in chunks))

    def observed_rate(self, now: float) -> float:
        if now <= self._rate_at:            # just noted (the hot path asks right after admitting)
            return self._rate
        return self._rate * 0.5 ** ((now - self._rate_at) / self.RATE_HALF_LIFE_S)

    def _note_arrival(self, now: float) -> None:
        # Exponentially decayed count, scaled to a rate: sum of 2^(-age/h) * ln2/h per arrival.
        self._rate = self.observed_rate(now) + _LN2 / self.RATE_HALF_LIFE_S
        self._rate_at = now

    def lease_target(self, now: float) -> int:
        return self._target(self.observed_rate(now))

    def _target(self, rate: float) -> int:
        return max(1, min(self.cap, math.ceil(rate * self.LEASE_HORIZON_S)))

    # -- decisions ------------------------------------------------------------------------------
    def gpu_refusal(self, now: float) -> Refusal | None:
        budget = self.spec.gpu_seconds_per_window
        if budget is None:
            return None
        if now >= self.gpu_window_end:  # window rolled; the broker will confirm on next sync
            return None
        used = self.gpu_used_known + self.gpu_unreported
        if used < budget:
            return None
        return Refusal(self.desk, Limit.GPU_SECONDS, self.gpu_window_end - now,
                       f"desk {self.desk!r} used {used:.3f} of {budget:g} GPU-seconds in this "
                       f"{self.spec.window_s:g}s window; retry when the window ends")

    def shortage(self, now: float) -> Shortage:
        if self.in_use >= self.permits:
            return Shortage.PERMITS
        if self.tokens(now) < 1 and self.local.available(now) < 1 - 1e-9:   # leased, else own share
            return Shortage.TOKENS
        return Shortage.NONE

    def blocked(self, short: Shortage, now: float) -> bool:
        """True when the broker said recently that it has nothing: refuse without asking."""
        if short is Shortage.TOKENS:
            return now < self.tokens_blocked_until
        if short is Shortage.PERMITS:
            return now < self.permits_blocked_until
        return False

    def refusal(self, short: Shortage, now: float) -> Refusal:
        if short is Shortage.PERMITS:
            return Refusal(self.desk, Limit.IN_FLIGHT, 1.0,
                           f"desk {self.desk!r} already has {self.spec.max_in_flight} requests in flight; "
                           "wait for one to finish")
        wait = min(max(self.tokens_blocked_until - now, 0.0), self.local.seconds_until(1.0, now))
        wait = max(wait, 1.0 / self.spec.requests_per_s)
        if math.isinf(wait):
            wait = 1.0
        return Refusal(self.desk, Limit.RATE, wait,
                       f"desk {self.desk!r} is over {self.spec.requests_per_s:g} requests/s "
                       f"(burst {self.spec.burst}); retry after {wait:.3f}s")

    def admit(self, now: float) -> None:
        """Spend one token and one permit; call only when `shortage(now)` is NONE. The token is a
        leased one if this replica holds any, else one of its own share (no remote call)."""
        self._note_arrival(now)
        chunks = self._chunks
        for i, c in enumerate(chunks):
            if c[0] > now and c[1] >= 1:
                c[1] -= 1
                if c[1] <= 0:               # spent: gone now, not rebuilt for by `tokens` later
                    del chunks[i]
                break
        else:
            _, self.local = self.local.take(1, now)
        self.in_use += 1

    def note_refused(self, now: float) -> None:
        self._note_arrival(now)

    def release(self, gpu_seconds: float = 0.0) -> None:
        self.in_use = max(0, self.in_use - 1)
        self.gpu_unreported += max(0.0, gpu_seconds)

    # -- talking to the broker -------------------------------------------------------------------
    def wants_prefetch(self, now: float) -> bool:
        """Lease ahead only when what this replica holds, leased tokens plus its own bucket,
        would not last the lease horizon, and only at a rate that spends two or more tokens per
        horizon: below it, a token fetched ahead sits in this replica while the desk's next
        request, landing on another replica, finds the broker empty (a burst-2 desk on 2
        replicas got 1 request). A desk within its local share so makes no broker call at all."""
        if now < self.tokens_blocked_until:
            return False
        rate = self.observed_rate(now)
        target = self._target(rate)
        if target < 2 or rate <= 0.5:       # cheap tests first: this runs on every admission
            return False
        held = self.tokens(now) + math.floor(self.local.available(now) + 1e-9)
        return held <= target // 2

    def needs_sync(self, now: float, idle_s: float, heartbeat_s: float = 1.0) -> bool:
        """Background sync: give back idle permits, report GPU use, keep the holding alive."""
        if self.permits_local:
            return self.gpu_unreported > 0 or (now - self.last_sync >= heartbeat_s and self.observed_rate(now) > 0.01)
        if self.gpu_unreported > 0 or self.permits > self.in_use + self.spare:
            return True
        if self.permits > 0 and now - self.last_sync >= heartbeat_s:
            return True
        return self.permits > 0 and self.observed_rate(now) * idle_s < 0.5

    def request(self, replica: str, now: float, *, short: Shortage = Shortage.NONE, waiters: int = 0,
                idle: bool = False, prefetch: bool = False) -> LeaseRequest:
        """What to ask the broker for. Tokens only when short of them or prefetching: a
        background sync must not take tokens from the bucket that may expire unused."""
        want = 0
        if short is Shortage.TOKENS:
            want = max(1, min(self.cap, max(self.lease_target(now), waiters + 1) - self.tokens(now)))
        elif prefetch and now >= self.tokens_blocked_until:
            want = max(0, min(self.cap, self.lease_target(now) - self.tokens(now)))
        spare = 0 if idle else self.spare
        target = self.in_use + spare + (max(1, waiters) if short is Shortage.PERMITS else 0)
        if self.permits_local:
            target = 0  # the broker holds none of this replica's permits
        return LeaseRequest(desk=self.desk, replica=replica, want_tokens=want,
                            permits_target=min(self.spec.max_in_flight, target),
                            gpu_seconds=self.gpu_unreported)

    def apply(self, req: LeaseRequest, grant: Grant, now: float) -> None:
        """Fold a broker reply in. Broker times are mapped onto our clock via `grant.now`."""
        self.last_sync = now
        self.gpu_unreported = max(0.0, self.gpu_unreported - req.gpu_seconds)
        self.gpu_used_known = grant.gpu_used
        self.gpu_window_end = now + (grant.gpu_window_end - grant.now)
        if grant.tokens > 0:
            self._chunks.append([now + grant.token_ttl_s, float(grant.tokens)])
        if grant.tokens < req.want_tokens and grant.tokens == 0:
            self.tokens_blocked_until = now + grant.retry_after_s
        if self.permits_local:
            return
        # Permits still in use stay ours even if the broker lost track of us (restart).
        self.permits = max(grant.permits_held, self.in_use)
        if req.permits_target > grant.permits_held:
            self.permits_blocked_until = now + self.PERMIT_RETRY_S
