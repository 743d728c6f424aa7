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

A GPU is also used without holding any of those: Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for
work that asks for no GPU (ray-project/ray#54868), and code can set it itself. So the processes
NVML lists on each node's GPUs (`GpuProcess`, from `nvidia-smi` on the node) are checked too: a
process on a GPU must run in (or under) a Ray worker that holds GPUs now, and on no more distinct
GPUs than it holds (`find_on_gpus`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Literal, Mapping

SERVING_PREFIX = "SERVE_REPLICA::rayfin-"
SERVE_NAMESPACE = "serve"
GUARDED = re.compile(r"^(GPU|rayfin_pool_|rayfin_island_)")
UNLISTED_S = 30.0      # a busy worker on a GPU that the state API never lists: a finding after this

Kind = Literal["actor", "task", "placement_group", "gpu_process"]


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
    alive: bool = True                     # False: an actor still being created (its __init__ runs)


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
    pid_start: int | None = None           # the process's start (clock ticks): a reused pid is not it
    stoppable: bool = True                 # False: reported only (a process under no Ray worker)
    idle: bool = False                     # an idle worker's context: killed only if still idle

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
    released a moment ago), and the actors it made (to attribute work to the desk and job whose
    code started it, by actor id: never by a name or namespace, which anyone can take)."""

    rayfin_groups: frozenset[str]                  # placement group ids (hex), RayBackend.held_groups
    islands: Mapping[str, str]                     # Ray node id -> rayfin island id
    serving_apps: frozenset[str] = frozenset()     # Serve applications of rayfin's models (KubeRay names)
    gpu_procs: tuple["GpuProcess", ...] = ()       # what NVML lists on the GPU nodes read this sweep
    gpu_read: frozenset[str] = frozenset()          # GPU nodes whose list came this sweep
    gpu_unread: frozenset[str] = frozenset()        # GPU nodes whose list did not come this sweep
    machines: Mapping[str, str] = field(default_factory=dict)   # Ray node id -> its host's address
    # actor id -> (desk, job id) of the runners rayfin's backend made (RayBackend.runner_ids): the
    # only way work is named after a job. Names and namespaces are not read: anyone can take them.
    runners: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    # actor id -> (desk, job id) of gang workers, matched to the ranks their runner reported
    rank_actors: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def machine(self, node_id: str) -> str:
        """Pids are a host's: simulated nodes on one host share them (a task on the head node can
        be the process that NVML lists under a GPU node)."""
        return self.machines.get(node_id) or node_id

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
        """(desk, rayfin job id) of the code that started `h`: its parent actor is one of the
        runners rayfin's backend made (`runners`) or a gang worker matched to a rank they
        reported (`rank_actors`); ("", "") otherwise, whatever the parent is named."""
        parent = h.parent_actor_id or ""
        return self.runners.get(parent) or self.rank_actors.get(parent) or ("", "")


def find(holders: Iterable[Holder], owners: Owners, now: float) -> list[Finding]:
    """Holders of guarded resources that rayfin did not create, as new findings seen at `now`."""
    out = []
    for h in holders:
        res = guarded(h.resources)
        if not res or not h.alive or owners.is_rayfin(h):
            continue
        desk, job = owners.attribute(h)
        reasons = [f"{h.kind} holds {', '.join(f'{k}={v:g}' for k, v in sorted(res.items()))} "
                   "without a rayfin placement group"]
        if desk:
            reasons.append(f"started by desk {desk}'s job {job or '?'}")
        out.append(Finding(h.kind, h.id, h.name, h.node_id, owners.islands.get(h.node_id, ""), res, gpus_of(res),
                           h.ray_job_id, desk, job, h.pid, now, now, h.started_at, reasons=tuple(reasons)))
    return out


@dataclass(frozen=True)
class GpuProcess:
    """One process that NVML lists on one of a node's GPUs."""

    node_id: str
    pid: int
    gpu: int                      # the GPU's index on its node (NVML order)
    uuid: str
    used_mib: float
    worker_pid: int | None        # the Ray worker it is, or runs under (nearest ancestor); None: not under Ray
    cmd: str = ""
    worker_title: str = ""        # the worker's process title: "ray::IDLE" when it runs nothing
    worker_start: int | None = None   # the worker's start time (clock ticks since boot)


@dataclass(frozen=True)
class RankGpus:
    """A running rayfin job's rank: the GPU indices Ray gave it, as its runner reported them."""

    job_id: str
    desk: str
    gpus: frozenset[int]


def parse_nvidia_smi(gpus_csv: str, apps_csv: str) -> list[tuple[int, str, int, float]]:
    """(GPU index, uuid, pid, MiB used) for each compute process, from
    `nvidia-smi --query-gpu=index,uuid --format=csv,noheader` and
    `nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader`."""
    index: dict[str, int] = {}
    for line in gpus_csv.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0].isdigit():
            index[parts[1]] = int(parts[0])
    out = []
    for line in apps_csv.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit() or parts[1] not in index:
            continue
        m = re.match(r"^([\d.]+)", parts[2])
        out.append((index[parts[1]], parts[1], int(parts[0]), float(m.group(1)) if m else 0.0))
    return out


@dataclass(frozen=True)
class WorkerSeen:
    """What policing remembers of a worker (or a process under none) on a GPU, from sweep to
    sweep: `find_on_gpus` takes it in and gives it back."""

    first_on_gpu: float                    # first sweep that saw it on a GPU
    rowless_since: float | None = None     # first sweep of the run of sweeps with no row for it
    last_row: Holder | None = None         # its last row in the state API ...
    last_title: str = ""                   # ... and its process title then


WorkerKey = tuple[str, int, "int | None"]    # (Ray node id, worker pid, worker start)


def find_on_gpus(procs: Iterable[GpuProcess], holders: Iterable[Holder], owners: Owners, now: float,
                 assigned: Mapping[tuple[str, int], RankGpus] | None = None,
                 seen: Mapping[WorkerKey, WorkerSeen] | None = None
                 ) -> tuple[list[Finding], dict[WorkerKey, WorkerSeen]]:
    """Ray workers whose processes are on a GPU while the worker holds none, or fewer than the
    distinct GPUs they use, or (a running rayfin job's rank, `assigned`: (Ray node id, pid) ->
    what its runner reported) a GPU that is not its job's on that node; idle workers that kept a
    GPU context; and processes on a GPU under no Ray worker at all (reported only). Returns the
    findings (one per worker, keyed by node, pid and start) and what to remember for next sweep.

    `holders`: every live actor (those being created too, `alive=False`) and running task, for
    the GPUs each worker holds. A worker whose row is gone but whose title is unchanged keeps its
    last row (Ray evicts old task events; a GCS error lists nothing); a busy worker with no row is
    left alone for UNLISTED_S from the first sweep without one. A task is blamed (its desk and
    job named, so the job can be failed) only if it started before its worker was first seen on
    the GPU: Ray reuses workers, and a context an earlier task left is not the next one's doing.
    GPU indices are NVML's; rayfin's nodes set CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA's agree."""
    given = {(owners.machine(node), pid): r for (node, pid), r in (assigned or {}).items()}
    held: dict[tuple[str, int], float] = {}
    rows: dict[tuple[str, int], Holder] = {}
    for h in holders:
        if h.kind == "placement_group" or h.pid is None:
            continue
        key = (owners.machine(h.node_id), int(h.pid))
        held[key] = held.get(key, 0.0) + gpus_of(h.resources)
        if key not in rows or (h.parent_actor_id and not rows[key].parent_actor_id):
            rows[key] = h
    used: dict[tuple[str, int], list[GpuProcess]] = {}
    for p in procs:
        used.setdefault((owners.machine(p.node_id), p.worker_pid if p.worker_pid is not None else p.pid), []).append(p)
    out: list[Finding] = []
    memory: dict[WorkerKey, WorkerSeen] = {}
    for (host, pid), ps in sorted(used.items()):
        node, title, start = ps[0].node_id, ps[0].worker_title, ps[0].worker_start
        wkey: WorkerKey = (node, pid, start)
        prev = (seen or {}).get(wkey) or WorkerSeen(first_on_gpu=now)
        gpus = sorted({p.gpu for p in ps})
        mib = sum(p.used_mib for p in ps)
        on = f"GPU{'s' if len(gpus) > 1 else ''} {', '.join(map(str, gpus))} ({mib:g} MiB)"
        under_ray = ps[0].worker_pid is not None
        idle = title.startswith("ray::IDLE")
        row, have = rows.get((host, pid)), held.get((host, pid), 0.0)
        if row is not None:
            memory[wkey] = WorkerSeen(prev.first_on_gpu, None, row, title)
        elif prev.last_row is not None and title == prev.last_title and not idle:
            row, have = prev.last_row, gpus_of(prev.last_row.resources)     # the same work: its row is gone
            memory[wkey] = prev
        else:
            memory[wkey] = WorkerSeen(prev.first_on_gpu, prev.rowless_since if prev.rowless_since is not None
                                      else now)
        rank = given.get((host, pid))
        since_rowless = memory[wkey].rowless_since
        rowless_for = 0.0 if since_rowless is None else now - since_rowless
        if under_ray and row is None and rank is None and not idle and rowless_for < UNLISTED_S:
            continue                     # busy, but the state API does not show with what (yet): wait
        strays = sorted(set(gpus) - rank.gpus) if rank is not None else []
        if rank is not None and not strays:
            continue                     # a rank on its job's GPUs of that node (its siblings' too)
        if rank is None and have > 0 and len(gpus) <= math.ceil(have - 1e-9):
            continue                     # by Ray's books it holds them (under a launch wrapper or not)
        if not under_ray:
            reason = f"process {pid} is on {on} and runs under no Ray worker"
        elif have <= 0 and row is None and idle:
            reason = f"Ray worker {pid} is on {on} and runs nothing (a context an ended task left)"
        elif have <= 0 and row is None:
            reason = f"Ray worker {pid} is on {on} and Ray has listed no task or actor on it for {rowless_for:.0f}s"
        elif have <= 0:
            reason = f"Ray worker {pid} is on {on} but holds no GPU"
        elif strays and rank is not None:
            reason = (f"Ray worker {pid} is on {on} but its job has GPU{'s' if len(rank.gpus) > 1 else ''} "
                      f"{', '.join(map(str, sorted(rank.gpus)))} there")
        else:
            reason = f"Ray worker {pid} is on {on} but holds {have:g}"
        # Counted as taken: what is beyond the worker's own GPUs. A process under no Ray worker
        # cannot be stopped by policing (it only kills Ray workers) and may be the operator's own
        # (a driver on the node): reported, not counted, or it could hold a GPU from rayfin forever.
        if not under_ray:
            extra = 0.0
        elif strays:
            extra = float(len(strays))
        else:
            extra = float(len(gpus) - (math.ceil(have - 1e-9) if have > 0 else 0))
        if rank is not None:
            desk, job = rank.desk, rank.job_id
        elif row is not None:
            desk, job = owners.attribute(row)
        else:
            desk, job = "", ""
        reasons = [reason + " (CUDA_VISIBLE_DEVICES is advice, not a fence)"]
        if row is not None and row.name:
            reasons.append(f"running {row.kind} {row.name}")
        if (desk and row is not None and row.kind == "task" and rank is None
                and row.started_at is not None and row.started_at > prev.first_on_gpu):
            reasons.append(f"not charged to desk {desk}: the worker was on the GPU before this task started "
                           "(Ray reused it)")
            desk, job = "", ""
        if desk:
            reasons.append(f"started by desk {desk}'s job {job or '?'}")
        out.append(Finding("gpu_process", f"gpu:{node}:{pid}:{start}", ps[0].cmd[:120], node,
                           owners.islands.get(node, ""), {"GPU": extra}, extra, row.ray_job_id if row else "", desk,
                           job, pid, now, now, row.started_at if row else None, reasons=tuple(reasons),
                           pid_start=start, stoppable=under_ray, idle=idle and row is None))
    return out, memory


def outside_gpus(findings: Iterable[Finding]) -> dict[str, float]:
    """Island -> GPUs held outside rayfin now: the controller counts them as taken. Tasks and
    actors inside a foreign group are counted once, through the group."""
    groups = {f.id for f in findings if f.kind == "placement_group"}
    held: dict[str, float] = {}
    for f in findings:
        if f.stopped_at is not None or not f.island or not f.gpus:
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
    attributed: list[Finding] = field(default_factory=list)   # last merge: live ones that now name a job

    def merge(self, found: list[Finding], now: float) -> tuple[list[Finding], list[Finding]]:
        new, gone = [], []
        self.attributed = []
        seen = {f.id for f in found}
        for f in found:
            old = self.live.get(f.id)
            if old is None:
                self.live[f.id] = f
                new.append(f)
            else:
                if not old.rayfin_job_id and f.rayfin_job_id:   # e.g. a runner proved itself after a restart
                    old = old.copy(desk=f.desk, rayfin_job_id=f.rayfin_job_id)
                    self.attributed.append(old)
                # What the worker does now (idle or not, why), with when it was first found.
                self.live[f.id] = old.copy(last_seen=now, pid=f.pid, node_id=f.node_id, island=f.island or old.island,
                                           idle=f.idle, pid_start=f.pid_start, reasons=f.reasons,
                                           resources=f.resources, gpus=f.gpus)
        for fid in [i for i in self.live if i not in seen]:
            gone.append(self.live.pop(fid).copy(stopped_at=now))
        return new, gone


__all__ = ["Holder", "Finding", "Owners", "GpuProcess", "RankGpus", "WorkerSeen", "find", "find_on_gpus", "parse_nvidia_smi", "guarded",
           "gpus_of", "outside_gpus", "Sightings"]
