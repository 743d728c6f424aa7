"""GPU use outside rayfin: which of Ray's actors, tasks and placement groups hold GPUs or desk
pool / island resources without rayfin having created them. Pure: rows in, findings out; the
Ray side (listing through the state API, stopping) is `rayfin.controller.police_ray`.

What rayfin creates, and so may hold those resources:
    placement groups   the ones the controller's backend holds now (one per admitted job), by
                       id (`RayBackend.held_groups`): a name proves nothing, anyone can name a
                       group `rayfin-job-...`
    actors and tasks   inside such a group (job runners, gang workers, a job's own tasks
                       scheduled into its group through `job_context().placement_group`)
    serving replicas   Serve replicas of rayfin's model applications (`SERVE_REPLICA::rayfin-...`
                       in Serve's namespace), charged to their desk by `reserve_serving`
Everything else holding a guarded resource is a finding. Ray reports resources inside a group as
`GPU_group_<pg id>` (and `..._group_<i>_<pg id>`): the group decides, not the key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Literal, Mapping

SERVING_PREFIX = "SERVE_REPLICA::rayfin-"
SERVE_NAMESPACE = "serve"
GUARDED = re.compile(r"^(GPU|rayfin_pool_|rayfin_island_)")
DESK_NAMESPACE = re.compile(r"^rayfin-desk-(?P<desk>[a-z][a-z0-9-]*)$")

Kind = Literal["actor", "task", "placement_group"]


@dataclass(frozen=True)
class Holder:
    """One row of Ray's state API, reduced to what policing needs."""

    kind: Kind
    id: str
    resources: Mapping[str, float]
    name: str = ""
    namespace: str = ""
    node_id: str = ""
    pid: int | None = None
    placement_group_id: str | None = None
    ray_job_id: str = ""
    parent_actor_id: str | None = None     # the actor whose code started it, if an actor did
    started_at: float | None = None


@dataclass(frozen=True)
class Finding:
    kind: Kind
    id: str
    name: str
    node_id: str
    island: str
    resources: dict[str, float]
    gpus: float
    ray_job_id: str
    desk: str
    rayfin_job_id: str
    pid: int | None
    first_seen: float
    last_seen: float
    started_at: float | None = None
    stopped_at: float | None = None
    action: str = ""
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def copy(self, **changes: Any) -> "Finding":
        return replace(self, **changes)

    def public(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("kind", "id", "name", "node_id", "island", "resources", "gpus",
                                            "ray_job_id", "desk", "rayfin_job_id", "first_seen", "last_seen",
                                            "started_at", "stopped_at", "action")}
        d["resources"] = dict(self.resources)
        return d


def guarded(resources: Mapping[str, float]) -> dict[str, float]:
    """The resources rayfin polices: GPUs, desk pools, NVLink islands (group-scoped keys included)."""
    return {k: float(v) for k, v in resources.items() if v and GUARDED.match(k)}


def gpus_of(resources: Mapping[str, float]) -> float:
    """GPUs held: the plain `GPU` key, or inside a group its `GPU_group_<id>` total (not the
    per-bundle `GPU_group_<i>_<id>` keys, which repeat it)."""
    if "GPU" in resources:
        return float(resources["GPU"])
    return sum(float(v) for k, v in resources.items()
               if k.startswith("GPU_group_") and not re.match(r"^GPU_group_\d+_", k))


@dataclass(frozen=True)
class Owners:
    """What rayfin owns: the ids of the placement groups the controller's backend holds (and
    released a moment ago), and every live actor's name and namespace (to attribute work to the
    desk and job whose code started it)."""

    rayfin_groups: frozenset[str]                  # placement group ids (hex), RayBackend.held_groups
    actors: Mapping[str, tuple[str, str]]          # actor id -> (name, namespace)
    islands: Mapping[str, str]                     # Ray node id -> rayfin island id
    serving_apps: frozenset[str] = frozenset()     # Serve applications of rayfin's models (KubeRay names)

    def is_rayfin(self, h: Holder) -> bool:
        if h.kind == "placement_group":
            return h.id in self.rayfin_groups
        if h.placement_group_id and h.placement_group_id in self.rayfin_groups:
            return True
        if h.kind != "actor" or h.namespace != SERVE_NAMESPACE or not h.name.startswith("SERVE_REPLICA::"):
            return False
        app = h.name.removeprefix("SERVE_REPLICA::").split("#")[0]
        return h.name.startswith(SERVING_PREFIX) or app in self.serving_apps

    def attribute(self, h: Holder) -> tuple[str, str]:
        """(desk, rayfin job id) of the code that started `h`, where Ray tells: a runner or
        worker actor lives in `rayfin-desk-<desk>` and its name carries `<job id>~<generation>`."""
        name, namespace = self.actors.get(h.parent_actor_id or "", ("", ""))
        m = DESK_NAMESPACE.match(namespace)
        if not m:
            return "", ""
        desk = m.group("desk")
        job = re.search(rf"(?<![a-z0-9])({re.escape(desk)}-[0-9a-f]{{8,32}})~\d+", name)
        return desk, job.group(1) if job else ""


def find(holders: Iterable[Holder], owners: Owners, now: float) -> list[Finding]:
    """Holders of guarded resources that rayfin did not create, as new findings seen at `now`."""
    out = []
    for h in holders:
        res = guarded(h.resources)
        if not res or owners.is_rayfin(h):
            continue
        desk, job = owners.attribute(h)
        reasons = [f"{h.kind} holds {', '.join(f'{k}={v:g}' for k, v in sorted(res.items()))} "
                   "without a rayfin placement group"]
        if desk:
            reasons.append(f"started by desk {desk}'s job {job or '?'}")
        out.append(Finding(h.kind, h.id, h.name, h.node_id, owners.islands.get(h.node_id, ""), res, gpus_of(res),
                           h.ray_job_id, desk, job, h.pid, now, now, h.started_at, reasons=tuple(reasons)))
    return out


def outside_gpus(findings: Iterable[Finding]) -> dict[str, float]:
    """Island -> GPUs held outside rayfin now: the controller counts them as taken. Tasks and
    actors inside a foreign group are counted once, through the group."""
    groups = {f.id for f in findings if f.kind == "placement_group"}
    held: dict[str, float] = {}
    for f in findings:
        if f.stopped_at is not None or not f.island:
            continue
        if f.kind != "placement_group" and any(k.endswith(g) for g in groups for k in f.resources):
            continue
        held[f.island] = held.get(f.island, 0.0) + f.gpus
    return held


@dataclass
class Sightings:
    """Findings over time: merge each sweep into what was seen, and tell which are new and which
    are gone (stopped, or ended by themselves)."""

    live: dict[str, Finding] = field(default_factory=dict)

    def merge(self, found: list[Finding], now: float) -> tuple[list[Finding], list[Finding]]:
        new, gone = [], []
        seen = {f.id for f in found}
        for f in found:
            old = self.live.get(f.id)
            if old is None:
                self.live[f.id] = f
                new.append(f)
            else:
                self.live[f.id] = old.copy(last_seen=now, pid=f.pid, node_id=f.node_id, island=f.island or old.island)
        for fid in [i for i in self.live if i not in seen]:
            gone.append(self.live.pop(fid).copy(stopped_at=now))
        return new, gone


__all__ = ["Holder", "Finding", "Owners", "find", "guarded", "gpus_of", "outside_gpus", "Sightings"]
