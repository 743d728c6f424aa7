"""Quota arithmetic of serve_apps (no Ray): token bucket, broker grants, leases, the gate."""
import asyncio
import pathlib
import re

import pytest

from serve_apps.access import AccessPolicy, ModelEntry, bearer_token
from serve_apps.admission import LocalBroker, QuotaGate
from serve_apps.quota import (DeskBudget, LeaseRequest, Limit, LocalLease, QuotaSpec, Refusal, Shortage, TokenBucket,
                              central_share, decide_grant, lease_cap, local_share, permit_spare)
from tests.support.builders import Clock


def spec(rate=10.0, burst=5, in_flight=4, gpu=None, window=60.0) -> QuotaSpec:
    return QuotaSpec(requests_per_s=rate, burst=burst, max_in_flight=in_flight, gpu_seconds_per_window=gpu,
                     window_s=window)


# -- token bucket ------------------------------------------------------------------------------

@pytest.mark.parametrize("level, elapsed, want, taken, left", [
    (5.0, 0.0, 3, 3, 2.0),     # enough in the bucket
    (5.0, 0.0, 9, 5, 0.0),     # all there is
    (0.0, 0.25, 5, 2, 0.5),    # 0 + 0.25 s * 10/s = 2.5 -> 2 whole tokens, 0.5 left
    (4.0, 10.0, 1, 1, 4.0),    # refill stops at burst 5
    (0.5, 0.0, 1, 0, 0.5),     # never a fraction
])
def test_bucket_take(level, elapsed, want, taken, left):
    b = TokenBucket(rate=10.0, burst=5.0, level=level, updated_at=0.0)
    got, b2 = b.take(want, elapsed)
    assert got == taken
    assert b2.level == pytest.approx(left)
    assert b.level == level  # immutable


@pytest.mark.parametrize("level, need, wait", [
    (0.0, 1, 0.1),    # (1 - 0) / 10
    (0.75, 1, 0.025),  # (1 - 0.75) / 10
    (3.0, 1, 0.0),
])
def test_bucket_seconds_until(level, need, wait):
    assert TokenBucket(10.0, 5.0, level, 0.0).seconds_until(need, 0.0) == pytest.approx(wait)


@pytest.mark.parametrize("rate, burst, replicas, fraction, local, central", [
    (40.0, 20, 2, 0.75, (15.0, 7.0), (10.0, 6.0)),   # floor(20 * .75 / 2) = 7; 20 - 2 * 7 = 6
    (1.0, 2, 2, 0.75, (0.0, 0.0), (1.0, 2.0)),       # under one token each: broker only
    (10.0, 8, 4, 0.0, (0.0, 0.0), (10.0, 8.0)),
])
def test_quota_split_adds_up(rate, burst, replicas, fraction, local, central):
    s = spec(rate=rate, burst=burst)
    assert local_share(s, replicas, fraction) == pytest.approx(local)
    assert central_share(s, replicas, fraction) == pytest.approx(central)


@pytest.mark.parametrize("burst, in_flight, replicas, cap, spare", [
    (100, 64, 2, 25, 8),   # 100 // (2*2); min(8, 64 // 8)
    (5, 8, 2, 1, 1),       # 5 // 4; 8 // 8
    (1, 1, 4, 1, 0),       # at least one token; no spare permit
])
def test_lease_sizes(burst, in_flight, replicas, cap, spare):
    s = spec(burst=burst, in_flight=in_flight)
    assert lease_cap(s, replicas) == cap
    assert permit_spare(s, replicas) == spare


# -- broker grants -----------------------------------------------------------------------------

def grant(budget, now, **kw):
    return decide_grant(budget, LeaseRequest(desk="fx", **kw), now, token_ttl_s=1.0, holder_ttl_s=5.0)


def test_grant_tokens_then_retry_after():
    b = DeskBudget.new("fx", spec(rate=10, burst=5), now=0.0)
    g, b = grant(b, 0.0, replica="a", want_tokens=4)
    assert g.tokens == 4 and g.retry_after_s == 0
    g, b = grant(b, 0.0, replica="b", want_tokens=4)
    assert g.tokens == 1                              # 5 - 4
    assert g.retry_after_s == pytest.approx(0.1)      # empty bucket: (1 - 0) / 10


@pytest.mark.parametrize("a_target, b_target, b_gets", [
    (3, 3, 1),   # max_in_flight 4: a holds 3, b gets the last 1
    (4, 1, 0),
    (0, 4, 4),   # a gave everything back
])
def test_grant_permits_shared(a_target, b_target, b_gets):
    b = DeskBudget.new("fx", spec(in_flight=4), now=0.0)
    ga, b = grant(b, 0.0, replica="a", permits_target=a_target)
    gb, b = grant(b, 0.0, replica="b", permits_target=b_target)
    assert ga.permits_held == min(a_target, 4)
    assert gb.permits_held == b_gets
    assert b.permits_held() <= 4


def test_silent_replica_loses_its_permits():
    b = DeskBudget.new("fx", spec(in_flight=4), now=0.0)
    _, b = grant(b, 0.0, replica="a", permits_target=4)
    g, b = grant(b, 4.0, replica="b", permits_target=2)
    assert g.permits_held == 0              # a was seen 4 s ago: still holds all 4
    g, b = grant(b, 6.0, replica="b", permits_target=2)
    assert g.permits_held == 2              # a silent for 6 s > holder_ttl 5 s


def test_gpu_window_rolls():
    b = DeskBudget.new("fx", spec(gpu=10.0, window=60.0), now=30.0)
    g, b = grant(b, 30.0, replica="a", gpu_seconds=4.0)
    assert g.gpu_used == 4.0 and g.gpu_window_end == 60.0
    g, b = grant(b, 59.0, replica="b", gpu_seconds=7.0)
    assert g.gpu_used == 11.0
    g, b = grant(b, 61.0, replica="a")
    assert g.gpu_used == 0.0 and g.gpu_window_end == 120.0


# -- local lease and refusals ----------------------------------------------------------------

@pytest.mark.parametrize("retry_after_s, header", [(0.05, "1"), (1.0, "1"), (1.2, "2"), (30.0, "30")])
def test_retry_after_header_is_whole_seconds(retry_after_s, header):
    r = Refusal("fx", Limit.RATE, retry_after_s, "x")
    assert r.retry_after_header() == header
    assert r.body()["limit"] == "requests_per_s"


def test_lease_tokens_expire_after_ttl():
    s = spec(rate=10, burst=20)
    lease = LocalLease("fx", s, replicas=2, now=0.0)
    b = DeskBudget.new("fx", s, now=0.0)
    req = lease.request("a", 0.0, short=Shortage.TOKENS, waiters=3)
    assert req.want_tokens == 4                       # waiters + 1, under cap 20 // 4 = 5
    g, b = decide_grant(b, req, 0.0, token_ttl_s=1.0, holder_ttl_s=5.0)
    lease.apply(req, g, 0.0)
    assert lease.tokens(0.5) == 4
    assert lease.tokens(1.0) == 0                     # expired: cannot be spent later


def test_gpu_refusal_until_window_end():
    s = spec(gpu=1.0, window=60.0)
    lease = LocalLease("risk", s, replicas=1, now=0.0)
    lease.gpu_window_end = 60.0
    assert lease.gpu_refusal(10.0) is None
    lease.release(gpu_seconds=1.5)
    r = lease.gpu_refusal(10.0)
    assert r.limit is Limit.GPU_SECONDS and r.retry_after_s == pytest.approx(50.0)
    assert lease.gpu_refusal(60.0) is None            # the window rolled


def test_background_sync_takes_no_tokens():
    lease = LocalLease("fx", spec(), replicas=2, now=0.0)
    assert lease.request("a", 0.0, idle=True).want_tokens == 0
    assert lease.request("a", 0.0).want_tokens == 0


# -- the gate against a broker in the same loop -------------------------------------------------

def run(coro):
    return asyncio.run(coro)


def make_gates(specs, clock, replicas=2, local=0.0):
    broker = LocalBroker(specs, clock=clock, token_ttl_s=1.0, replicas=replicas, local_fraction=local)
    gates = [QuotaGate(specs, replicas=replicas, replica_id=f"r{i}", call_broker=broker.alease, clock=clock,
                       local_fraction=local)
             for i in range(replicas)]
    return broker, gates


@pytest.mark.parametrize("rate, burst, seconds, offered_per_s, local", [
    (10.0, 5, 3.0, 100, 0.0),   # 10x over quota, all from the broker
    (10.0, 5, 3.0, 100, 0.75),  # own shares 2 tokens each (floor(5 * .75 / 2)), broker the rest
    (20.0, 50, 2.0, 400, 0.5),
    (2.0, 1, 5.0, 40, 0.75),    # share under one token: broker only
])
def test_flood_never_exceeds_burst_plus_rate(rate, burst, seconds, offered_per_s, local):
    clock = Clock()
    specs = {"flood": spec(rate=rate, burst=burst, in_flight=1000)}
    _, gates = make_gates(specs, clock, local=local)

    async def flood():
        admitted = refused = 0
        dt = 1.0 / offered_per_s
        for i in range(int(seconds * offered_per_s)):
            g = gates[i % 2]
            r = await g.acquire("flood")
            if r is None:
                admitted += 1
                g.release("flood")
            else:
                refused += 1
                assert r.limit is Limit.RATE and r.retry_after_s > 0
            clock.advance(dt)
        return admitted, refused

    admitted, refused = run(flood())
    allowed = burst + rate * seconds
    assert admitted <= allowed
    assert admitted >= 0.7 * allowed       # leases strand little: most of the quota is usable
    assert refused > 0


@pytest.mark.parametrize("local", [0.0, 0.75])
def test_quiet_desk_within_quota_is_never_refused(local):
    clock = Clock()
    specs = {"quiet": spec(rate=20, burst=10, in_flight=8), "flood": spec(rate=10, burst=5, in_flight=8)}
    _, gates = make_gates(specs, clock, local=local)

    async def go():
        quiet_refused = 0
        for step in range(400):               # 4 s in 10 ms steps
            for _ in range(10):               # flood: 1000/s
                g = gates[step % 2]
                if await g.acquire("flood") is None:
                    g.release("flood")
            if step % 10 == 0:                # quiet: 10/s, half its quota
                g = gates[(step // 10) % 2]
                r = await g.acquire("quiet")
                quiet_refused += r is not None
                if r is None:
                    g.release("quiet")
            clock.advance(0.01)
        return quiet_refused

    assert run(go()) == 0


def test_in_flight_held_across_replicas():
    clock = Clock()
    specs = {"fx": spec(rate=1000, burst=1000, in_flight=4)}
    broker, gates = make_gates(specs, clock)

    async def go():
        results = [await gates[i % 2].acquire("fx") for i in range(6)]
        return results

    results = run(go())
    admitted = [r for r in results if r is None]
    refused = [r for r in results if r is not None]
    assert len(admitted) == 4
    assert {r.limit for r in refused} == {Limit.IN_FLIGHT}
    assert broker.budgets["fx"].permits_held() <= 4


def test_broker_down_leaves_the_own_share():
    clock = Clock()
    s = spec(rate=10, burst=4, in_flight=8)

    async def broken(_reqs):
        raise ConnectionError("broker gone")

    gate = QuotaGate({"fx": s}, replicas=2, replica_id="r0", call_broker=broken, clock=clock, local_fraction=0.5)

    async def go():
        out = []
        for _ in range(5):
            r = await gate.acquire("fx")
            out.append(r is None)
            if r is None:
                gate.release("fx")
        return out

    assert sum(run(go())) == 1               # own share: floor(4 * 0.5 / 2) = 1 token
    assert gate.broker_errors > 0


# -- access --------------------------------------------------------------------------------------

def policy():
    import hashlib
    h = lambda t: hashlib.sha256(t.encode()).hexdigest()  # noqa: E731
    return AccessPolicy(
        credentials=(("fx", h("fx-t")), ("risk", h("risk-t")), ("equities", h("eq-t"))),
        models=(ModelEntry("pricer", "option_pricer", "fx", True), ModelEntry("fraud", "fraud_scorer", "risk", False)),
        grants=(("fx", ()), ("risk", ()), ("equities", ("fraud",))),
    )


@pytest.mark.parametrize("token, desk", [("fx-t", "fx"), ("risk-t", "risk"), ("nope", None), ("", None), (None, None)])
def test_authenticate(token, desk):
    assert policy().authenticate(token) == desk


@pytest.mark.parametrize("desk, model, ok", [
    ("fx", "pricer", True),        # public
    ("fx", "fraud", False),        # private to risk
    ("risk", "fraud", True),       # owner
    ("equities", "fraud", True),   # listed in desks[].models
])
def test_may_call(desk, model, ok):
    p = policy()
    assert p.may_call(desk, p.model(model)) is ok
    assert (model in [m.name for m in p.callable_models(desk)]) is ok


def test_policy_roundtrips_as_plain_data():
    p = policy()
    assert AccessPolicy.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), (None, None), ("", None),
])
def test_bearer_token(header, token):
    assert bearer_token(header) == token


ADMISSION = ["quota", "admission", "access", "edge", "edge_asgi", "haproxy_edge", "ingress", "schemas"]


@pytest.mark.parametrize("module", ADMISSION)
def test_decision_code_does_not_import_ray(module):
    src = (pathlib.Path(__file__).resolve().parents[2] / "serve_apps" / f"{module}.py").read_text()
    assert not re.search(r"^\s*(import|from) ray(\.|\s|$)", src, re.MULTILINE)


def test_admission_imports_neither_ray_nor_serve():
    """Importing the admission modules, what they import included, loads no Ray (a fresh
    interpreter: this one may have imported Ray for other tests)."""
    import subprocess
    import sys

    code = ("import sys; " + "; ".join(f"import serve_apps.{m}" for m in ADMISSION) +
            "; bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')); print(bad); "
            "sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=pathlib.Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_small_desk_is_not_starved_by_a_token_fetched_ahead():
    """Burst 2 over 2 replicas (one token per lease): replica a must not lease the desk's second
    token ahead, or the desk's second request, landing on replica b, is refused within quota."""
    clock = Clock()
    broker = LocalBroker({"rates": spec(rate=1.0, burst=2, in_flight=8)}, replicas=2, local_fraction=0.75,
                         clock=clock)

    async def call(reqs):
        return broker.lease(reqs)

    async def go():
        a, b = (QuotaGate({"rates": spec(rate=1.0, burst=2, in_flight=8)}, replicas=2, replica_id=r,
                          call_broker=call, clock=clock, local_fraction=0.75) for r in "ab")
        first = await a.acquire("rates")
        await asyncio.sleep(0.01)               # let any prefetch run
        second = await b.acquire("rates")
        third = await b.acquire("rates")
        return first, second, third

    first, second, third = run(go())
    assert first is None and second is None     # both within the burst of 2
    assert third is not None and third.limit is Limit.RATE


@pytest.mark.parametrize("rate_sent, calls_expected", [
    (20.0, False),   # within the replica's own share (30/s, burst 15): the broker is never asked
    (45.0, True),    # beyond it: the replica leases ahead from the broker's share
])
def test_a_desk_within_its_local_share_never_calls_the_broker(rate_sent, calls_expected):
    clock = Clock()
    quota = {"quiet": spec(rate=40.0, burst=20, in_flight=64)}
    broker = LocalBroker(quota, replicas=1, local_fraction=0.75, clock=clock)

    async def go():
        gate = QuotaGate(quota, replicas=1, replica_id="r", call_broker=broker.alease, clock=clock,
                         local_fraction=0.75, permits_local=True)
        admitted = 0
        for _ in range(int(rate_sent * 5)):          # five seconds of steady arrivals
            clock.advance(1.0 / rate_sent)
            admitted += await gate.acquire("quiet") is None
            gate.release("quiet")
            await asyncio.sleep(0)                   # let a prefetch, if any, run
        return gate.broker_calls, admitted

    calls, admitted = run(go())
    assert admitted >= min(rate_sent, 40.0) * 5 - 1
    assert (calls > 0) is calls_expected
