"""Ray adapter of the controller backend: placement groups + detached runner actors.

Names, so a restarted controller finds what it owns (key = "<job_id>~<generation>"):
    placement group  rayfin-job-<key>-<tag>          (controller's namespace, detached)
    runner actor     job-<key>-<tag>                 (namespace rayfin-desk-<desk>, detached; rank 0)
    gang workers     unnamed, owned by the runner    (ranks 1..W-1; they die with it)
The tags are 12 hex digits of an HMAC of the key under the controller's seed, one for groups and
another for runners: nobody else can tell the name of a generation that does not exist yet (and
take it first), nor a runner's name from its group's. One bundle per worker, in rank order
(placement.ranks.rank_layout), each asking for `{"GPU": u, "rayfin_island_<id>": u,
"rayfin_pool_<pool>": u}`: the island resource exists only on that island's Ray node, so Ray
itself keeps the bundle (and the GPU ids it hands out) there, and the pool resource means Ray
would refuse to place it outside the pool.

Every call to a runner carries the job's secret, an HMAC of the reservation key under the
controller's runner key: desk code that looks the runner up by name cannot drive it. The other
way round, an actor found by name is anyone's (Ray names carry no owner): before it gets the
secret it must prove it holds it (`JobRunner.prove`, a challenge answered with an HMAC under
the secret). One that cannot is killed and listed in `impostors` (`take_impostors` for the audit).
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import ray
from ray.exceptions import ActorAlreadyExistsError, GetTimeoutError, RayActorError, RayError
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from ray.util.state import get_actor, list_actors

from placement.ranks import rank_layout
from placement.topology import Topology, island_resource, pool_resource
from rayfin.controller.backend import LaunchSpec, Observation, Owned, RunnerStatus, aged
from rayfin.runner import JobRunner, proof
from rayfin.telemetry.tracing import job_context

log = logging.getLogger("rayfin.backend")
GROUP_PREFIX = "rayfin-job-"
RUNNER_PREFIX = "job-"
TAG_HEX = 12
_TAG = re.compile(r"^[0-9a-f]{%d}$" % TAG_HEX)
PROVE_TIMEOUT_S = 30.0   # adopt: how long a runner found by name has to answer its challenge ...
PROVE_GIVE_UP_S = 300.0  # ... renewed while Ray still creates it (a head kill can leave that stuck: ray#66199)
CLAIM_PROVE_S = 2.0      # start, name already taken: how long its holder has to answer (the cycle waits)
NAME_FREE_S = 2.0        # ... and, once it was killed, for its name to free
_SILENT = "no answer to the challenge in"
RETIRED_S = 120.0        # a released group still counts as rayfin's this long (its actors are dying)


def state_api_address() -> str:
    """This cluster's GCS address for Ray's state API.

    Without it the state API finds "the latest cluster started on this machine", which is another
    cluster whenever more than one runs here (a second test session, a benchmark).
    """
    return str(ray.get_runtime_context().gcs_address)


def desk_namespace(desk: str) -> str:
    return f"rayfin-desk-{desk}"


def runner_name(key: str, tag: str = "") -> str:
    """A runner's actor name; `tag`: RayBackend.tag(key, "runner") (no tag: the names before tags)."""
    return f"{RUNNER_PREFIX}{key}-{tag}" if tag else f"{RUNNER_PREFIX}{key}"


def group_name(key: str, tag: str = "") -> str:
    """A job's placement group name; `tag`: RayBackend.tag(key, "group")."""
    return f"{GROUP_PREFIX}{key}-{tag}" if tag else f"{GROUP_PREFIX}{key}"


def split_name(name: str, prefix: str) -> tuple[str, str] | None:
    """(key, tag) of a name `<prefix><key>-<tag>`; None if it has no such shape."""
    if not name.startswith(prefix):
        return None
    body = name[len(prefix):]
    key, sep, tag = body[:-TAG_HEX - 1], body[-TAG_HEX - 1:-TAG_HEX], body[-TAG_HEX:]
    if not key or sep != "-" or not _TAG.match(tag):
        return None
    return key, tag


@dataclass
class _Live:
    desk: str
    pg: PlacementGroup | None = None
    ready_ref: Any = None
    runner: Any = None
    poll_ref: Any = None
    start_ref: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    last: RunnerStatus | None = None
    poll_sent: float | None = None     # time.monotonic() the pending poll was asked
    last_asked: float | None = None    # ... and that of the poll `last` answers (backend.aged)
    # An actor found under the runner's name (adopt), not trusted until it answers its challenge.
    suspect: Any = None
    prove_ref: Any = None
    nonce: bytes = b""
    prove_by: float = 0.0              # time.monotonic() by which it must have answered
    prove_since: float = 0.0           # ... and when it was first asked
    stop_asked: bool = False           # a stop asked while it was being challenged: sent once it proves


def _cannot_answer(exc: BaseException) -> str:
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"no answer to the challenge: {type(exc).__name__}: {first}"


def _coming_up(handle: Any) -> bool:
    """Whether Ray is still creating the actor behind `handle` (or cannot say: the state API is
    down); False once it is alive, dead or unknown to Ray."""
    try:
        row = get_actor(handle._actor_id.hex(), address=state_api_address())
    except Exception:  # noqa: BLE001 - the state API needs the dashboard: do not judge blind
        return True
    return row is not None and row.state in ("DEPENDENCIES_UNREADY", "PENDING_CREATION", "RESTARTING")


def _totals(bundles: Any) -> dict[str, float]:
    """Resources summed over bundles (rounded: float sums of GPU shares)."""
    out: dict[str, float] = {}
    for res in bundles:
        for k, v in res.items():
            out[k] = out.get(k, 0.0) + float(v)
    return {k: round(v, 6) for k, v in out.items() if round(v, 6)}


def bundles_for(topology: Topology, placement: tuple[tuple[str, float], ...], unit: int) -> list[dict[str, float]]:
    """One bundle per worker, in rank order: bundle index = rank."""
    return [{"GPU": s.gpus, island_resource(s.island): s.gpus, pool_resource(topology.island(s.island).pool): s.gpus}
            for s in rank_layout(topology, placement, unit)]


class RayBackend:
    def __init__(self, topology: Topology, runner_key: bytes = b"") -> None:
        self.topology = topology
        self._live: dict[str, _Live] = {}
        self._runner_cls = ray.remote(JobRunner)
        self._runner_key = runner_key
        # Ids (hex) of the groups this backend holds (None), or released (time.monotonic() then):
        # what policing takes for rayfin's (held_groups). Read by the patrol's thread.
        self._held: dict[str, float | None] = {}
        self._held_lock = threading.Lock()
        self._retired_runners: dict[str, tuple[str, str, float]] = {}   # actor id -> (desk, job, released at)
        # Actors found under a runner's name that could not prove they are it, and were killed.
        self.impostors: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self.impostors_killed = 0
        self._impostors_new: list[dict[str, Any]] = []

    def secret(self, key: str) -> str:
        return hmac.new(self._runner_key, key.encode(), hashlib.sha256).hexdigest()

    def tag(self, key: str, what: str) -> str:
        """The suffix of a key's names (`what`: "group" or "runner"): nobody without the seed can
        tell it, so nobody can take a name before rayfin makes it. A domain of its own: a tag is
        public (it is in the name), and no part of a secret."""
        msg = f"rayfin-name:{what}:{key}".encode()
        return hmac.new(self._runner_key, msg, hashlib.sha256).hexdigest()[:TAG_HEX]

    def runner_name(self, key: str) -> str:
        return runner_name(key, self.tag(key, "runner"))

    def group_name(self, key: str) -> str:
        return group_name(key, self.tag(key, "group"))

    def _key_of(self, name: str, prefix: str, what: str) -> str | None:
        """The key of one of this controller's names; None for any other name (e.g. one that
        only looks like rayfin's)."""
        parsed = split_name(name, prefix)
        if parsed is None or not hmac.compare_digest(parsed[1], self.tag(parsed[0], what)):
            return None
        return parsed[0]

    # -- the groups rayfin holds (policing) --
    def runner_ids(self) -> dict[str, tuple[str, str]]:
        """Actor id (hex) -> (desk, job id) of every runner this backend made or adopted (after
        its challenge). Policing names the job whose code started something only through these:
        anyone can create an actor under a runner-like name in a desk's namespace."""
        out: dict[str, tuple[str, str]] = {}
        now = time.monotonic()
        with self._held_lock:
            for aid in [a for a, (_, _, t) in self._retired_runners.items() if now - t > RETIRED_S]:
                del self._retired_runners[aid]
            out.update({a: (desk, job) for a, (desk, job, _) in self._retired_runners.items()})
        for key, live in list(self._live.items()):
            if live.runner is not None:
                out[live.runner._actor_id.hex()] = (live.desk, key.split("~")[0])
        return out

    def _retire_runner(self, runner: Any, desk: str, key: str) -> None:
        """What a released runner started is still its job's while Ray tears it down (runner_ids
        names it for RETIRED_S more)."""
        now = time.monotonic()
        with self._held_lock:
            for aid in [a for a, (_, _, t) in self._retired_runners.items() if now - t > RETIRED_S]:
                del self._retired_runners[aid]
            self._retired_runners[runner._actor_id.hex()] = (desk, key.split("~")[0], now)

    def held_groups(self) -> frozenset[str]:
        """Ids (hex, as in `placement_group_table()`) of the placement groups this backend holds,
        and of those it released in the last RETIRED_S (their runners may still be dying). Policing
        takes these, and only these, for rayfin's: a name proves nothing. Thread-safe; a group
        being made when this is read is in it (reserve holds the lock while it creates it)."""
        now = time.monotonic()
        with self._held_lock:
            for gid in [g for g, t in self._held.items() if t is not None and now - t > RETIRED_S]:
                del self._held[gid]
            return frozenset(self._held)

    def _hold(self, pg: PlacementGroup | None) -> None:
        if pg is not None:
            with self._held_lock:
                self._held[pg.id.hex()] = None

    def _retire(self, pg: PlacementGroup | None) -> None:
        """A group released: still rayfin's for RETIRED_S (its runner may be dying), whether this
        backend made it or found it (recovery's orphans, a previous controller's)."""
        if pg is not None:
            with self._held_lock:
                self._held[pg.id.hex()] = time.monotonic()

    # -- impostors --
    def take_impostors(self) -> list[dict[str, Any]]:
        """The impostors killed since the last call (for the controller's audit)."""
        out, self._impostors_new = self._impostors_new, []
        return out

    def _proves(self, key: str, nonce: bytes, answer: Any) -> bool:
        return isinstance(answer, str) and hmac.compare_digest(answer.encode(), proof(self.secret(key), nonce).encode())

    def _challenge(self, key: str, handle: Any, timeout_s: float) -> str | None:
        """Ask `handle` to prove it holds `key`'s secret, waiting at most `timeout_s`. None: it
        did; else why not."""
        nonce = secrets.token_bytes(16)
        try:
            answer = ray.get(handle.prove.remote(nonce), timeout=timeout_s)
        except GetTimeoutError:
            return f"{_SILENT} {timeout_s:g}s"
        except Exception as exc:  # noqa: BLE001 - no prove method, refused, died: not our runner
            return _cannot_answer(exc)
        return None if self._proves(key, nonce, answer) else "a wrong answer to the challenge"

    def _impostor(self, key: str, namespace: str, handle: Any, why: str) -> None:
        """Kill an actor that holds a runner's name without being the runner, and say so."""
        try:
            actor_id = handle._actor_id.hex()
        except Exception:  # noqa: BLE001
            actor_id = ""
        try:
            ray.kill(handle, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - already gone
            log.debug("kill impostor %s: %s", actor_id, exc)
        entry = {"key": key, "job_id": key.split("~")[0], "name": self.runner_name(key), "namespace": namespace,
                 "actor_id": actor_id, "why": why, "at": time.time()}
        self.impostors.append(entry)
        self._impostors_new.append(entry)
        self.impostors_killed += 1
        log.warning("impostor runner: actor %s named %s in namespace %s is not job %s's runner (%s): killed",
                    actor_id, entry["name"], namespace, key, why)

    # -- reserve / start --
    def reserve(self, key: str, desk: str, placement: tuple[tuple[str, float], ...], unit: int = 1) -> None:
        bundles = bundles_for(self.topology, placement, unit)
        with job_context(key.split("~")[0]), self._held_lock:
            pg = placement_group(bundles, strategy="PACK", name=self.group_name(key), lifetime="detached")
            self._held[pg.id.hex()] = None
        self._live[key] = _Live(desk=desk, pg=pg, ready_ref=pg.ready())

    def start(self, spec: LaunchSpec) -> None:
        with job_context(spec.job_id):  # the runner's Ray calls join the job's trace
            self._start(spec)

    def _start(self, spec: LaunchSpec) -> None:
        live = self._live.setdefault(spec.name, _Live(desk=spec.desk))
        if live.pg is None:
            live.pg = ray.util.get_placement_group(self.group_name(spec.name))
            self._hold(live.pg)
        if live.runner is None:
            layout = rank_layout(self.topology, spec.placement, spec.unit)
            slots = [s.to_dict() for s in layout]
            name, namespace = self.runner_name(spec.name), desk_namespace(spec.desk)

            def make() -> Any:
                return self._runner_cls.options(
                    name=name, namespace=namespace, lifetime="detached",
                    num_cpus=0, num_gpus=float(layout[0].gpus), max_restarts=0, max_concurrency=8,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(live.pg, placement_group_bundle_index=0),
                ).remote(self.secret(spec.name), spec.job_id, spec.desk, spec.kind, spec.payload,
                         [list(p) for p in spec.placement], self.group_name(spec.name), slots,
                         max_result_bytes=spec.max_result_bytes, max_log_bytes=spec.max_log_bytes,
                         priority=spec.priority, dist_backend=spec.dist_backend, checkpoint_dir=spec.checkpoint_dir,
                         attempt=spec.attempt, comm=spec.comm)

            live.runner = self.claim(spec.name, namespace, make)
        live.start_ref = live.runner.start.remote(self.secret(spec.name))

    def claim(self, key: str, namespace: str, make: Callable[[], Any]) -> Any:
        """A new runner for `key`, made by `make()` under `self.runner_name(key)`. Never one
        found by name unchallenged: if the name is taken, its holder must prove it holds the job's
        secret (a runner an earlier controller made: it is used); one that cannot is killed
        (`_impostor`), and ours is made once the name frees (NAME_FREE_S at most, else an error:
        the job is then requeued under a new name)."""
        name = self.runner_name(key)
        try:
            return make()
        except ActorAlreadyExistsError:
            pass
        try:
            found = ray.get_actor(name, namespace=namespace)
        except ValueError:   # gone since
            found = None
        if found is not None:
            why = self._challenge(key, found, CLAIM_PROVE_S)
            if why is None:
                log.info("runner %s already exists and holds the job's secret: using it", name)
                return found
            if why.startswith(_SILENT):
                # Silence is no proof of an impostor (a runner of an earlier controller still being
                # created, a loaded node): the start fails, the job is requeued under a new name,
                # and releasing this one stops whatever holds it, with no impostor audit.
                raise RuntimeError(f"the runner's name {name} is held by an actor that gave {why}")
            self._impostor(key, namespace, found, why)
        deadline = time.monotonic() + NAME_FREE_S
        while True:
            try:
                return make()
            except ActorAlreadyExistsError:
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"the runner's name {name} is held by an actor that is not the job's "
                                       f"runner, and was still taken {NAME_FREE_S:g}s after it was killed") from None
                time.sleep(0.05)

    # -- observe --
    def observe(self, keys: list[str]) -> Observation:
        ready: set[str] = set()
        waiting: dict[Any, tuple[str, str]] = {}
        for key in keys:
            live = self._live.get(key)
            if live is None:
                continue
            if live.ready_ref is not None:
                waiting[live.ready_ref] = (key, "ready")
            if live.prove_ref is not None:
                waiting[live.prove_ref] = (key, "prove")
            if live.start_ref is not None:
                waiting[live.start_ref] = (key, "start")
            if live.runner is not None and live.poll_ref is None and live.start_ref is None:
                live.poll_ref = live.runner.poll.remote(self.secret(key))
                live.poll_sent = time.monotonic()
            if live.poll_ref is not None:
                waiting[live.poll_ref] = (key, "poll")
        if waiting:
            done, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=0)
            for ref in done:
                key, what = waiting[ref]
                live = self._live[key]
                if what == "prove":
                    self._settle(key, live, ref)
                    continue
                try:
                    value = ray.get(ref, timeout=0)
                except (RayActorError, GetTimeoutError, RayError) as exc:
                    if what == "ready":
                        live.ready_ref = None
                        continue
                    live.last = RunnerStatus("LOST", error=f"runner died: {type(exc).__name__}: {str(exc)[:300]}")
                    live.start_ref = live.poll_ref = None
                    continue
                if what == "ready":
                    live.ready_ref = None
                    ready.add(key)
                elif what == "start":
                    live.start_ref = None
                    info = dict(value) if isinstance(value, dict) else {}
                    state, error = info.pop("state", "RUNNING"), info.pop("error", "")
                    live.info = info
                    if state == "LOST":   # its gang's workers never came up: it never ran
                        live.last = RunnerStatus("LOST", error=str(error) or "the runner could not start its gang",
                                                 info=info)
                    else:
                        live.last = RunnerStatus("RUNNING", info=info)
                else:
                    live.poll_ref = None
                    live.last_asked = live.poll_sent
                    live.last = RunnerStatus(value["state"], error=value.get("error", ""),
                                             result=value.get("result"), progress=value.get("progress", 0.0),
                                             info=live.info, results=tuple(value.get("results") or ()),
                                             logs=tuple((int(r), t) for r, t in value.get("logs") or ()),
                                             stopped=value.get("stopped"),
                                             checkpoint_age_s=value.get("checkpoint_age_s"))
        statuses: dict[str, RunnerStatus] = {}
        now = time.monotonic()
        for j in keys:
            live = self._live.get(j)
            if live is not None and live.prove_ref is not None and now > live.prove_by:
                if now - live.prove_since < PROVE_GIVE_UP_S and _coming_up(live.suspect):
                    live.prove_by = now + PROVE_TIMEOUT_S     # a runner Ray has not finished creating
                else:
                    self._settle(j, live, None)
            last = live.last if live is not None else None
            if live is None or last is None:
                continue
            if last.logs:   # output is handed over once; the status itself is reported every cycle
                live.last = replace(last, logs=())
            statuses[j] = aged(last, live.last_asked, now)   # its checkpoint age as of now
        return Observation(frozenset(ready), statuses, self._unavailable())

    def _shaped_as(self, pg: PlacementGroup, placement: tuple[tuple[str, float], ...]) -> bool:
        """Whether a group found by name holds exactly what the job's own group would
        (`bundles_for`): the same resources in the same amounts, nothing more."""
        try:
            bundles = (placement_group_table(pg) or {}).get("bundles") or {}
        except Exception as exc:  # noqa: BLE001 - cannot tell: not adopted
            log.warning("placement group table: %s", exc)
            return False
        return _totals(bundles.values()) == _totals(bundles_for(self.topology, placement, 1))

    def _settle(self, key: str, live: _Live, ref: Any) -> None:
        """The challenge of the actor found under `key`'s runner name was answered (`ref`), or
        not in time (None: the job is lost, nothing is killed as an impostor): it becomes the
        job's runner and is started, or, with a wrong answer or none possible, it is killed."""
        suspect, nonce = live.suspect, live.nonce
        live.suspect = live.prove_ref = None
        live.nonce = b""
        if ref is None:
            # Silence is not proof of an impostor (a loaded node, a runner stuck in creation): the
            # job is lost, and release() kills whatever holds the name, with no impostor audit.
            live.last = RunnerStatus("LOST", error="the runner found under its name after the controller's restart "
                                                   "never answered its challenge")
            return
        why: str | None
        try:
            answer = ray.get(ref, timeout=0)
            why = None if self._proves(key, nonce, answer) else "a wrong answer to the challenge"
        except RayActorError as exc:   # it died: a runner lost, not an impostor
            live.last = RunnerStatus("LOST", error=f"runner died: {type(exc).__name__}: {str(exc)[:300]}")
            return
        except Exception as exc:  # noqa: BLE001 - no prove method, or it raised: not our runner
            why = _cannot_answer(exc)
        if why is None:
            live.runner = suspect
            # start() is idempotent: if the old controller died between creating the runner and
            # starting it, this starts it; otherwise it only returns where the job runs.
            live.start_ref = suspect.start.remote(self.secret(key))
            if live.stop_asked:
                suspect.request_stop.remote(self.secret(key))
            return
        self._impostor(key, desk_namespace(live.desk), suspect, why)
        live.last = RunnerStatus("LOST", error=f"the actor under the runner's name is not the job's runner ({why}); "
                                               "it was killed")

    def _unavailable(self) -> dict[str, float]:
        """Configured islands with no live Ray node (crashed, removed, or not up yet)."""
        alive = {(n.get("Labels") or {}).get("rayfin.io/island") for n in ray.nodes() if n.get("Alive")}
        return {i.id: float(i.gpus) for i in self.topology.islands if i.id not in alive}

    # -- stop / release --
    def request_stop(self, key: str) -> None:
        live = self._live.get(key)
        if live is None:
            return
        if live.runner is not None:
            live.runner.request_stop.remote(self.secret(key))
        elif live.suspect is not None:
            live.stop_asked = True

    def release(self, key: str, desk: str) -> None:
        live = self._live.pop(key, None) or _Live(desk=desk)
        runners = [h for h in (live.runner, live.suspect) if h is not None]
        if live.runner is not None:
            self._retire_runner(live.runner, desk, key)
        if not runners:
            # By name: this controller's, and the untagged name of the rayfin before tags.
            for name in (self.runner_name(key), runner_name(key)):
                try:
                    runners.append(ray.get_actor(name, namespace=desk_namespace(desk)))
                except ValueError:
                    pass
        for runner in runners:
            try:
                ray.kill(runner, no_restart=True)
            except RayError as exc:  # already gone
                log.debug("kill %s: %s", key, exc)
        groups = [live.pg] if live.pg is not None else []
        if not groups:
            for name in (self.group_name(key), group_name(key)):
                try:
                    groups.append(ray.util.get_placement_group(name))
                except ValueError:
                    pass
        for pg in groups:
            try:
                remove_placement_group(pg)
            except Exception as exc:  # noqa: BLE001 - already removed
                log.debug("remove pg %s: %s", key, exc)
            self._retire(pg)

    # -- recovery --
    def owned(self, desks: list[str]) -> Owned:
        """This controller's groups and runners, by name: only names whose tag is this
        controller's (a group or actor named like rayfin's by anyone else is not rayfin's)."""
        groups = set()
        for info in placement_group_table().values():
            key = self._key_of(info.get("name") or "", GROUP_PREFIX, "group")
            if key is not None and info.get("state") != "REMOVED":
                groups.add(key)
        runners = set()
        try:
            for a in list_actors(address=state_api_address(), filters=[("state", "!=", "DEAD")], limit=10000, raise_on_missing_output=False):
                if a.name and (a.ray_namespace or "").startswith("rayfin-desk-"):
                    key = self._key_of(a.name, RUNNER_PREFIX, "runner")
                    if key is not None:
                        runners.add(key)
        except Exception as exc:  # noqa: BLE001 - state API needs the dashboard; fall back to lookups
            log.info("state API unavailable (%s); runners are looked up by name", exc)
        return Owned(frozenset(groups), frozenset(runners))

    def adopt(self, key: str, desk: str, placement: tuple[tuple[str, float], ...], running: bool) -> None:
        live = self._live.setdefault(key, _Live(desk=desk))
        try:
            pg = ray.util.get_placement_group(self.group_name(key))
        except ValueError:
            pg = None
        if pg is not None and not self._shaped_as(pg, placement):
            # Someone removed the job's group while no controller watched and made one of its own
            # under the (readable) name, with other resources: not ours, so policing sees it.
            log.warning("group %s does not hold the job's placement %s: not adopted", self.group_name(key), placement)
            pg = None
        live.pg = pg
        if pg is not None:
            self._hold(pg)
            live.ready_ref = pg.ready() if not running else None
        if running:
            try:
                found = ray.get_actor(self.runner_name(key), namespace=desk_namespace(desk))
            except ValueError:
                live.last = RunnerStatus("LOST", error="runner not found after controller restart")
                return
            # Anyone may hold the name: the actor is not sent the secret (nor its result taken)
            # until it proves it holds the secret; observe() settles that (`_settle`).
            live.runner = None
            live.nonce = secrets.token_bytes(16)
            live.suspect, live.prove_since = found, time.monotonic()
            live.prove_by = live.prove_since + PROVE_TIMEOUT_S
            try:
                live.prove_ref = found.prove.remote(live.nonce)
            except Exception as exc:  # noqa: BLE001 - no prove method: not a rayfin runner
                live.prove_ref = None
                self._impostor(key, desk_namespace(desk), found, f"cannot be challenged: {type(exc).__name__}")
                live.suspect = None
                live.last = RunnerStatus("LOST", error="the actor under the runner's name is not the job's runner; "
                                                       "it was killed")
