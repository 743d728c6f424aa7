"""The edge filter (serve_apps/edge.py, no Ray): what Serve's proxy sheds before any replica."""
import math
import random

import pytest

from serve_apps.edge import edge_body
from serve_apps.quota import Limit, QuotaSpec
from tests.support.builders import Clock
from tests.support.serve import edge, policy


@pytest.mark.parametrize("token", [None, "", "not-a-desk", "fx-token-but-longer"])
def test_requests_it_cannot_attribute_pass_through(token):
    clock = Clock()
    e = edge(clock)
    assert all(e.check(token) is None for _ in range(100))   # the replica answers them (401)
    assert e.stats() == {"passed": {"fx": 0, "rates": 0}, "refused": {"fx": 0, "rates": 0}}


@pytest.mark.parametrize("rate, burst, offered_per_s, seconds", [
    (10.0, 5, 100.0, 3.0),    # 10x flood
    (5.0, 5, 50.0, 20.0),     # the benchmark's flood desk
    (2.0, 1, 1000.0, 1.0),
])
def test_flood_passes_at_most_burst_plus_rate_and_the_rest_is_refused(rate, burst, offered_per_s, seconds):
    clock = Clock()
    e = edge(clock, fx=(rate, burst))
    passed = refused = 0
    n = int(offered_per_s * seconds)
    for i in range(n):
        clock.t = 1000.0 + i / offered_per_s
        r = e.check("fx-token")
        if r is None:
            passed += 1
        else:
            refused += 1
            assert r.limit is Limit.RATE and r.desk == "fx"
    span = (n - 1) / offered_per_s
    assert passed <= burst + rate * span + 1e-9
    assert passed >= burst + math.floor(rate * span) - 1   # and it does not shed more than that
    assert refused == n - passed


@pytest.mark.parametrize("rate, burst, seed", [(10.0, 5, 1), (40.0, 20, 2), (1.0, 1, 3)])
def test_a_desk_within_its_rate_and_burst_is_never_refused(rate, burst, seed):
    """Poisson arrivals at half the rate, clipped so no window exceeds burst + rate * T."""
    clock = Clock()
    e = edge(clock, fx=(rate, burst))
    rng = random.Random(seed)
    t = 1000.0
    for _ in range(2000):
        t += max(rng.expovariate(rate / 2), 1.0 / rate)   # never faster than the rate
        clock.t = t
        assert e.check("fx-token") is None


def test_one_desk_flooding_leaves_the_other_desks_bucket_alone():
    clock = Clock()
    e = edge(clock, fx=(10.0, 5), rates=(2.0, 2))
    for _ in range(1000):
        e.check("fx-token")
    assert e.check("rates-token") is None and e.check("rates-token") is None
    assert e.check("rates-token") is not None          # its own burst of 2, no more
    assert e.stats()["refused"]["fx"] == 995


@pytest.mark.parametrize("level_after_burst_s, retry", [(0.0, 0.1), (0.05, 0.05), (0.099, 0.001)])
def test_retry_after_is_the_time_to_the_next_token(level_after_burst_s, retry):
    clock = Clock()
    e = edge(clock, fx=(10.0, 5))
    for _ in range(5):
        assert e.check("fx-token") is None
    clock.advance(level_after_burst_s)
    r = e.check("fx-token")
    assert r is not None and r.retry_after_s == pytest.approx(retry, abs=1e-6)
    assert r.retry_after_header() == "1"                 # whole seconds, never 0
    clock.advance(retry)
    assert e.check("fx-token") is None                    # exactly when it said


def test_edge_body_is_the_replicas_body_plus_where():
    clock = Clock()
    e = edge(clock, rates=(2.0, 1))
    e.check("rates-token")
    r = e.check("rates-token")
    body = edge_body(r)
    assert body == {**r.body(), "refused_by": "edge"}
    assert body["error"] == "quota_exceeded" and body["limit"] == "requests_per_s" and body["desk"] == "rates"
    assert body["retry_after_s"] == pytest.approx(0.5)


def test_edge_settings_cross_serves_json_kwargs_unchanged():
    """Serve's request-router kwargs must be JSON: the settings go over as JSON and come back equal."""
    import json

    from serve_apps.edge import EdgeSettings

    quotas = {"fx": QuotaSpec(requests_per_s=10.0, burst=5, max_in_flight=8),
              "rates": QuotaSpec(requests_per_s=2.0, burst=1, max_in_flight=4, gpu_seconds_per_window=3.5, window_s=30.0)}
    settings = EdgeSettings(policy(), quotas)
    back = EdgeSettings.from_wire(json.loads(json.dumps(settings.to_wire())))
    assert back == settings
    assert back.filter().check("rates-token") is None and back.filter().specs == quotas
