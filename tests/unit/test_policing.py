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
                islands={"node-a": "n0-i0", "node-b": "n0-i1"}, serving_apps=frozenset({"model-pricer"}),
                machines={"node-a": "10.0.0.1", "node-b": "10.0.0.2", "node-c": "10.0.0.1"},
                runners={RUNNER: ("fx", "fx-0000abcd")})


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
    owners = Owners(backend.held_groups(), {})
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
            self.kill = SimpleNamespace(remote=lambda pid, start=None, idle=False: sent.append((n, pid)) or f"ref-{n}")

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
    police = FakePolice()
    police.observe = lambda: ([Holder("task", "t1", {"GPU": 4.0}, node_id="node-b", parent_actor_id=RUNNER)],
                              Owners(frozenset(), OWNERS.islands, runners={RUNNER: ("fx", job["job_id"])}))
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


# -- processes on real GPUs (NVML), beside what Ray says each worker holds --------------------
SMI_GPUS = "0, GPU-c14a3bfe-0770-1da8-9fe4-63ac11c51201\n1, GPU-0000aaaa-0000-0000-0000-000000000001\n"
# As nvidia-smi printed it on an H200 machine (pid 2783: a Ray task with num_gpus=0 that put 1.6 GiB on the GPU)
SMI_APPS = ("2783, GPU-c14a3bfe-0770-1da8-9fe4-63ac11c51201, 1634 MiB\n"
            "2780, GPU-c14a3bfe-0770-1da8-9fe4-63ac11c51201, 1634 MiB\n"
            "[Not Supported], GPU-c14a3bfe-0770-1da8-9fe4-63ac11c51201, 3 MiB\n")


def test_nvidia_smi_rows_are_read_by_gpu_index():
    from rayfin.controller.policing import parse_nvidia_smi

    assert parse_nvidia_smi(SMI_GPUS, SMI_APPS) == [
        (0, "GPU-c14a3bfe-0770-1da8-9fe4-63ac11c51201", 2783, 1634.0),
        (0, "GPU-c14a3bfe-0770-1da8-9fe4-63ac11c51201", 2780, 1634.0)]
    assert parse_nvidia_smi("", SMI_APPS) == []          # an unknown uuid is not guessed at


def _proc(pid, gpu, worker, node="node-a", title=None, start=7):
    from rayfin.controller.policing import GpuProcess

    return GpuProcess(node, pid, gpu, f"GPU-{gpu}", 1000.0, worker, cmd=f"python child of {worker}",
                      worker_title=title or f"ray::work{worker}", worker_start=start)


def _gpu(procs, holders, now=10.0, assigned=None, seen=None, owners=OWNERS):
    from rayfin.controller.policing import find_on_gpus

    return find_on_gpus(procs, holders, owners, now, assigned, seen)


@pytest.mark.parametrize("procs, holders, flagged", [
    # a runner holding one GPU, on one GPU: its own
    ([_proc(10, 0, 10)], [Holder("actor", "r", {"GPU_group_pg-rayfin": 1.0}, node_id="node-a", pid=10)], []),
    # an entrypoint's command: a child of the runner, on the runner's one GPU
    ([_proc(11, 0, 10)], [Holder("actor", "r", {"GPU": 1.0}, node_id="node-a", pid=10)], []),
    # a task that asked for no GPU and used one anyway (CUDA_VISIBLE_DEVICES unset by Ray 2.60)
    ([_proc(20, 0, 20)], [Holder("task", "t", {"CPU": 1.0}, node_id="node-a", pid=20, parent_actor_id=RUNNER)],
     ["gpu:node-a:20:7"]),
    # an actor still in its __init__ (not ALIVE yet) that holds no GPU and uses one
    ([_proc(22, 0, 22)], [Holder("actor", "a", {"CPU": 1.0}, node_id="node-a", pid=22, alive=False)],
     ["gpu:node-a:22:7"]),
    # ... and one that holds its GPU: its own
    ([_proc(23, 0, 23)], [Holder("actor", "a", {"GPU": 1.0}, node_id="node-a", pid=23, alive=False)], []),
    # an idle worker keeping a CUDA context after its task ended
    ([_proc(21, 0, 21, title="ray::IDLE")], [], ["gpu:node-a:21:7"]),
    # a busy worker the state API does not list (yet, or it dropped the row): left alone for now
    ([_proc(24, 0, 24, title="ray::train")], [], []),
    # a one-GPU worker whose child set CUDA_VISIBLE_DEVICES=0,1 and used both
    ([_proc(31, 0, 30), _proc(31, 1, 30)], [Holder("actor", "r", {"GPU": 1.0}, node_id="node-a", pid=30)],
     ["gpu:node-a:30:7"]),
    # two half-GPU tasks in one worker's history; fractional holds round up to one GPU
    ([_proc(40, 0, 40)], [Holder("task", "t", {"GPU": 0.5}, node_id="node-a", pid=40)], []),
    # the same pid on another host is another process: there it runs nothing
    ([_proc(10, 0, 10, node="node-b", title="ray::IDLE")], [Holder("actor", "r", {"GPU": 1.0}, node_id="node-a", pid=10)],
     ["gpu:node-b:10:7"]),
    # a process on a GPU under no Ray worker (double-forked away, or not Ray's at all)
    ([_proc(50, 1, None, title="", start=None)], [], ["gpu:node-a:50:None"]),
    # simulated nodes on one host: the GPU node's NVML lists a runner that Ray placed on node-c
    ([_proc(10, 0, 10)], [Holder("actor", "r", {"GPU": 1.0}, node_id="node-c", pid=10)], []),
])
def test_what_is_flagged_on_gpus(procs, holders, flagged):
    assert [f.id for f in _gpu(procs, holders)[0]] == flagged


def test_a_gpu_process_is_attributed_and_counted_as_taken():
    task = Holder("task", "t", {"CPU": 1.0}, name="sneak", node_id="node-a", pid=20, parent_actor_id=RUNNER,
                  started_at=7.0)
    (f,), _ = _gpu([_proc(20, 0, 20)], [task])
    assert (f.kind, f.desk, f.rayfin_job_id, f.island, f.gpus, f.pid, f.pid_start) == (
        "gpu_process", "fx", "fx-0000abcd", "n0-i0", 1.0, 20, 7)
    assert "holds no GPU" in f.reasons[0] and "running task sneak" in f.reasons and f.stoppable
    assert outside_gpus([f]) == {"n0-i0": 1.0}
    from rayfin.api.models import Finding as FindingView

    assert FindingView.model_validate(f.public()).kind == "gpu_process"    # what GET /v1/policing answers
    over = [_proc(31, 0, 30), _proc(31, 1, 30), _proc(31, 2, 30)]
    (g,), _ = _gpu(over, [Holder("actor", "r", {"GPU": 1.0}, node_id="node-a", pid=30)])
    assert g.gpus == 2.0 and "holds 1" in g.reasons[0]          # what is beyond its own GPU is taken
    (h,), _ = _gpu([_proc(50, 1, None, title="", start=None)], [])
    assert h.gpus == 0.0 and "under no Ray worker" in h.reasons[0] and not h.stoppable   # reported only
    (i,), _ = _gpu([_proc(21, 0, 21, title="ray::IDLE")], [])
    assert i.idle and "runs nothing" in i.reasons[0]           # killed only if still idle


def test_only_rayfins_own_runners_name_a_job():
    """Anyone can create an actor named like a runner in a desk's namespace; work it starts is not
    charged to that desk's job. Only the runners rayfin's backend made (by actor id) name one."""
    from dataclasses import replace

    impostor = "c" * 32                # say it is named "job-fx-0000abcd~7" in namespace rayfin-desk-fx
    task = Holder("task", "t", {"CPU": 1.0}, node_id="node-a", pid=20, parent_actor_id=impostor, started_at=7.0)
    (f,), _ = _gpu([_proc(20, 0, 20)], [task], owners=OWNERS)
    assert (f.desk, f.rayfin_job_id) == ("", "")
    (g,) = find([replace(task, resources={"GPU": 1.0})], OWNERS, 10.0)
    assert (g.desk, g.rayfin_job_id) == ("", "")
    # The same task started by the runner rayfin made is charged to its job.
    assert OWNERS.attribute(replace(task, parent_actor_id=RUNNER)) == ("fx", "fx-0000abcd")


def test_a_busy_worker_is_judged_by_its_last_row_or_after_a_while_without_one():
    """The state API loses rows (old task events are evicted; a GCS error lists nothing): a worker
    whose row is gone but whose title is the same keeps its last row, however long; a busy worker
    that was never listed is a finding UNLISTED_S after the first sweep without a row."""
    from rayfin.controller.policing import UNLISTED_S

    gpu_task = Holder("task", "t", {"GPU": 1.0}, name="train", node_id="node-a", pid=24, started_at=1.0)
    p = [_proc(24, 0, 24, title="ray::train")]
    found, seen = _gpu(p, [gpu_task], now=10.0)
    assert found == []
    found, seen = _gpu(p, [], now=10.0 + 10 * UNLISTED_S, seen=seen)          # the row is gone
    assert found == []
    found, seen = _gpu([_proc(24, 0, 24, title="ray::other")], [], now=20.0 + 10 * UNLISTED_S, seen=seen)
    assert found == []                                            # another task now, not listed: wait ...
    found, seen = _gpu([_proc(24, 0, 24, title="ray::other")], [], now=20.0 + 11 * UNLISTED_S, seen=seen)
    (f,) = found                                                   # ... UNLISTED_S from the first sweep without
    assert "listed no task or actor" in f.reasons[0] and (f.desk, f.gpus) == ("", 1.0)


def test_a_reused_worker_is_not_charged_to_the_next_desk():
    """Ray reuses a worker for the next task: a GPU context one task left is not the next task's
    doing. A task is blamed only if it started before its worker was first seen on the GPU; the
    worker is still a finding, its desk and job are not named."""
    from rayfin.controller.policing import WorkerSeen

    seen = {("node-a", 20, 7): WorkerSeen(first_on_gpu=8.0)}
    victim = Holder("task", "t2", {"CPU": 1.0}, name="price", node_id="node-a", pid=20, parent_actor_id=RUNNER,
                    started_at=9.0)
    (f,), _ = _gpu([_proc(20, 0, 20)], [victim], seen=seen)
    assert (f.desk, f.rayfin_job_id) == ("", "") and "Ray reused it" in "; ".join(f.reasons)
    culprit = Holder("task", "t1", {"CPU": 1.0}, name="sneak", node_id="node-a", pid=20, parent_actor_id=RUNNER,
                     started_at=7.5)
    (g,), _ = _gpu([_proc(20, 0, 20)], [culprit], seen=seen)
    assert (g.desk, g.rayfin_job_id) == ("fx", "fx-0000abcd")


class GpuPolice(FakePolice):
    def __init__(self):
        super().__init__()
        self.procs = ()
        self.unread = frozenset()

    def observe(self):
        from dataclasses import replace

        read = frozenset({p.node_id for p in self.procs} | {"node-a"}) - self.unread
        return list(self.holders), replace(OWNERS, gpu_procs=tuple(self.procs), gpu_read=read,
                                           gpu_unread=self.unread)


def _gpu_patrol(core, clock, mode="enforce"):
    police = GpuPolice()
    return police, Patrol(PolicingConfig(mode=mode, interval_s=2.0), core, police, clock=clock)


def _events(core, kind):
    return [e for e in core.ledger.events() if e.kind == kind]


def test_patrol_stops_a_gpu_process_seen_in_two_sweeps_and_fails_its_job(env):
    """One sweep is a suspicion (a task may have started between NVML's list and the state API's);
    the second makes it a finding: audited, counted as taken, the worker killed, and the rayfin job
    whose code started it failed. A node whose list did not come keeps its findings a while."""
    core, clock = env
    police, patrol = _gpu_patrol(core, clock, "enforce")
    failed = []
    core.police_job = lambda job, why: failed.append((job, why, list(police.stops))) or True
    police.procs = (_proc(20, 0, 20),)
    police.holders = [Holder("task", "t", {"CPU": 1.0}, node_id="node-a", pid=20, parent_actor_id=RUNNER,
                             started_at=99.0)]
    patrol.sweep()
    assert police.stops == [] and not _events(core, "outside_found")
    clock.advance(2.0)
    patrol.sweep()
    (ev,) = _events(core, "outside_found")
    assert ev.data["kind"] == "gpu_process" and ev.data["gpus"] == 1.0 and ev.data["detect_s"] == 3.0
    assert set(police.stops) == {"gpu:node-a:20:7"} and core.not_placeable() == {"n0-i0": 1.0}
    assert failed and failed[0][0] == "fx-0000abcd" and "does not hold" in failed[0][1]
    assert failed[0][2] == ["gpu:node-a:20:7"]       # the kill went out before the job was failed
    clock.advance(2.0)
    police.procs, police.unread = (), frozenset({"node-a"})      # node-a's agent did not answer
    patrol.sweep()
    assert not _events(core, "outside_stopped") and core.not_placeable() == {"n0-i0": 1.0}
    clock.advance(2.0)
    police.unread, police.holders = frozenset(), []
    patrol.sweep()
    (gone,) = _events(core, "outside_stopped")
    assert gone.data["kind"] == "gpu_process" and core.not_placeable() == {}


def test_a_node_that_never_answers_lets_its_findings_lapse(env):
    from rayfin.controller.patrol import STALE_S

    core, clock = env
    police, patrol = _gpu_patrol(core, clock, "report")
    police.procs = (_proc(21, 0, 21, title="ray::IDLE"),)
    patrol.sweep()
    clock.advance(2.0)
    patrol.sweep()
    assert core.not_placeable() == {"n0-i0": 1.0}
    police.procs, police.unread = (), frozenset({"node-a"})
    clock.advance(STALE_S - 1)
    patrol.sweep()
    assert core.not_placeable() == {"n0-i0": 1.0}
    clock.advance(2.0)
    patrol.sweep()
    assert core.not_placeable() == {} and len(_events(core, "outside_stopped")) == 1


def test_a_stream_of_short_tasks_on_one_worker_is_caught(env):
    """A new task on the same worker at every sweep: the worker is what is seen twice, not the
    task. Which task is blamed is the rows' business (here the first one, before the context)."""
    core, clock = env
    police, patrol = _gpu_patrol(core, clock, "enforce")
    failed = []
    core.police_job = lambda job, why: failed.append(job) or True
    police.procs = (_proc(20, 0, 20),)
    for n in range(3):
        police.holders = [Holder("task", f"t{n}", {"CPU": 1.0}, node_id="node-a", pid=20, parent_actor_id=RUNNER,
                                 started_at=clock() - 0.5)]
        patrol.sweep()
        clock.advance(2.0)
    assert police.stops and failed == []      # stopped; the tasks after the first started on a worker already on it


def test_a_process_under_no_ray_worker_is_reported_not_stopped(env):
    core, clock = env
    police, patrol = _gpu_patrol(core, clock, "enforce")
    police.procs = (_proc(50, 0, None, title="", start=None),)
    patrol.sweep()
    clock.advance(2.0)
    patrol.sweep()
    (ev,) = _events(core, "outside_found")
    assert police.stops == [] and core.not_placeable() == {}
    assert patrol.view(None)["findings"][0]["action"].startswith("reported")


def test_a_gpu_process_seen_once_is_not_a_finding(env):
    core, clock = env
    police, patrol = _gpu_patrol(core, clock, "enforce")
    police.procs = (_proc(20, 0, 20, title="ray::IDLE"),)
    patrol.sweep()
    clock.advance(2.0)
    police.procs = ()                      # its task showed up holding the GPU, or it ended
    patrol.sweep()
    clock.advance(2.0)
    police.procs = (_proc(20, 0, 20, title="ray::IDLE"),)     # seen again after a gap: a suspect again
    patrol.sweep()
    assert police.stops == [] and not _events(core, "outside_found")


def test_the_agent_walks_up_to_the_ray_worker_and_kills_it_with_its_children(tmp_path, monkeypatch):
    """The node agent on real processes (no GPU here: a stand-in nvidia-smi names the process).
    A command a Ray worker started, on a GPU, is put on that worker, even when it titles itself
    like one (`ray::busy`): a worker is what the raylet started. A kill of the worker takes the
    command too (it would otherwise live on under init, on the GPU)."""
    import os
    import subprocess
    import time

    from rayfin.controller import police_ray
    from rayfin.controller.police_ray import PolicingAgent, _descendants

    # raylet -> a launch wrapper (as nsys or uv start default_worker.py) -> the worker -> its command
    (tmp_path / "worker.sh").write_text('(exec -a "ray::busy" sleep 300) & wait\n')
    (tmp_path / "default_worker.py.sh").write_text(
        f'bash -c \'exec -a "ray::Sneak.run" bash {tmp_path}/worker.sh\' & wait\n')
    (tmp_path / "raylet.sh").write_text(f"bash -c 'exec -a nsys bash {tmp_path}/default_worker.py.sh' & wait\n")
    raylet = subprocess.Popen(["bash", "-c", f"exec -a fake-raylet bash {tmp_path}/raylet.sh"])
    try:
        deadline = time.monotonic() + 10
        while len(_descendants(raylet.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        wrapper, worker, child = _descendants(raylet.pid)
        assert police_ray._worker_of(child) == worker and police_ray._worker_of(wrapper) == wrapper
        smi = tmp_path / "nvidia-smi"
        smi.write_text('#!/bin/sh\ncase "$1" in --query-gpu*) echo "0, GPU-x";; '
                       f'*) echo "{child}, GPU-x, 512 MiB";; esac\n')
        smi.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
        agent = PolicingAgent()
        # No GPU here, so the process has no /dev/nvidia* open: read as NVML speaking of another
        # pid namespace (a container without the host's pids), and not trusted.
        other = agent.gpu_processes()
        assert not other["ok"] and other["other_namespace"] and "pid namespace" in other["why"]
        monkeypatch.setattr(police_ray, "_holds_a_gpu", lambda pid: True)
        answer = agent.gpu_processes()
        start = police_ray._started(worker)
        assert answer["ok"] and answer["procs"] == [{"pid": child, "gpu": 0, "uuid": "GPU-x", "used_mib": 512.0,
                                                     "worker_pid": worker, "cmd": "ray::busy 300 ",
                                                     "worker_title": f"ray::Sneak.run {tmp_path}/worker.sh ",
                                                     "worker_start": start}]
        assert agent.kill(child) == "not a ray worker"          # titled like one, not started by the raylet
        assert agent.kill(worker, start + 1) == "gone"          # the pid is another process now
        assert os.path.exists(f"/proc/{worker}")
        assert agent.kill(worker, start) == "killed"
        deadline = time.monotonic() + 10

        def alive(pid):
            try:
                return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"
            except OSError:
                return False
        while (alive(worker) or alive(child)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(worker) and not alive(child)
    finally:
        raylet.kill()
        raylet.wait(timeout=10)


def test_a_rank_on_a_gpu_not_its_jobs_is_flagged():
    """Counting alone misses a one-GPU rank that moved onto another GPU of its node (still one
    GPU). For rayfin's ranks the runner reported which GPUs Ray gave the job there: that decides."""
    from rayfin.controller.policing import RankGpus

    # a gang worker: an unnamed actor, so only the runner's report says whose it is
    worker = Holder("actor", "w", {"GPU_group_0_pg-rayfin": 1.0, "GPU_group_pg-rayfin": 1.0}, node_id="node-a", pid=10,
                    placement_group_id="pg-rayfin")
    given = {("node-a", 10): RankGpus("fx-0000abcd", "fx", frozenset({0, 1}))}
    assert _gpu([_proc(11, 0, 10)], [worker], assigned=given)[0] == []
    assert _gpu([_proc(11, 1, 10)], [worker], assigned=given)[0] == []             # a sibling rank's GPU
    assert _gpu([_proc(11, 2, 10)], [worker])[0] == []                             # by count: unseen
    (f,), _ = _gpu([_proc(11, 2, 10)], [worker], assigned=given)
    assert "on GPU 2" in f.reasons[0] and "its job has GPUs 0, 1" in f.reasons[0] and f.gpus == 1.0
    assert (f.desk, f.rayfin_job_id) == ("fx", "fx-0000abcd")                        # named by the report
    # reported on the GPU node, placed (by Ray's books) on node-c of the same host
    assert _gpu([_proc(11, 2, 10)], [worker], assigned={("node-c", 10): given[("node-a", 10)]})[0] != []


def test_the_gpus_each_running_rank_was_given(env):
    from dataclasses import replace

    core, _ = env
    job = core.submit("fx-demo-token", "fx", {"kind": "callable", "payload": b"x", "gpus": 2})
    for _ in range(3):
        core.cycle()
    rec = core.state.active[job["job_id"]]
    core.state.active[job["job_id"]] = replace(rec, info={**rec.info, "ranks": [
        {"rank": 0, "node_id": "node-a", "pid": 10, "cuda_visible_devices": "0"},
        {"rank": 1, "node_id": "node-a", "pid": 12, "cuda_visible_devices": "1,3"},
        {"rank": 2, "node_id": "node-a", "pid": None, "cuda_visible_devices": "2"}]})
    from rayfin.controller.policing import RankGpus

    jid = job["job_id"]
    both = RankGpus(jid, "fx", frozenset({0, 1, 3}))                  # the job's GPUs on the node
    assert core.gpu_assignments() == {("node-a", 10): both, ("node-a", 12): both}
    # Requeued and placed again: the last attempt's ranks are not this one's (a pid of theirs
    # may be reused by anyone) until its new runner reports.
    from rayfin.reasons import ReasonCode

    core.state.requeue(core.state.active[jid], "node lost", ReasonCode.NODE_LOST)
    assert "ranks" not in core.state.active[jid].info
    for _ in range(3):
        core.cycle()
    assert core.state.active[jid].state.value in ("ADMITTED", "RUNNING") and core.gpu_assignments() == {}


def test_gpu_lists_are_read_node_by_node(monkeypatch):
    """One node's failure does not stop the check on the others: each answer is read on its own;
    a node with no nvidia-smi is read (nothing to keep) and not asked for 5 minutes; a failed or
    missing answer leaves that node unread (its findings kept a while) and is asked again."""
    from rayfin.controller import police_ray

    police = police_ray.RayPolice(held=frozenset)
    answers = {"n1": {"ok": True, "procs": [{"pid": 5, "gpu": 0, "uuid": "GPU-a", "used_mib": 10.0, "worker_pid": 5,
                                             "cmd": "x", "worker_title": "ray::IDLE", "worker_start": 3}]},
               "n2": {"ok": False, "why": "no nvidia-smi on this node", "back_off": True},
               "n3": {"ok": False, "why": "nvidia-smi exited 9"},
               "n4": RuntimeError("the agent raised")}
    police._gpu_asks = {n: f"ref-{n}" for n in (*answers, "n5")}            # n5 has not answered yet
    monkeypatch.setattr(police_ray.ray, "wait",
                        lambda refs, num_returns, timeout: ([r for r in refs if r != "ref-n5"], ["ref-n5"]))

    def get(ref, timeout=None):
        a = answers[ref[4:]]
        if isinstance(a, Exception):
            raise a
        return a
    monkeypatch.setattr(police_ray.ray, "get", get)
    procs, read, unread = police._gpu_answers()
    assert [(p.node_id, p.pid, p.worker_title, p.worker_start) for p in procs] == [("n1", 5, "ray::IDLE", 3)]
    assert read == {"n1", "n2"} and unread == {"n3", "n4", "n5"}
    assert set(police._gpu_asks) == {"n5"} and set(police._no_nvml) == {"n2"}


def test_a_silent_agent_is_replaced(monkeypatch):
    import time

    from rayfin.controller import police_ray

    police = police_ray.RayPolice(held=frozenset)
    made, dropped = [], []
    monkeypatch.setattr(police, "_agent", lambda node: made.append(node) or type(
        "A", (), {"gpu_processes": type("M", (), {"remote": staticmethod(lambda: f"ref{len(made)}")})})())
    monkeypatch.setattr(police, "_drop_agent", lambda node, which=None: dropped.append(node))
    police._ask_gpus(["n1"])
    police._ask_gpus(["n1"])                                   # still waiting: not asked twice
    assert made == ["n1"] and dropped == []
    police._gpu_asked_at["n1"] = time.monotonic() - police_ray.AGENT_OVERDUE_S - 1
    police._ask_gpus(["n1"])
    assert dropped == ["n1"] and made == ["n1", "n1"] and police._gpu_asks["n1"] == "ref2"


def test_a_rank_may_use_its_jobs_gpus_beyond_its_own_count():
    """nccl peers, a shared CUDA_VISIBLE_DEVICES: a one-GPU rank on its own GPU and a sibling's is
    its job's business, not a finding (by count alone it would be: "holds 1")."""
    from rayfin.controller.policing import RankGpus

    rank = Holder("actor", "w", {"GPU": 1.0}, node_id="node-a", pid=10)
    given = {("node-a", 10): RankGpus("fx-0000abcd", "fx", frozenset({0, 1}))}
    assert _gpu([_proc(10, 0, 10), _proc(10, 1, 10)], [rank], assigned=given)[0] == []
    assert _gpu([_proc(10, 0, 10), _proc(10, 1, 10)], [rank])[0] != []


def test_a_process_whose_own_pid_holds_its_gpu_is_its_own():
    """Under a launch wrapper that the walk could not place, the process's own row still holds the
    GPU: judged by Ray's books, not flagged."""
    task = Holder("task", "t", {"GPU": 1.0}, node_id="node-a", pid=60)
    assert _gpu([_proc(60, 0, None, title="", start=None)], [task])[0] == []


def test_a_finding_follows_what_its_worker_does_now(env):
    """First seen idle, then busy with a stray task: the kill must not keep asking "only if idle"."""
    core, clock = env
    police, patrol = _gpu_patrol(core, clock)
    sent = []
    police.stop = lambda f: sent.append(f.idle) or "kill sent"
    police.procs = (_proc(21, 0, 21, title="ray::IDLE"),)
    patrol.sweep()
    clock.advance(2.0)
    patrol.sweep()
    police.procs = (_proc(21, 0, 21, title="ray::stray"),)
    police.holders = [Holder("task", "s", {"CPU": 1.0}, node_id="node-a", pid=21, started_at=clock())]
    clock.advance(2.0)
    patrol.sweep()
    assert sent[0] is True and sent[-1] is False


def test_a_finding_policing_cannot_stop_fails_no_job(env):
    core, clock = env
    police, patrol = _gpu_patrol(core, clock)
    failed = []
    core.police_job = lambda job, why: failed.append(job) or True
    # a process under no Ray worker whose pid the state API names in a runner's task
    police.procs = (_proc(61, 0, None, title="", start=None),)
    police.holders = [Holder("task", "t", {"CPU": 1.0}, node_id="node-a", pid=61, parent_actor_id=RUNNER, started_at=1.0)]
    for _ in range(2):
        patrol.sweep()
        clock.advance(2.0)
    assert _events(core, "outside_found") and failed == [] and police.stops == []


def test_work_a_gang_worker_started_is_charged_to_its_job(env):
    """Gang workers have no names: their rank's report (node, pid) names the job."""
    core, clock = env
    police = FakePolice()
    gang_worker = Holder("actor", "g" * 32, {"GPU_group_pg-rayfin": 1.0}, node_id="node-a", pid=12,
                         placement_group_id="pg-rayfin")
    rogue = Holder("task", "t1", {"GPU": 1.0}, node_id="node-a", pid=70, parent_actor_id="g" * 32)
    police.holders = [gang_worker, rogue]
    from rayfin.controller.policing import RankGpus

    core.gpu_assignments = lambda: {("node-a", 12): RankGpus("fx-0000beef", "fx", frozenset({0}))}
    core.police_job = lambda job, why: True
    patrol = Patrol(PolicingConfig(mode="report", interval_s=2.0), core, police, clock=clock)
    patrol.sweep()
    (ev,) = _events(core, "outside_found")
    assert (ev.desk, ev.job_id) == ("fx", "fx-0000beef")


def test_a_released_runner_still_names_its_job_for_a_while():
    import time
    from types import SimpleNamespace

    from placement.topology import Topology
    from rayfin.controller import ray_backend

    backend = ray_backend.RayBackend(Topology.from_config(config().cluster), runner_key=b"k" * 32)
    runner = SimpleNamespace(_actor_id=SimpleNamespace(hex=lambda: "ab" * 16))
    backend._live["fx-0000abcd~0"] = ray_backend._Live(desk="fx", runner=runner)
    assert backend.runner_ids() == {"ab" * 16: ("fx", "fx-0000abcd")}
    del backend._live["fx-0000abcd~0"]                 # released (release() also kills it, through Ray)
    backend._retire_runner(runner, "fx", "fx-0000abcd~0")
    assert backend.runner_ids() == {"ab" * 16: ("fx", "fx-0000abcd")}
    backend._retired_runners["ab" * 16] = ("fx", "fx-0000abcd", time.monotonic() - ray_backend.RETIRED_S - 1)
    assert backend.runner_ids() == {}


def test_a_finding_that_comes_to_name_its_job_fails_it_then(env):
    """After a restart a runner is trusted only once it proves itself: what its code started may be
    found first with no job. When a later sweep names the job, the job is failed then."""
    core, clock = env
    police = FakePolice()
    failed = []
    core.police_job = lambda job, why: failed.append(job) or True
    patrol = Patrol(PolicingConfig(mode="enforce", interval_s=2.0), core, police, clock=clock)
    from dataclasses import replace

    rogue = Holder("task", "t1", {"GPU": 1.0}, node_id="node-a", pid=70, parent_actor_id=RUNNER)
    police.holders = [rogue]
    police.observe = lambda: (list(police.holders), replace(OWNERS, runners={}))      # not proven yet
    patrol.sweep()
    assert failed == [] and _events(core, "outside_found")[0].job_id == ""
    clock.advance(2.0)
    police.observe = lambda: (list(police.holders), OWNERS)                          # proven
    patrol.sweep()
    assert failed == ["fx-0000abcd"] and len(_events(core, "outside_found")) == 1
