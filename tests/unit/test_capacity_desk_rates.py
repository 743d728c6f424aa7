"""The capacity loop's desk request rates: the quota broker's admitted-request counts, read once
per forecast bin, become requests/s that the planner forecasts (a fake adapter, no Ray)."""
from __future__ import annotations

import asyncio

import pytest

from rayfin.controller.capacity import CapacityLoop, CountReading, DeskCounts, request_rates
from tests.support.builders import controller_env

AUTOSCALING = {"forecast": {"bin_s": 60, "season_s": 3600, "week_seasons": 1},
               "pools": {"risk": {"lead_time_s": 120, "max_gpus": 8}}}


class _Adapter:
    def __init__(self) -> None:
        self.sent: list = []

    def apply(self, request) -> None:
        self.sent.append(request)


class _Counts:
    """What the broker would answer, settable by the test; `fail` raises like a broker down."""

    def __init__(self, since: float) -> None:
        self.value: DeskCounts | None = DeskCounts(since, {})
        self.since = since
        self.fail = False

    def set(self, **counts: int) -> None:
        self.value = DeskCounts(self.since, counts)

    def __call__(self) -> DeskCounts | None:
        if self.fail:
            raise RuntimeError("broker not answering")
        return self.value


def test_two_count_readings_become_rates_and_the_request_carries_desk_forecasts(tmp_path):
    core, _, clock, ledger = controller_env(tmp_path, autoscaling=AUTOSCALING)
    counts, adapter, recorded = _Counts(since=clock() - 1000.0), _Adapter(), []
    loop = CapacityLoop(core.config, ledger, adapter, record=recorded.append, read_counts=counts)
    counts.set(fx=500, equities=40)
    loop.step({}, clock())              # an old broker's first reading: a baseline, no rates yet
    assert adapter.sent[-1].desks == {}
    clock.advance(60.0)
    counts.set(fx=620, equities=40, risk=30)
    loop.step({}, clock())
    req = adapter.sent[-1]
    assert {d: f.actual for d, f in req.desks.items()} == pytest.approx({"fx": 2.0, "equities": 0.0, "risk": 0.5})
    assert all(f.forecast >= 0 for f in req.desks.values()) and recorded[-1] is req
    clock.advance(60.0)
    counts.set(fx=680, equities=40, risk=30)
    loop.step({}, clock())
    assert adapter.sent[-1].desks["fx"].actual == pytest.approx(1.0)


def test_no_serving_or_a_failing_broker_gives_no_rates_and_scheduling_goes_on(tmp_path):
    core, _, clock, ledger = controller_env(tmp_path, autoscaling=AUTOSCALING)
    counts, adapter = _Counts(since=clock() - 30.0), _Adapter()
    counts.value = None                 # Serve not up
    loop = CapacityLoop(core.config, ledger, adapter, record=lambda r: None, read_counts=counts)
    loop.step({"risk": 2.0}, clock())
    counts.fail = True                  # the broker does not answer: logged, not raised
    clock.advance(60.0)
    loop.step({"risk": 2.0}, clock())
    assert [r.desks for r in adapter.sent] == [{}, {}] and adapter.sent[-1].pools["risk"].demand_gpus == 2.0


def test_request_rates_of_a_new_broker_and_of_a_restarted_one():
    now = 1000.0
    fresh = DeskCounts(since=now - 20.0, counts={"fx": 10})
    assert request_rates(None, fresh, now, max_gap_s=120.0) == {"fx": 0.5}     # since it started
    old = DeskCounts(since=now - 600.0, counts={"fx": 10})
    assert request_rates(None, old, now, max_gap_s=120.0) == {}                # too long ago: baseline
    before = CountReading(now - 60.0, DeskCounts(since=now - 600.0, counts={"fx": 900}))
    restarted = DeskCounts(since=now - 40.0, counts={"fx": 20})                 # counts from zero again
    assert request_rates(before, restarted, now, max_gap_s=120.0) == {"fx": 0.5}
    assert request_rates(before, DeskCounts(before.counts.since, {"fx": 960}), now, 120.0) == {"fx": 1.0}


def test_the_broker_adds_up_each_replicas_admitted_requests_per_desk():
    from serve_apps.admission import LocalBroker, QuotaGate
    from serve_apps.quota import LeaseRequest, QuotaSpec

    spec = QuotaSpec(requests_per_s=1000.0, burst=1000, max_in_flight=100)
    broker = LocalBroker({"fx": spec, "equities": spec}, replicas=2, wall=lambda: 123.0)
    assert broker.request_counts() == {"since": 123.0, "counts": {"fx": 0, "equities": 0}}

    async def admit(gate: QuotaGate, desk: str, n: int) -> None:
        for _ in range(n):
            assert await gate.acquire(desk) is None
            gate.release(desk)
        await gate.sync_idle(force=True)          # the next lease call carries the count

    gates = [QuotaGate({"fx": spec, "equities": spec}, replicas=2, replica_id=f"r{i}", call_broker=broker.alease)
             for i in range(2)]

    async def main() -> None:
        await admit(gates[0], "fx", 5)
        await admit(gates[1], "fx", 3)
        await admit(gates[1], "equities", 2)

    asyncio.run(main())
    assert gates[0].admitted["fx"] == 5
    assert broker.request_counts()["counts"] == {"fx": 8, "equities": 2}
    # a late or repeated report of an older count never takes the total back
    broker.lease([LeaseRequest(desk="fx", replica="r0", admitted=1)])
    assert broker.request_counts()["counts"]["fx"] == 8
