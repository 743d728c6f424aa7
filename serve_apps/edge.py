"""Load shedding at the edge: a desk far over its request rate is refused before admission.

No Ray here: `serve_apps.edge_asgi` hosts the filter in an ASGI middleware (of each replica's
own HTTP server with HAProxy ingress, of Serve's proxy otherwise), and `serve_apps.desk_router`
in Serve's request router (where the proxy runs no middleware). The exact quota decision stays
in admission (serve_apps/admission.py); the edge only sheds what is certainly over quota, so
that a flooding desk's excess never costs a replica call (benchmarks.serve_quota's `cpu_cores`
measures what it saves; docs/serving.md).

Each desk gets one full-size token bucket (its whole `requests_per_s` and `burst`) in every
edge (one per proxy per model application). So:

- a desk that stays within its rate and burst is never refused here: from a full bucket, the
  edge passes every request of any run of length T up to `burst + rate * T`, and a desk within
  quota sends no more than that;
- what the edge passes is still admitted or refused exactly by the replicas; the edge can only
  refuse earlier, never admit more;
- under a flood of k x quota, the edge passes about 1/k of it (burst + rate * T) and answers
  the rest itself with the same 429 body and a `Retry-After` computed from its bucket.

A request the edge cannot attribute to a desk (no or unknown credential, not HTTP) passes
through: the replica answers it (401, or whatever the call is).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

from serve_apps.access import AccessPolicy
from serve_apps.quota import Limit, QuotaSpec, Refusal, TokenBucket

EDGE = "edge"


@dataclass(frozen=True)
class EdgeSettings:
    """What an edge filter is built from. `to_wire` / `from_wire` cross Serve's request-router
    kwargs, which must be JSON."""

    access: AccessPolicy
    quotas: Mapping[str, QuotaSpec]

    def to_wire(self) -> dict[str, Any]:
        return {"access": self.access.to_dict(), "quotas": {d: asdict(q) for d, q in self.quotas.items()}}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "EdgeSettings":
        quotas = {d: QuotaSpec(requests_per_s=float(q["requests_per_s"]), burst=int(q["burst"]),
                               max_in_flight=int(q["max_in_flight"]),
                               gpu_seconds_per_window=q.get("gpu_seconds_per_window"),
                               window_s=float(q.get("window_s", 60.0)))
                  for d, q in data["quotas"].items()}
        return cls(access=AccessPolicy.from_dict(data["access"]), quotas=quotas)

    def filter(self) -> "EdgeFilter":
        return EdgeFilter(self.quotas, self.access.authenticate)


class EdgeFilter:
    """Per-desk token buckets in front of the replicas. Thread-safe: in Serve's proxy the ASGI
    middleware (main event loop) and the request router (its own loop thread) share one."""

    def __init__(self, quotas: Mapping[str, QuotaSpec], authenticate: Callable[[str | None], str | None], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._authenticate = authenticate
        self._clock = clock
        now = clock()
        self.specs = dict(quotas)
        self.buckets = {d: TokenBucket.full(s.requests_per_s, float(s.burst), now) for d, s in quotas.items()}
        self.passed: dict[str, int] = {d: 0 for d in quotas}
        self.refused: dict[str, int] = {d: 0 for d in quotas}
        self._lock = threading.Lock()

    def check(self, token: str | None) -> Refusal | None:
        """None: pass the request on to a replica. A Refusal: answer 429 here."""
        return self.screen(token)[1]

    def screen(self, token: str | None) -> tuple[str | None, Refusal | None]:
        """(the token's desk or None, `check`'s answer): the middleware hands the desk on to the
        gate of its own process, which then need not hash the token again."""
        desk = self._authenticate(token)
        if desk is None or desk not in self.buckets:
            return desk, None
        return desk, self._take(desk)

    def _take(self, desk: str) -> Refusal | None:
        with self._lock:
            now = self._clock()
            taken, self.buckets[desk] = self.buckets[desk].take(1, now)
            if taken:
                self.passed[desk] += 1
                return None
            self.refused[desk] += 1
            wait = self.buckets[desk].seconds_until(1.0, now)
        spec = self.specs[desk]
        wait = 1.0 if math.isinf(wait) else max(wait, 1e-3)
        return Refusal(desk, Limit.RATE, wait, f"desk {desk!r} is over {spec.requests_per_s:g} requests/s "
                       f"(burst {spec.burst}); retry after {wait:.3f}s")

    def stats(self) -> dict:
        return {"passed": dict(self.passed), "refused": dict(self.refused)}


def edge_body(refusal: Refusal) -> dict:
    """The 429 body the edge sends: the replicas' body, plus where it was refused."""
    return {**refusal.body(), "refused_by": EDGE}
