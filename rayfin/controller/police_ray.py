"""Ray side of policing: list what holds resources through Ray's state API and GCS, and stop
what rayfin did not create. Classification is pure (`rayfin.controller.policing`).

Stopping (docs/security.md has the details): `ray.kill` needs a handle and handles are
by name only, and no public API cancels a task by id. So a small agent actor per node (pinned by
node affinity, no CPU) sends SIGKILL to the worker process; a killed task is retried by Ray on a
new process, so every sweep stops what is still there; a placement group is removed by id; and
the rayfin job whose code started the work is failed, which kills its runner, and Ray then kills
what that runner owns.

Which groups are rayfin's is the controller backend's word (`held`: the ids it holds), never a
group's name. The agents have no names (one found by name could be anyone's, answering "gone"
to every kill): the controller keeps their handles, and drops one whose agent died.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
import time
from typing import Any, Callable

import ray
from ray._raylet import PlacementGroupID
from ray.exceptions import RayActorError
from ray.util.metrics import Counter, Gauge
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from ray.util.state import get_actor, list_actors, list_tasks

from rayfin.controller.policing import Finding, GpuProcess, Holder, Owners, parse_nvidia_smi
from rayfin.controller.ray_backend import state_api_address

log = logging.getLogger("rayfin.police")
LIST_LIMIT = 10_000       # rows asked of the state API per list
AGENT_OVERDUE_S = 30.0    # an agent that has not listed its GPUs in this long is replaced


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ")
    except OSError:
        return None


def _is_ray_worker(cmd: bytes) -> bool:
    return b"default_worker.py" in cmd or cmd.startswith(b"ray::")


@functools.lru_cache(maxsize=1)
def _my_raylet() -> bytes:
    """The raylet binary that started this agent (its parent's first argument): read once."""
    return (_cmdline(os.getppid()) or b"").split(b" ")[0]


def _is_raylet(pid: int) -> bool:
    """A process run from this node's raylet binary (the agent's own parent's), or, outside Ray
    (tests), one whose first argument names a raylet."""
    argv0 = (_cmdline(pid) or b"").split(b" ")[0]
    mine = _my_raylet()
    if mine.endswith(b"/raylet"):
        return argv0 == mine
    return argv0.endswith(b"raylet")


def _worker_of(pid: int) -> int | None:
    """The Ray worker that `pid` is or runs under: walking up to a raylet, the process nearest
    the raylet that is titled ray::... (a worker, even when Ray launched it through a wrapper
    such as nsys or uv), else one running default_worker.py (a worker not yet titled). A
    process can retitle itself ray::busy, but it is then below its worker, not nearest the
    raylet; a chain that reaches no raylet is under no Ray worker."""
    chain: list[int] = []
    walk = pid
    for _ in range(64):
        if _is_raylet(walk):
            titled = [p for p in chain if (_cmdline(p) or b"").startswith(b"ray::")]
            fresh = [p for p in chain if b"default_worker.py" in (_cmdline(p) or b"")]
            found = titled or fresh
            return found[-1] if found else None
        chain.append(walk)
        nxt = _parent(walk)
        if nxt is None or nxt <= 1:
            return None
        walk = nxt
    return None


def _stat(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat from the state letter on (field 3 is [0]): the name in parentheses may
    hold spaces."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:].split()
    except (OSError, ValueError):
        return None


def _stat_field(pid: int, field: int) -> int | None:
    """Field `field` (1-based, as in proc(5)) of /proc/<pid>/stat, a number; None if unreadable."""
    st = _stat(pid)
    try:
        return int(st[field - 3]) if st else None
    except (ValueError, IndexError):
        return None


def _parent(pid: int) -> int | None:
    return _stat_field(pid, 4)


def _started(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (field 22): with the pid, who it is."""
    return _stat_field(pid, 22)


def _holds_a_gpu(pid: int) -> bool:
    """Whether the process has an NVIDIA device open: the pid NVML gave is one of this pid
    namespace's (in a container without the host's pids, NVML's pids are the host's)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/dev/nvidia") for fd in os.listdir(f"/proc/{pid}/fd"))
    except PermissionError:     # not ours to read (not dumpable, another user): it exists here
        return os.path.exists(f"/proc/{pid}")
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents before their children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        if p != os.getpid() and p not in out:
            out.append(p)
            todo.extend(children.get(p, []))
    return out


class PolicingAgent:
    """One per node. Kills a Ray worker process by pid, and only a Ray worker (never the raylet,
    the GCS or anything else that happens to reuse a pid). Lists the processes on the node's GPUs
    (nvidia-smi, i.e. NVML) with the Ray worker each runs in or under."""

    def gpu_processes(self) -> dict[str, Any]:
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return {"ok": False, "why": "no nvidia-smi on this node", "back_off": True}
        try:
            gpus = subprocess.run([smi, "--query-gpu=index,uuid", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=10)
            apps = subprocess.run([smi, "--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            return {"ok": False, "why": f"nvidia-smi: {type(exc).__name__}"}
        if gpus.returncode != 0 or apps.returncode != 0:
            return {"ok": False, "why": f"nvidia-smi exited {gpus.returncode or apps.returncode}: "
                                        f"{(gpus.stderr or apps.stderr).strip()[:200]}"}
        procs = []
        rows = parse_nvidia_smi(gpus.stdout, apps.stdout)
        mine = [r for r in rows if _holds_a_gpu(r[2])]
        if rows and not mine:
            return {"ok": False, "other_namespace": True, "why": "none of the pids NVML lists is a process here "
                    "with a GPU open (another pid namespace: a container without the host's pids)"}
        for gpu, uuid, pid, mib in mine:      # the others ended since NVML listed them
            cmd, worker = _cmdline(pid) or b"", _worker_of(pid)
            title = (_cmdline(worker) or b"") if worker is not None else b""
            procs.append({"pid": pid, "gpu": gpu, "uuid": uuid, "used_mib": mib, "worker_pid": worker,
                          "cmd": cmd.decode(errors="replace")[:200],
                          "worker_title": title.decode(errors="replace")[:200],
                          "worker_start": _started(worker) if worker is not None else None})
        return {"ok": True, "procs": procs}

    def kill(self, pid: int, start: int | None = None, idle: bool = False) -> str:
        """SIGKILL to a Ray worker and what it started; `start` (clock ticks, from
        `gpu_processes`): only if the pid is still that process, not a worker that reused it;
        `idle`: only if it still runs nothing (Ray may have just given it a task)."""
        cmd = _cmdline(pid)
        if cmd is None:
            return "gone"
        if not _is_ray_worker(cmd) or _worker_of(pid) != pid:
            return "not a ray worker"
        if start is not None and _started(pid) != start:
            return "gone"
        if idle and not cmd.startswith(b"ray::IDLE"):
            return "busy now"
        if pid == os.getpid():
            return "self"
        # Stopped first, so that it cannot react to what follows (a shell waiting on its command
        # would exit once the command is killed, and the pid be gone before our SIGKILL: a kill
        # we caused, read as "gone", seen on a loaded machine). Then its children (a command it
        # started on a GPU would live on under init otherwise), then it.
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return "gone"
        for child in reversed(_descendants(pid)):
            try:
                os.kill(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return "gone"
        return "killed"


def _real_gpus(resources: dict[str, Any]) -> bool:
    return float(resources.get("GPU", 0)) > 0 and any(k.startswith("accelerator_type:") for k in resources)


def _actor_of_task(task_id: str | None) -> str | None:
    """An actor task's id ends with its actor's id (16 of its 24 bytes)."""
    return task_id[-32:] if task_id and len(task_id) == 48 else None


def _ms(value: Any) -> float | None:
    return float(value) / 1000.0 if value else None


class RayPolice:
    def __init__(self, serving_apps: frozenset[str] = frozenset(), *,
                 held: Callable[[], frozenset[str]], gpu_processes: bool = True,
                 runners: Callable[[], dict[str, tuple[str, str]]] | None = None) -> None:
        """`held`: the ids (hex) of the placement groups rayfin holds (RayBackend.held_groups);
        `gpu_processes`: also list the processes on real GPUs (policing.gpu_processes);
        `runners`: actor id -> (desk, job) of rayfin's runners (RayBackend.runner_ids), the only
        actors whose work is charged to a job."""
        self.serving_apps = serving_apps
        self.runners = runners
        self.gpu_processes = gpu_processes
        self.held = held
        self._agents: dict[str, Any] = {}
        self._agent_cls = ray.remote(PolicingAgent)
        self._metrics: dict[str, Any] = {}
        self._pending: dict[tuple[str, int, int | None], tuple[Any, Any]] = {}   # (node, pid, start) -> (answer to come, agent)
        self._gpu_asks: dict[str, Any] = {}                 # node -> the agent's GPU process list to come
        self._gpu_asked_at: dict[str, float] = {}           # ... asked then (time.monotonic)
        self._gpu_asked_of: dict[str, Any] = {}             # ... of that agent
        self._ns_strikes: dict[str, int] = {}               # node -> reads in a row with NVML's pids not its own
        self._no_nvml: dict[str, float] = {}                # node -> when it said it has no nvidia-smi

    # -- observe --
    def observe(self) -> tuple[list[Holder], Owners]:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        islands = {n["NodeID"]: (n.get("Labels") or {}).get("rayfin.io/island", "") for n in alive}
        # Asked first, answered after the state API below: a process seen on a GPU is seen with
        # the task or actor it ran then (a later one only makes it a suspect for one sweep).
        # Only nodes where Ray found real GPUs (it adds `accelerator_type:<model>`); simulated
        # GPUs have none, so a laptop's cluster starts no agent for this.
        if self.gpu_processes:
            self._ask_gpus([n["NodeID"] for n in alive if _real_gpus(n.get("Resources") or {})])
        holders: list[Holder] = []
        for pg_id, info in placement_group_table().items():
            name = info.get("name") or ""
            if info.get("state") == "REMOVED":
                continue
            res: dict[str, float] = {}
            for bundle in (info.get("bundles") or {}).values():
                for k, v in bundle.items():
                    res[k] = res.get(k, 0.0) + float(v)
            nodes = list((info.get("bundles_to_node_id") or {}).values())
            holders.append(Holder("placement_group", pg_id, res, name=name, node_id=nodes[0] if nodes else "",
                                  ray_job_id=str(info.get("creator_job_id") or "")))
        # Actors being created too: an __init__ runs on the GPU before Ray calls the actor ALIVE.
        actors = list_actors(address=state_api_address(), filters=[("state", "!=", "DEAD")], detail=True,
                             limit=LIST_LIMIT, raise_on_missing_output=False)
        truncated = len(actors) >= LIST_LIMIT
        for a in actors:
            if a.state != "ALIVE" and not a.pid:
                continue                   # waiting for resources or a node: no process yet
            holders.append(Holder("actor", a.actor_id, dict(a.required_resources or {}), name=a.name or "",
                                  namespace=a.ray_namespace or "", node_id=a.node_id or "", pid=a.pid,
                                  placement_group_id=a.placement_group_id, ray_job_id=a.job_id or "",
                                  alive=a.state == "ALIVE"))
        tasks = list_tasks(address=state_api_address(), filters=[("state", "=", "RUNNING"), ("type", "=", "NORMAL_TASK")], detail=True,
                           limit=LIST_LIMIT, raise_on_missing_output=False)
        truncated = truncated or len(tasks) >= LIST_LIMIT
        for t in tasks:
            holders.append(Holder("task", t.task_id, dict(t.required_resources or {}), name=t.name or "",
                                  node_id=t.node_id or "", pid=t.worker_pid, placement_group_id=t.placement_group_id,
                                  ray_job_id=t.job_id or "", parent_actor_id=_actor_of_task(t.parent_task_id),
                                  started_at=_ms(t.start_time_ms)))
        procs, read, unread = self._gpu_answers()
        if truncated:     # a list cut at its limit would make busy workers look idle: not judged on it
            procs, read, unread = (), frozenset(), read | unread
        # Asked last: a group rayfin made while the lists above were read is in it (the backend
        # adds a group as it makes it), so it is never taken for a foreign one.
        return holders, Owners(self.held(), islands, self.serving_apps, procs, read, unread,
                               {n["NodeID"]: n.get("NodeManagerAddress") or "" for n in alive},
                               self.runners() if self.runners is not None else {})

    def _ask_gpus(self, node_ids: list[str]) -> None:
        now = time.monotonic()
        for node in node_ids:
            asked = self._gpu_asked_at.get(node)
            if node in self._gpu_asks and asked is not None and now - asked > AGENT_OVERDUE_S:
                log.warning("GPU processes on %s: no answer in %.0fs; a new agent", node[:12], now - asked)
                del self._gpu_asks[node]
                self._drop_agent(node, self._gpu_asked_of.pop(node, None))
            if node not in self._gpu_asks and now - self._no_nvml.get(node, -1e9) > 300:
                agent = self._agent(node)
                self._gpu_asks[node] = agent.gpu_processes.remote()
                self._gpu_asked_at[node], self._gpu_asked_of[node] = now, agent

    def _gpu_answers(self) -> tuple[tuple[GpuProcess, ...], frozenset[str], frozenset[str]]:
        """The processes on the GPUs of every node that answered, the nodes that did, and the
        nodes whose answer is still to come (an agent starting) or failed: policing keeps what it
        found on those. A node with no nvidia-smi, or whose NVML pids are not its own, is not
        asked again for 5 minutes."""
        if not self._gpu_asks:
            return (), frozenset(), frozenset()
        done, _ = ray.wait(list(self._gpu_asks.values()), num_returns=len(self._gpu_asks), timeout=1.0)
        out: dict[tuple[int, str], GpuProcess] = {}
        read: set[str] = set()
        unread: set[str] = set()
        for node, ref in list(self._gpu_asks.items()):
            if ref not in done:
                unread.add(node)
                continue
            del self._gpu_asks[node]          # answered: asked again next sweep
            try:
                answer = ray.get(ref, timeout=0)
            except RayActorError:
                self._drop_agent(node, self._gpu_asked_of.pop(node, None))
                unread.add(node)
                continue
            except Exception as exc:  # noqa: BLE001 - ask again next sweep
                log.warning("GPU processes on %s: %s", node[:12], exc)
                unread.add(node)
                continue
            prior = self._ns_strikes.pop(node, 0)
            strikes = prior + 1 if answer.get("other_namespace") else 0
            if strikes:
                self._ns_strikes[node] = strikes
            if not answer.get("ok"):
                log.info("GPU processes on %s not checked: %s", node[:12], answer.get("why"))
                # No nvidia-smi, or NVML's pids another namespace's three reads in a row (once can
                # be processes that just ended): not asked for 5 minutes, nothing kept from it.
                if answer.get("back_off") or strikes >= 3:
                    self._no_nvml[node] = time.monotonic()
                    read.add(node)
                else:
                    unread.add(node)
                continue
            read.add(node)
            for p in answer["procs"]:
                # Simulated nodes on one machine all see its GPUs: each process once.
                out.setdefault((int(p["pid"]), p["uuid"]), GpuProcess(
                    node, int(p["pid"]), int(p["gpu"]), p["uuid"], float(p["used_mib"]),
                    None if p["worker_pid"] is None else int(p["worker_pid"]), p.get("cmd", ""),
                    p.get("worker_title", ""), p.get("worker_start")))
        return tuple(out.values()), frozenset(read), frozenset(unread)

    def creator_of(self, actor_id: str) -> str | None:
        """The actor whose code created `actor_id` (through its creation task), if an actor did."""
        rows = list_tasks(address=state_api_address(), filters=[("actor_id", "=", actor_id), ("type", "=", "ACTOR_CREATION_TASK")], detail=True,
                          limit=5, raise_on_missing_output=False)
        return _actor_of_task(rows[0].parent_task_id) if rows else None

    # -- act --
    def stop(self, f: Finding) -> str:
        try:
            if f.kind == "placement_group":
                remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(f.id))))
                return "placement group removed"
            if f.kind == "actor" and f.name:
                row = get_actor(f.id, address=state_api_address())
                try:
                    handle = ray.get_actor(f.name, namespace=row.ray_namespace if row else None)
                    if handle._actor_id.hex() == f.id:     # the name may have passed to another actor
                        ray.kill(handle, no_restart=True)
                        return "actor killed"
                except ValueError:
                    pass
            if f.pid and f.node_id:
                return self._kill(f)
        except Exception as exc:  # noqa: BLE001 - report and try again next sweep
            log.warning("could not stop %s %s: %s", f.kind, f.id, exc)
            return f"stop failed: {type(exc).__name__}"
        return "nothing to stop (no pid)"

    def _kill(self, f: Finding) -> str:
        """SIGKILL through the node's agent. The sweep does not wait for it (a new agent takes
        seconds to start on a busy node): the answer to the last kill sent is reported instead."""
        if f.pid is None:
            return "nothing to stop (no pid)"
        key = (f.node_id, f.pid, f.pid_start)
        ref, agent = self._pending.get(key, (None, None))
        if ref is not None:
            done, _ = ray.wait([ref], timeout=0)
            if not done:
                return "kill sent"
            try:
                answer = ray.get(ref, timeout=0)
            except RayActorError as exc:   # the agent died: a new one is made for the next kill
                answer = f"agent failed: {type(exc).__name__}"
                self._drop_agent(f.node_id, agent)
            except Exception as exc:  # noqa: BLE001 - send again
                answer = f"agent failed: {type(exc).__name__}"
            del self._pending[key]           # answered: a later finding on a reused pid is sent anew
            if answer in ("gone", "killed"):
                return "worker " + str(answer)
        while len(self._pending) > 1000:          # answers nobody came back for (findings gone)
            self._pending.pop(next(iter(self._pending)))
        agent = self._agent(f.node_id)
        self._pending[key] = (agent.kill.remote(f.pid, f.pid_start, f.idle), agent)
        return "kill sent"

    def _agent(self, node_id: str) -> Any:
        """The node's agent: made by this controller, unnamed (nobody else can look it up and
        nobody can slip in one of their own), its handle kept until it dies."""
        agent = self._agents.get(node_id)
        if agent is None:
            agent = self._agent_cls.options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
            self._agents[node_id] = agent
        return agent

    def _drop_agent(self, node_id: str, which: Any = None) -> None:
        """Forget (and kill) the node's agent; `which`: only if it is still that one (an error
        from an agent already replaced must not take its successor down)."""
        if which is not None and self._agents.get(node_id) is not which:
            return
        agent = self._agents.pop(node_id, None)
        if agent is not None:
            try:
                ray.kill(agent, no_restart=True)
            except Exception as exc:  # noqa: BLE001 - already gone
                log.debug("agent on %s: %s", node_id, exc)

    # -- metrics --
    def count(self, kind: str, action: str, desk: str) -> None:
        try:
            c = self._metrics.get("found")
            if c is None:
                c = self._metrics["found"] = Counter(
                    "rayfin_outside_findings", description="work found holding GPUs or desk resources outside "
                    "rayfin", tag_keys=("kind", "action", "desk"))
            c.inc(1.0, tags={"kind": kind, "action": action, "desk": desk or "unknown"})
        except Exception as exc:  # noqa: BLE001 - metrics never stop policing
            log.debug("metric: %s", exc)

    def gauge(self, held: dict[str, float], islands: list[str]) -> None:
        try:
            g = self._metrics.get("held")
            if g is None:
                g = self._metrics["held"] = Gauge("rayfin_outside_gpus", description="GPUs held outside rayfin",
                                                  tag_keys=("island",))
            for island in islands:
                g.set(float(held.get(island, 0.0)), tags={"island": island})
        except Exception as exc:  # noqa: BLE001
            log.debug("metric: %s", exc)
