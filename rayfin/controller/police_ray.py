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

import logging
import os
import signal
from typing import Any, Callable

import ray
from ray._raylet import PlacementGroupID
from ray.exceptions import RayActorError
from ray.util.metrics import Counter, Gauge
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from ray.util.state import get_actor, list_actors, list_tasks

from rayfin.controller.policing import Finding, Holder, Owners
from rayfin.controller.ray_backend import state_api_address

log = logging.getLogger("rayfin.police")


class PolicingAgent:
    """One per node. Kills a Ray worker process by pid, and only a Ray worker (never the raylet,
    the GCS or anything else that happens to reuse a pid)."""

    def kill(self, pid: int) -> str:
        try:
            with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            return "gone"
        if b"default_worker.py" not in cmd and not cmd.startswith(b"ray::"):
            return "not a ray worker"
        if pid == os.getpid():
            return "self"
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return "gone"
        return "killed"


def _actor_of_task(task_id: str | None) -> str | None:
    """An actor task's id ends with its actor's id (16 of its 24 bytes)."""
    return task_id[-32:] if task_id and len(task_id) == 48 else None


def _ms(value: Any) -> float | None:
    return float(value) / 1000.0 if value else None


class RayPolice:
    def __init__(self, serving_apps: frozenset[str] = frozenset(), *,
                 held: Callable[[], frozenset[str]]) -> None:
        """`held`: the ids (hex) of the placement groups rayfin holds (RayBackend.held_groups)."""
        self.serving_apps = serving_apps
        self.held = held
        self._agents: dict[str, Any] = {}
        self._agent_cls = ray.remote(PolicingAgent)
        self._metrics: dict[str, Any] = {}
        self._pending: dict[tuple[str, int], Any] = {}     # (node, pid) -> the agent's answer to come
        self._names: dict[str, tuple[str, str]] = {}        # actor id -> (name, namespace), alive or not

    # -- observe --
    def observe(self) -> tuple[list[Holder], Owners]:
        islands = {n["NodeID"]: (n.get("Labels") or {}).get("rayfin.io/island", "")
                   for n in ray.nodes() if n.get("Alive")}
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
        actors = list_actors(address=state_api_address(), filters=[("state", "=", "ALIVE")], detail=True, limit=10_000,
                             raise_on_missing_output=False)
        # Names of actors seen alive, kept after they die: work a killed runner started is still
        # attributed to its desk and job while Ray tears it down.
        self._names.update({a.actor_id: (a.name or "", a.ray_namespace or "") for a in actors})
        while len(self._names) > 20_000:
            self._names.pop(next(iter(self._names)))
        names = dict(self._names)
        for a in actors:
            holders.append(Holder("actor", a.actor_id, dict(a.required_resources or {}), name=a.name or "",
                                  namespace=a.ray_namespace or "", node_id=a.node_id or "", pid=a.pid,
                                  placement_group_id=a.placement_group_id, ray_job_id=a.job_id or ""))
        tasks = list_tasks(address=state_api_address(), filters=[("state", "=", "RUNNING"), ("type", "=", "NORMAL_TASK")], detail=True,
                           limit=10_000, raise_on_missing_output=False)
        for t in tasks:
            holders.append(Holder("task", t.task_id, dict(t.required_resources or {}), name=t.name or "",
                                  node_id=t.node_id or "", pid=t.worker_pid, placement_group_id=t.placement_group_id,
                                  ray_job_id=t.job_id or "", parent_actor_id=_actor_of_task(t.parent_task_id),
                                  started_at=_ms(t.start_time_ms)))
        # Asked last: a group rayfin made while the lists above were read is in it (the backend
        # adds a group as it makes it), so it is never taken for a foreign one.
        return holders, Owners(self.held(), names, islands, self.serving_apps)

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
        key = (f.node_id, f.pid)
        ref = self._pending.get(key)
        if ref is not None:
            done, _ = ray.wait([ref], timeout=0)
            if not done:
                return "kill sent"
            try:
                answer = ray.get(ref, timeout=0)
            except RayActorError as exc:   # the agent died: a new one is made for the next kill
                answer = f"agent failed: {type(exc).__name__}"
                self._drop_agent(f.node_id)
            except Exception as exc:  # noqa: BLE001 - send again
                answer = f"agent failed: {type(exc).__name__}"
            if answer in ("gone", "killed"):
                return "worker " + str(answer)
        self._pending[key] = self._agent(f.node_id).kill.remote(f.pid)
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

    def _drop_agent(self, node_id: str) -> None:
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
