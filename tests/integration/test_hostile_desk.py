"""A job of desk fx whose code finds risk's runners through Ray (`list_named_actors`) and calls
their methods cannot stop, read or alter a risk job: the risk job succeeds with its own result.
Nor can it slip in an actor of its own under a runner's name (the controller drives only an
actor that proves it holds the job's secret, and names carry a tag nobody can guess), nor hide
GPUs in a placement group named like rayfin's (policing takes only the groups rayfin holds)."""
from __future__ import annotations

import os
import time

from tests.support.cluster import wait_for
from tests.support.jobs import hold, hold_until


def meddle(namespace: str = "rayfin-desk-risk") -> dict[str, str]:
    """Hostile desk code: every method of every runner of another desk, with and without a guess."""
    import ray

    out: dict[str, str] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] != namespace:
            continue
        handle = ray.get_actor(entry["name"], namespace=namespace)
        # Every method the handle exposes (Ray lets a caller invoke underscored ones too), with no
        # secret and with a guessed one.
        exposed = sorted(m for m in dir(handle) if not m.startswith("__") and hasattr(getattr(handle, m), "remote"))
        out[f"{entry['name']}.methods"] = "refused: PermissionError: " + ",".join(exposed)
        # `prove` answers anyone (an HMAC of the challenge under the secret), and its answer
        # drives nothing: taken for the secret, it is refused.
        answer = ray.get(handle.prove.remote(b"fx's challenge"), timeout=30)
        try:
            ray.get(handle.poll.remote(answer), timeout=30)
            out[f"{entry['name']}.poll(proof)"] = "ALLOWED"
        except Exception as exc:  # noqa: BLE001
            out[f"{entry['name']}.poll(proof)"] = f"refused: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        for method, args in [(m, a) for m in exposed if m != "prove" for a in ((), ("0" * 64,))]:
            key = f"{entry['name']}.{method}{'(guess)' if args else ''}"
            try:
                ray.get(getattr(handle, method).remote(*args), timeout=30)
                out[key] = "ALLOWED"
            except Exception as exc:  # noqa: BLE001 - what Ray hands back is the point
                out[key] = f"refused: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return out


def test_fx_code_cannot_stop_read_or_alter_a_risk_job(connect_desk):
    risk, fx = connect_desk("risk"), connect_desk("fx")
    victim = risk.submit(hold, 12.0, "risk's own answer", gpus=2, name="victim")
    wait_for(lambda: victim.status().state.value == "RUNNING", 90, what="risk job running")
    report = fx.submit(meddle, gpus=1, name="meddler").result(timeout=120)
    assert any(victim.job_id in k for k in report), report                 # it did find risk's runner
    assert not [k for k, v in report.items() if v == "ALLOWED"], report    # and every call was refused
    assert all(v.startswith("refused") for v in report.values()), report
    # With a guessed secret the runner itself refuses; with none, Ray refuses the call (the secret
    # is a required argument).
    guessed = {k: v for k, v in report.items() if k.endswith("(guess)")}
    assert guessed and all("RunnerAccessDenied" in v or "PermissionError" in v for v in guessed.values()), report
    assert [v for k, v in report.items() if k.endswith(".poll(proof)") and "RunnerAccessDenied" in v], report
    methods = [v for k, v in report.items() if k.endswith(".methods")]
    assert methods and all(m.endswith("poll,prove,request_stop,start") for m in methods), methods   # nothing else
    assert victim.result(timeout=120) == "risk's own answer"                # never stopped, result its own
    st = victim.status()
    assert st.state.value == "SUCCEEDED" and st.attempts == 0


# ------------------------------------------------------------------ an impostor under a runner's name
def fake_runner_class():
    """An actor that answers like a runner: it writes what it is asked into `marker`, and its poll
    says SUCCEEDED with a result of its own (on a desk's laptop, unpickling that runs its code)."""

    class FakeRunner:
        def __init__(self, marker: str, who: str, secret: str = "") -> None:
            self.marker, self.who, self.secret = marker, who, secret

        def _log(self, what: str) -> None:
            with open(self.marker, "a") as f:
                f.write(f"{what} {self.who}\n")

        def ready(self) -> str:
            return self.who

        def prove(self, nonce: bytes) -> str:
            self._log("prove")
            if self.secret:
                from rayfin.runner import proof
                return proof(self.secret, nonce)
            return "0" * 64

        def start(self, secret: str) -> dict:
            self._log("start")
            return {"state": "RUNNING", "pid": 1}

        def poll(self, secret: str) -> dict:
            self._log("poll")
            from ray import cloudpickle
            return {"state": "SUCCEEDED", "result": cloudpickle.dumps("the impostor's answer")}

        def request_stop(self, secret: str) -> None:
            self._log("request_stop")

    return FakeRunner


def squat_and_kill(victim: str, marker: str, namespace: str = "rayfin-desk-risk", watch_s: float = 60.0) -> dict:
    """Hostile desk code: take the names risk's job will have next (the one it would have without
    tags, and ones made from the tags it can read in the placement-group table), kill its runner,
    and take the runner's name as soon as the next generation's group shows."""
    import time

    import ray
    from ray.util import placement_group_table

    Fake = ray.remote(fake_runner_class())
    out: dict = {"squatted": [], "killed": "", "next_group": ""}

    def squat(name: str) -> None:
        try:
            ray.get(Fake.options(name=name, namespace=namespace, lifetime="detached", num_cpus=0)
                    .remote(marker, name).ready.remote(), timeout=60)
            out["squatted"].append(name)
        except Exception as exc:  # noqa: BLE001 - taken already
            out.setdefault("failed", []).append(f"{name}: {type(exc).__name__}")

    current = [e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
               if e["namespace"] == namespace and e["name"].startswith(f"job-{victim}~")]
    assert len(current) == 1, current
    gen = int(current[0].split("~", 1)[1].split("-")[0])
    nxt = f"{victim}~{gen + 1}"
    squat(f"job-{nxt}")                                       # the name a runner had before tags
    groups = [i.get("name") or "" for i in placement_group_table().values()]
    for g in groups:                                          # the group's tag, tried on the runner's name
        if g.startswith(f"rayfin-job-{victim}~{gen}-"):
            squat(f"job-{nxt}-{g.rsplit('-', 1)[1]}")
    ray.kill(ray.get_actor(current[0], namespace=namespace), no_restart=True)
    out["killed"] = current[0]
    deadline = time.time() + watch_s
    while time.time() < deadline and not out["next_group"]:
        for g in (i.get("name") or "" for i in placement_group_table().values()):
            if g.startswith(f"rayfin-job-{nxt}"):
                out["next_group"] = g
                squat("job-" + g[len("rayfin-job-"):])            # the next group's name, as a runner's
                squat(f"job-{nxt}-{g.rsplit('-', 1)[1]}")
                break
        time.sleep(0.01)
    return out


def _kill_named(names, namespace: str = "rayfin-desk-risk", prefix: str = "") -> None:
    import ray

    if prefix:   # and every other actor whose name starts so (what a failed run may have left)
        names = set(names) | {e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
                              if e["namespace"] == namespace and e["name"].startswith(prefix)}
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
        except ValueError:
            pass


def test_an_actor_squatting_a_runners_name_is_never_driven(connect_desk, tmp_path):
    """fx code takes every name risk's requeued job could get, then kills risk's runner: the job
    runs again under its next generation with a runner of rayfin's, ends with its own result, and
    no actor of fx's is ever asked to start or poll (nor is its result taken)."""
    risk, fx, admin = connect_desk("risk"), connect_desk("fx"), connect_desk(None)
    release, marker = tmp_path / "release", tmp_path / "fake-calls.log"
    t0 = time.time()
    victim = risk.submit(hold_until, str(release), 240.0, "risk's own answer", gpus=1, retries=1, name="victim")
    wait_for(lambda: victim.status().state.value == "RUNNING", 90, what="risk job running")
    report: dict = {}
    try:
        report = fx.submit(squat_and_kill, victim.job_id, str(marker), gpus=1, name="squatter").result(timeout=120)
        assert report["killed"] and f"job-{victim.job_id}~1" in report["squatted"], report
        assert report["next_group"], report                      # it saw the next generation's group
        wait_for(lambda: (s := victim.status()).attempts == 1 and s.state.value not in ("PENDING", "ADMITTED"), 120,
                 what="risk job started again, attempt 1")
        release.touch()
        assert victim.result(timeout=120) == "risk's own answer", marker.read_text() if marker.exists() else ""
    finally:
        release.touch()
        wait_for(lambda: victim.status().state.value in ("SUCCEEDED", "FAILED", "CANCELLED"), 120, what="risk job over")
        _kill_named(report.get("squatted", []), prefix=f"job-{victim.job_id}~")
    calls = marker.read_text().splitlines() if marker.exists() else []
    assert not [c for c in calls if c.split()[0] in ("start", "poll", "request_stop")], calls
    assert victim.status().state.value == "SUCCEEDED"
    # Policing never took one of the job's own groups for a foreign one while they came and went.
    assert not [e for e in admin.audit(since=t0) if e["kind"] == "outside_found"
                and e["data"]["name"].startswith(f"rayfin-job-{victim.job_id}~")]
    settled(admin)


def settled(admin) -> None:
    """Wait until no island is cordoned (the killed runner's) or held outside rayfin: the next
    test module on this cluster asks for whole pools."""
    wait_for(lambda: all(p["lost"] == 0 and p["outside"] == 0 for p in admin.pools().values()), 60,
             what="no island cordoned or held outside rayfin")


def test_the_backend_drives_only_an_actor_that_proves_it_is_the_runner(rayfin_env, tmp_path):
    """RayBackend on its own (a seed of its own, nothing reserved): an actor found under a runner's
    name is challenged before anything else; one that cannot prove it holds the job's secret is
    killed and listed, never sent start or poll; the runner an earlier controller made is used."""
    import ray
    from ray.exceptions import RayActorError

    from placement.topology import Topology
    from rayfin.controller.ray_backend import RayBackend, desk_namespace

    backend = RayBackend(Topology.from_config(rayfin_env.config.cluster), runner_key=os.urandom(32))
    ns, marker = desk_namespace("risk"), tmp_path / "calls.log"
    Fake = ray.remote(fake_runner_class())
    base = f"risk-{os.urandom(4).hex()}"
    made = []

    def actor(key: str, who: str, honest: bool = False):
        h = Fake.options(name=backend.runner_name(key), namespace=ns, lifetime="detached", num_cpus=0).remote(
            str(marker), who, backend.secret(key) if honest else "")
        made.append(h)
        assert ray.get(h.ready.remote(), timeout=60) == who
        return h

    def dead(h) -> bool:
        try:
            ray.get(h.ready.remote(), timeout=10)
            return False
        except RayActorError:
            return True

    try:
        # A new runner's name is taken by an impostor: it is killed, listed, and ours is made.
        key = f"{base}~1"
        squatter = actor(key, "squatter")
        ours = backend.claim(key, ns, lambda: actor(key, "ours", honest=True))
        assert ours._actor_id != squatter._actor_id and ray.get(ours.ready.remote()) == "ours"
        assert wait_for(lambda: dead(squatter), 30, what="impostor killed")
        (imp,) = backend.take_impostors()
        assert imp["actor_id"] == squatter._actor_id.hex() and imp["name"] == backend.runner_name(key), imp
        assert backend.impostors_killed == 1
        # The name is held by the job's runner (an earlier controller made it): it is used.
        again = backend.claim(key, ns, lambda: actor(key, "second", honest=True))
        assert again._actor_id == ours._actor_id and backend.take_impostors() == []
        # adopt (a controller restart): an impostor under a running job's runner name is never started.
        fake_key, real_key = f"{base}~2", f"{base}~3"
        fake = actor(fake_key, "adopted-fake")
        actor(real_key, "adopted-real", honest=True)
        backend.adopt(fake_key, "risk", (("n1-i0", 1.0),), running=True)
        backend.adopt(real_key, "risk", (("n1-i0", 1.0),), running=True)
        st = wait_for(lambda: (o := backend.observe([fake_key, real_key]).statuses).get(fake_key)
                      and o.get(real_key) and o, 60, what="both settled")
        assert st[fake_key].state == "LOST" and "not the job's runner" in st[fake_key].error, st
        assert st[real_key].state in ("RUNNING", "SUCCEEDED"), st                   # proved, then started
        assert wait_for(lambda: dead(fake), 30, what="adopted impostor killed")
        assert [i["key"] for i in backend.take_impostors()] == [fake_key]
    finally:
        for h in made:
            try:
                ray.kill(h, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
    calls = marker.read_text().splitlines()
    assert {c for c in calls if c.split()[0] in ("start", "poll", "request_stop")} <= {
        "start adopted-real", "poll adopted-real"}, calls
    assert "start adopted-real" in calls and "prove squatter" in calls and "prove adopted-fake" in calls


def test_a_gang_whose_workers_never_came_up_is_reported_lost(rayfin_env):
    """A gang's start that cannot bring its workers up answers LOST (with why), and the backend
    reports LOST, not RUNNING: the controller never takes a gang that never ran for a running one."""
    import ray
    from ray import cloudpickle

    from placement.topology import Topology
    from rayfin.controller.ray_backend import RayBackend, _Live, desk_namespace
    from rayfin.runner import JobRunner

    backend = RayBackend(Topology.from_config(rayfin_env.config.cluster), runner_key=os.urandom(32))
    key = f"risk-{os.urandom(4).hex()}~0"
    runner = ray.remote(JobRunner).options(num_cpus=0, namespace=desk_namespace("risk"), max_restarts=0).remote(
        backend.secret(key), key.split("~")[0], "risk", "callable", cloudpickle.dumps((print, (), {})),
        [["n1-i0", 2.0]], "rayfin-job-no-such-group", [{"rank": 0, "gpus": 1.0}, {"rank": 1, "gpus": 1.0}],
        max_result_bytes=1 << 20)
    try:
        backend._live[key] = _Live(desk="risk", runner=runner, start_ref=runner.start.remote(backend.secret(key)))
        st = wait_for(lambda: backend.observe([key]).statuses.get(key), 60, what="the start reply")
        assert st.state == "LOST" and "gang could not start" in st.error, st
    finally:
        ray.kill(runner, no_restart=True)


# ------------------------------------------------------------------ a group named like rayfin's
def group_named_like_rayfins(pool: str) -> str:
    """Hostile desk code: GPUs and another desk's pool in a group named as rayfin names its own."""
    from ray.util.placement_group import placement_group

    pg = placement_group([{"GPU": 4, f"rayfin_pool_{pool}": 4}], name="rayfin-job-x", lifetime="detached")
    return str(pg.id.hex())


def test_a_group_named_like_rayfins_is_policed(connect_desk):
    from ray._raylet import PlacementGroupID
    from ray.util import placement_group_table
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    fx, admin = connect_desk("fx"), connect_desk(None)
    t0 = time.time()
    pg_id = fx.submit(group_named_like_rayfins, "risk", gpus=1, name="disguise").result(timeout=120)
    try:
        found = wait_for(lambda: [e for e in admin.audit(since=t0) if e["kind"] == "outside_found"
                                  and e["data"]["id"] == pg_id], 30, what="the group found by policing")
        assert found[0]["data"]["kind"] == "placement_group" and found[0]["data"]["name"] == "rayfin-job-x"
        wait_for(lambda: placement_group_table().get(pg_id, {}).get("state") in (None, "REMOVED"), 30,
                 what="the group removed (policing.mode enforce)")
    finally:
        if placement_group_table().get(pg_id, {}).get("state") not in (None, "REMOVED"):
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
    settled(admin)


# ------------------------------------------------------------------ code in an argument
def plant_code_in_the_controller(name: str, namespace: str, marker: str) -> dict[str, str]:
    """Hostile desk code: calls to the controller whose arguments run code as they are
    unpickled (the token check comes too late for that): as a plain argument, inside the submit
    spec, inside an exception passed as the argument (Ray unpickles that on its error path), and
    Ray's `__ray_call__`, which runs a function inside any actor. Any of them would write
    `marker` from inside the controller."""
    import ray
    from ray.exceptions import RayTaskError

    class Plant:
        def __reduce__(self):
            return (exec, (f"open({marker!r}, 'w').write('ran in the controller')",))

    class PlantedError(Exception):
        def __reduce__(self):
            return (exec, (f"open({marker!r}, 'w').write('ran in the controller, from an error')",))

    def read_the_seed(controller) -> None:
        with open(marker, "w") as f:
            f.write(repr(controller.ledger.get_kv("runner_secret_seed")))

    ctl = ray.get_actor(name, namespace=namespace)
    calls = {"status(code as the token)": lambda: ctl.status.remote(Plant(), "job"),
             "submit(code in the spec)": lambda: ctl.submit.remote("t", "fx", {"payload": Plant()}),
             "status(code in an error)": lambda: ctl.status.remote(
                 RayTaskError("f", "traceback", PlantedError("x")), "job"),
             "__ray_call__(function)": lambda: ctl.__ray_call__.remote(read_the_seed),
             # not code, but as quiet: a stopped scheduling loop in a live actor is never restarted
             "shutdown()": lambda: ctl.shutdown.remote(),
             "shutdown(desk token)": lambda: ctl.shutdown.remote("fx-token-guess")}
    out: dict[str, str] = {}
    for label, call in calls.items():
        try:
            reply = ray.get(call(), timeout=30)
            refused = isinstance(reply, dict) and reply.get("ok") is False
            out[label] = f"refused by the method: {reply['error'].get('type')}" if refused else "ALLOWED"
        except Exception as exc:  # noqa: BLE001 - what Ray hands back is the point
            out[label] = f"refused: {type(exc).__name__}: {str(exc)[-300:]}"
    return out


def test_fx_code_cannot_run_code_inside_the_controller_through_an_argument(connect_desk, rayfin_env, tmp_path):
    import ray

    fx = connect_desk("fx")
    marker = tmp_path / "planted"
    cfg = rayfin_env.config.controller
    report = fx.submit(plant_code_in_the_controller, cfg.name, cfg.namespace, str(marker), gpus=1,
                       name="planter").result(timeout=120)
    assert report and all(v.startswith("refused") for v in report.values()), report
    assert not marker.exists(), marker.read_text()                   # nothing ran in the controller
    # The plain pickles never reached the method: the guard refused them, naming what it refused.
    for label in ("status(code as the token)", "submit(code in the spec)", "__ray_call__(function)"):
        assert "refused to unpickle" in report[label], report
    # The error could not be unpickled (Ray's UnserializableException), so the call failed.
    assert "UnserializableException" in report["status(code in an error)"], report
    # The controller's own stop needs the admin credential or the deploy key.
    assert all(report[k] in ("refused by the method: Unauthorized", "refused by the method: Forbidden")
               for k in ("shutdown()", "shutdown(desk token)")), report
    ping = ray.get(rayfin_env.controller.ping.remote(), timeout=30)["value"]
    guard = ping["unpickle_guard"]
    assert guard["installed"] is True
    assert guard["by_global"].get("builtins.exec", 0) >= 3, guard           # named in what it refused
    assert any("_make_function" in g for g in guard["by_global"]), guard    # the cloudpickled function
    # The controller still serves (its loop was not stopped): a job of the same desk runs to its result.
    assert fx.submit(hold, 0.1, "after", gpus=1, name="after").result(timeout=120) == "after"
