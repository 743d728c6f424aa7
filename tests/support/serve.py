"""The edge filter (serve_apps/edge.py) with two desks, fx and rates, and a public model of fx's."""
from __future__ import annotations

from rayfin.config import hash_token
from serve_apps.access import AccessPolicy, ModelEntry
from serve_apps.edge import EdgeFilter
from serve_apps.quota import QuotaSpec


def policy() -> AccessPolicy:
    return AccessPolicy(credentials=(("fx", hash_token("fx-token")), ("rates", hash_token("rates-token"))),
                        models=(ModelEntry(name="pricer", owner="fx", kind="option_pricer", public=True),),
                        grants=())


def edge(clock, fx=(10.0, 5), rates=(2.0, 1)) -> EdgeFilter:
    quotas = {"fx": QuotaSpec(requests_per_s=fx[0], burst=fx[1], max_in_flight=8),
              "rates": QuotaSpec(requests_per_s=rates[0], burst=rates[1], max_in_flight=8)}
    return EdgeFilter(quotas, policy().authenticate, clock=clock)


def policy_ctx(load: float, target: int, now: float, state=None, max_replicas: int = 10):
    """What Serve passes a custom autoscaling policy each tick (serve_apps/autoscaling_policy.py),
    built by hand: no Ray cluster. Target ongoing requests 2, min replicas 1."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(get_target_ongoing_requests=lambda: 2.0)
    return SimpleNamespace(total_num_requests=load, target_num_replicas=target, current_num_replicas=target,
                           capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=max_replicas,
                           policy_state=state or {}, current_time=now, config=cfg)
