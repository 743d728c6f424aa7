"""Policing of GPU use outside rayfin: pure classification (rows in, findings out) and the
controller's patrol step with a fake Ray side and the real core on FakeBackend."""
import pytest

from rayfin.config import PolicingConfig
from rayfin.controller.backend import FakeBackend
from rayfin.controller.core import ControllerCore
from rayfin.controller.ledger import SqliteLedger
from rayfin.controller.patrol import Patrol
from rayfin.controller.policing import Holder, Owners, find, gpus_of, outside_gpus
from tests.support.builders import Clock, config

RUNNER = "a" * 32                      # a runner actor of fx's job fx-0000abcd, generation 0
OWNERS = Owners(rayfin_groups=frozenset({"pg-rayfin"}),
                actors={RUNNER: ("job-fx-0000abcd~0", "rayfin-desk-fx"), "b" * 32: ("loner", "default")},
                islands={"node-a": "n0-i0", "node-b": "n0-i1"}, serving_apps=frozenset({"model-pricer"}))


@pytest.mark.parametrize("holder, flagged", [
    (Holder("task", "t1", {"GPU": 4.0, "CPU": 1.0}, node_id="node-a"), True),                 # plain GPU task
    (Holder("task", "t2", {"CPU": 1.0}), False),                                             # no guarded resource
    (Holder("task", "t3", {"rayfin_pool_risk": 1.0}), True),                                 # desk pool resource
    (Holder("task", "t4", {"rayfin_island_n0_i1": 0.5}), True),                              # island resource
    (Holder("task", "t5", {"GPU_group_pg-rayfin": 1.0}, placement_group_id="pg-rayfin"), False),  # in a job's group
    (Holder("actor", "a1", {"GPU_group_pg-x": 1.0}, placement_group_id="pg-x"), True),       # in a foreign group
    (Holder("placement_group", "pg-rayfin", {"GPU": 4.0}, name="rayfin-job-fx-0000abcd~0"), False),
    (Holder("placement_group", "pg-x", {"GPU": 4.0}, name="my-own-group"), True),
    (Holder("placement_group", "pg-y", {"CPU": 4.0}, name="cpu-only"), False),
    (Holder("actor", "s1", {"GPU": 0.25, "rayfin_island_n0_i0": 0.25}, name="SERVE_REPLICA::rayfin-model-p#1",
            namespace="serve"), False),                                                       # a rayfin model replica
    (Holder("actor", "s2", {"GPU": 1.0}, name="SERVE_REPLICA::someone-else#1", namespace="serve"), True),
    (Holder("actor", "s3", {"GPU": 0.25}, name="SERVE_REPLICA::model-pricer#pricer#x", namespace="serve"), False),
    (Holder("actor", "s4", {"GPU": 1.0}, name="SERVE_REPLICA::rayfin-model-p#1", namespace="mine"), True),
])
def test_what_is_flagged(holder, flagged):
    assert bool(find([holder], OWNERS, now=10.0)) is flagged


def test_attribution_and_accounting():
    rogue = Holder("task", "t1", {"GPU": 4.0}, node_id="node-b", parent_actor_id=RUNNER, started_at=8.0)
    other = Holder("task", "t2", {"GPU": 1.0}, node_id="node-a", parent_actor_id="b" * 32)
    (f1,) = find([rogue], OWNERS, now=10.0)
    assert (f1.desk, f1.rayfin_job_id, f1.island, f1.gpus) == ("fx", "fx-0000abcd", "n0-i1", 4.0)
    assert "desk fx" in "; ".join(f1.reasons)
    (f2,) = find([other], OWNERS, now=10.0)
    assert (f2.desk, f2.rayfin_job_id) == ("", "")                       # not started by a rayfin job
    assert outside_gpus([f1, f2]) == {"n0-i1": 4.0, "n0-i0": 1.0}


def test_group_gpus_are_counted_once():
    assert gpus_of({"GPU_group_abc": 2.0, "GPU_group_0_abc": 1.0, "GPU_group_1_abc": 1.0}) == 2.0
    pg = find([Holder("placement_group", "abc", {"GPU": 2.0}, node_id="node-a")], OWNERS, 0.0)
    inside = find([Holder("actor", "x", {"GPU_group_abc": 2.0}, node_id="node-a", placement_group_id="abc")],
                  OWNERS, 0.0)
    assert outside_gpus(pg + inside) == {"n0-i0": 2.0}


class FakePolice:
    def __init__(self):
        self.holders = []
        self.stops = []
        self.counts = []

    def observe(self):
        return list(self.holders), OWNERS

    def creator_of(self, actor_id):
        return RUNNER

    def stop(self, f):
        self.stops.append(f.id)
        return "worker killed"

    def count(self, kind, action, desk):
        self.counts.append((kind, action, desk))

    def gauge(self, held, islands):
        pass


@pytest.fixture
def env(tmp_path):
    clock = Clock(100.0)
    ids = iter(range(1000))
    core = ControllerCore(config(), SqliteLedger(tmp_path / "l.db"), FakeBackend(), clock=clock,
                          new_id=lambda d: f"{d}-{next(ids):08x}")
    return core, clock


@pytest.mark.parametrize("mode", ["enforce", "report"])
def test_patrol_finds_stops_audits_and_counts_the_gpus_as_taken(env, mode):
    core, clock = env
    police = FakePolice()
    patrol = Patrol(PolicingConfig(mode=mode, interval_s=2.0), core, police, clock=clock)
    before = core.pools("admin-demo-token")["general"]
    assert before["free"] == 8 and before["outside"] == 0
    police.holders = [Holder("task", "t1", {"GPU": 4.0}, node_id="node-b", pid=4242, started_at=99.0)]
    patrol.sweep()
    pools = core.pools("admin-demo-token")["general"]
    assert pools["outside"] == 4 and pools["free"] == 4 and pools["in_use"] == 0      # taken, not lost
    assert core.not_placeable() == {"n0-i1": 4.0}
    assert police.stops == (["t1"] if mode == "enforce" else [])
    (ev,) = [e for e in core.ledger.events() if e.kind == "outside_found"]
    assert ev.data["gpus"] == 4.0 and ev.data["island"] == "n0-i1" and ev.data["detect_s"] == 1.0
    assert police.counts == [("task", "stopping" if mode == "enforce" else "reported", "")]
    clock.advance(2.0)
    police.holders = []                                                               # it is gone
    patrol.sweep()
    assert core.pools("admin-demo-token")["general"]["outside"] == 0
    (gone,) = [e for e in core.ledger.events() if e.kind == "outside_stopped"]
    assert gone.data["stop_s"] == 2.0
    assert patrol.view(None)["detected"] == 1 and patrol.view(None)["findings"] == []


def test_enforce_fails_the_rayfin_job_that_started_it(env):
    core, clock = env
    job = core.submit("fx-demo-token", "fx", {"kind": "callable", "payload": b"x", "gpus": 1})
    for _ in range(3):
        core.cycle()
    assert core.status("fx-demo-token", job["job_id"])["state"] == "RUNNING"
    owners_actor = {RUNNER: (f"job-{job['job_id']}~0", "rayfin-desk-fx")}
    police = FakePolice()
    police.observe = lambda: ([Holder("task", "t1", {"GPU": 4.0}, node_id="node-b", parent_actor_id=RUNNER)],
                              Owners(frozenset(), owners_actor, OWNERS.islands))
    patrol = Patrol(PolicingConfig(mode="enforce"), core, police, clock=clock)
    patrol.sweep()
    st = core.status("fx-demo-token", job["job_id"])
    assert st["state"] == "FAILED" and st["reason"].startswith("policing:")
    assert patrol.view("fx")["findings"][0]["rayfin_job_id"] == job["job_id"]
    assert patrol.view("equities")["findings"] == []                   # a desk sees only its own


def test_off_never_sweeps(env):
    core, clock = env
    assert not Patrol(PolicingConfig(mode="off"), core, FakePolice(), clock=clock).due(clock())
