"""The quota broker: one Serve replica holding every desk's central budget.

Gateway replicas lease tokens and in-flight permits from it in small chunks (serve_apps.gate),
so it sees a few calls per second per desk and replica, not one per request. It holds only the
central part of each quota (the rest is split over the gateway replicas' own buckets). Serve
restarts it if it dies; a fresh broker starts every desk with a full central bucket (at most
one extra central burst), and gateways live on their own shares while it is unreachable.
"""
from __future__ import annotations

from ray import serve

from serve_apps.gate import LocalBroker
from serve_apps.quota import Grant, LeaseRequest, QuotaSpec


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class QuotaBroker:
    def __init__(self, specs: dict[str, dict], replicas: int = 1, local_fraction: float = 0.0,
                 token_ttl_s: float = 1.0, holder_ttl_s: float = 5.0) -> None:
        self._broker = LocalBroker({d: QuotaSpec(**s) for d, s in specs.items()}, replicas=replicas,
                                   local_fraction=local_fraction, token_ttl_s=token_ttl_s, holder_ttl_s=holder_ttl_s)

    async def lease(self, requests: list[LeaseRequest]) -> list[Grant]:
        return self._broker.lease(requests)

    async def snapshot(self) -> dict:
        return self._broker.snapshot()
