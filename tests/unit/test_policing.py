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
    (Holder("placement_group", "pg-rayfin", {"GPU": 4.0}, name="rayfin-job-fx-0000abcd~0"), False),  # held by rayfin
    (Holder("placement_group", "pg-rayfin", {"GPU": 4.0}, name="renamed"), False),           # its id decides
    # Named like rayfin's, but not one the backend holds: anyone can name a group so.
    (Holder("placement_group", "pg-z", {"GPU": 4.0, "rayfin_pool_risk": 4.0}, name="rayfin-job-x"), True),
    (Holder("actor", "a2", {"GPU_group_pg-z": 1.0}, name="job-risk-0000abcd~1", namespace="rayfin-desk-risk",
            placement_group_id="pg-z"), True),                                                # inside such a group
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


def test_rayfins_groups_are_the_ones_its_backend_holds_and_a_released_one_for_a_while():
    """What policing takes for rayfin's (RayBackend.held_groups): groups the backend made or
    adopted, by id; a released one for RETIRED_S more (its runner may still be dying), then not."""
    import time
    from types import SimpleNamespace

    from placement.topology import Topology
    from rayfin.controller import ray_backend

    backend = ray_backend.RayBackend(Topology.from_config(config().cluster), runner_key=b"k" * 32)

    def group(gid):
        return SimpleNamespace(id=SimpleNamespace(hex=lambda: gid))

    backend._hold(group("aa"))
    backend._hold(group("bb"))
    assert backend.held_groups() == {"aa", "bb"}
    backend._retire(group("aa"))
    # released without having been held here (recovery's orphans, a previous controller's): its
    # runner may be dying too
    backend._retire(group("zz"))
    assert backend.held_groups() == {"aa", "bb", "zz"}
    backend._held["aa"] = backend._held["zz"] = time.monotonic() - ray_backend.RETIRED_S - 1
    assert backend.held_groups() == {"bb"}
    owners = Owners(backend.held_groups(), {}, {})
    assert not owners.is_rayfin(Holder("placement_group", "aa", {"GPU": 1.0}, name=backend.group_name("j~0")))
    assert owners.is_rayfin(Holder("placement_group", "bb", {"GPU": 1.0}, name="anything"))


def test_only_names_tagged_under_the_controllers_seed_are_its_own():
    """Names carry a tag (an HMAC of the key under the seed, one for groups, another for runners):
    nobody can tell the next generation's names, nor a runner's from its group's; recovery's
    `owned()` takes a name for rayfin's only if its tag is right."""
    from placement.topology import Topology
    from rayfin.controller import ray_backend

    topo = Topology.from_config(config().cluster)
    mine, other = ray_backend.RayBackend(topo, runner_key=b"a" * 32), ray_backend.RayBackend(topo, runner_key=b"b" * 32)
    key = "risk-0000abcd~1"
    runner, group = mine.runner_name(key), mine.group_name(key)
    assert runner.startswith(f"job-{key}-") and group.startswith(f"rayfin-job-{key}-")
    assert runner[len("job-"):] != group[len("rayfin-job-"):]                    # the group's tag is not the runner's
    assert mine.runner_name("risk-0000abcd~2") != runner.replace("~1", "~2")   # nor one generation's the next's
    assert mine.tag(key, "runner") not in mine.secret(key)                      # no part of the secret
    assert mine._key_of(runner, "job-", "runner") == key
    assert mine._key_of(group, "rayfin-job-", "group") == key
    for name in (f"job-{key}", other.runner_name(key), group.replace("rayfin-", "", 1), runner + "0"):
        assert mine._key_of(name, "job-", "runner") is None, name
    assert mine._key_of(f"rayfin-job-{key}", "rayfin-job-", "group") is None


def test_policing_agents_are_unnamed_and_a_dead_one_is_replaced(monkeypatch):
    """An agent found by name could be anyone's (answering "gone" to every kill): agents are made
    unnamed and their handles kept; one whose call says it died is dropped, and the next kill on
    that node goes to a new agent (a dead handle was reused forever)."""
    from types import SimpleNamespace

    from ray.exceptions import ActorDiedError

    from rayfin.controller import police_ray
    from rayfin.controller.policing import Finding

    made, sent = [], []

    class Agent:
        def __init__(self, n):
            self.kill = SimpleNamespace(remote=lambda pid: sent.append((n, pid)) or f"ref-{n}")

    def options(**kw):
        made.append(kw)
        return SimpleNamespace(remote=lambda: Agent(len(made)))

    police = police_ray.RayPolice(held=frozenset)
    monkeypatch.setattr(police, "_agent_cls", SimpleNamespace(options=options))
    monkeypatch.setattr(police_ray.ray, "wait", lambda refs, timeout=None: (refs, []))

    def get(ref, timeout=None):
        raise ActorDiedError()

    monkeypatch.setattr(police_ray.ray, "get", get)
    monkeypatch.setattr(police_ray.ray, "kill", lambda handle, no_restart=True: None)
    f = Finding("task", "t1", "", "ab" * 28, "n0-i0", {"GPU": 1.0}, 1.0, "", "", "", 4242, 0.0, 0.0)
    assert police._kill(f) == "kill sent" and sent == [(1, 4242)]
    assert "name" not in made[0] and "get_if_exists" not in made[0]
    assert police._kill(f) == "kill sent"          # the answer: the agent died; sent again, to a new one
    assert sent == [(1, 4242), (2, 4242)] and len(made) == 2


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


def test_a_group_found_by_name_is_adopted_only_if_it_holds_exactly_the_jobs_placement(monkeypatch):
    """A restarted controller finds a job's group by its (readable) name: one that someone made
    in its place, with more GPUs, another island or another desk's pool, is not the job's."""
    from placement.topology import Topology, island_resource, pool_resource
    from rayfin.controller import ray_backend

    topo = Topology.from_config(config().cluster)
    backend = ray_backend.RayBackend(topo, runner_key=b"k" * 32)
    i0, i1 = topo.islands[0], topo.islands[1]
    other_pool = next((i.pool for i in topo.islands if i.pool != i0.pool), "elsewhere")

    def b(isl, gpus, pool=None):
        return {"GPU": gpus, island_resource(isl.id): gpus, pool_resource(pool or isl.pool): gpus}

    table = {}
    monkeypatch.setattr(ray_backend, "placement_group_table", lambda pg: {"bundles": table})
    placement = ((i0.id, 2.0),)
    table.update({0: b(i0, 1.0), 1: b(i0, 1.0)})
    assert backend._shaped_as(object(), placement)                  # what bundles_for makes
    table.update({2: b(i0, 1.0)})
    assert not backend._shaped_as(object(), placement)              # a GPU more
    table.clear()
    table.update({0: b(i0, 1.0), 1: b(i1, 1.0)})
    assert not backend._shaped_as(object(), placement)              # another island
    table.clear()
    table.update({0: b(i0, 2.0, other_pool)})
    assert not backend._shaped_as(object(), placement)              # another desk's pool
    table.clear()
    table.update({0: {**b(i0, 2.0), "CPU": 8.0}})
    assert not backend._shaped_as(object(), placement)              # anything else


def test_a_runner_that_never_answers_its_challenge_is_lost_not_killed_as_an_impostor(monkeypatch):
    """After a restart, an actor under a runner's name that does not answer its challenge in time
    may be a runner Ray is still creating (a head restart can hold that for minutes): the wait is
    renewed while Ray says it is being created, and silence at the end is a lost runner, with no
    kill and no impostor audit. Only a wrong answer (or none possible) is an impostor's."""
    from types import SimpleNamespace

    from placement.topology import Topology
    from rayfin.controller import ray_backend

    backend = ray_backend.RayBackend(Topology.from_config(config().cluster), runner_key=b"k" * 32)
    handle = SimpleNamespace(_actor_id=SimpleNamespace(hex=lambda: "ab" * 16))
    monkeypatch.setattr(ray_backend, "state_api_address", lambda: "127.0.0.1:1")   # (no Ray started)
    states = {"PENDING_CREATION": True, "DEPENDENCIES_UNREADY": True, "RESTARTING": True, "ALIVE": False,
              "DEAD": False}
    for state, coming in states.items():
        monkeypatch.setattr(ray_backend, "get_actor", lambda *a, _s=state, **k: SimpleNamespace(state=_s))
        assert ray_backend._coming_up(handle) is coming, state

    def down(*a, **k):
        raise ConnectionError("no dashboard")

    monkeypatch.setattr(ray_backend, "get_actor", down)
    assert ray_backend._coming_up(handle)                        # cannot tell: keep waiting
    killed = []
    monkeypatch.setattr(ray_backend.ray, "kill", lambda h, **k: killed.append(h))
    live = ray_backend._Live(desk="risk", suspect=handle, prove_ref=object(), nonce=b"n")
    backend._settle("risk-1~0", live, None)
    assert live.last is not None and live.last.state == "LOST" and "never answered" in live.last.error
    assert not killed and backend.take_impostors() == [] and backend.impostors_killed == 0


def test_a_new_runners_name_held_by_a_silent_actor_fails_the_start_without_an_impostor_kill(monkeypatch):
    from types import SimpleNamespace

    from ray.exceptions import ActorAlreadyExistsError

    from placement.topology import Topology
    from rayfin.controller import ray_backend

    backend = ray_backend.RayBackend(Topology.from_config(config().cluster), runner_key=b"k" * 32)
    holder = SimpleNamespace(_actor_id=SimpleNamespace(hex=lambda: "cd" * 16))
    monkeypatch.setattr(ray_backend.ray, "get_actor", lambda *a, **k: holder)
    killed = []
    monkeypatch.setattr(ray_backend.ray, "kill", lambda h, **k: killed.append(h))

    def taken():
        raise ActorAlreadyExistsError("taken")

    monkeypatch.setattr(backend, "_challenge", lambda *a: f"{ray_backend._SILENT} 2s")
    with pytest.raises(RuntimeError, match="no answer to the challenge"):
        backend.claim("risk-1~0", "rayfin-desk-risk", taken)
    assert not killed and backend.impostors_killed == 0
    monkeypatch.setattr(backend, "_challenge", lambda *a: "a wrong answer to the challenge")
    made = SimpleNamespace(_actor_id=SimpleNamespace(hex=lambda: "ef" * 16))
    calls = iter([taken, lambda: made])
    assert backend.claim("risk-1~0", "rayfin-desk-risk", lambda: next(calls)()) is made
    assert killed == [holder] and backend.impostors_killed == 1
