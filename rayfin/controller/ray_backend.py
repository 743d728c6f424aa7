"""Ray adapter of the controller backend: placement groups + detached runner actors.

Names, so a restarted controller finds what it owns (key = "<job_id>~<generation>"):
    placement group  rayfin-job-<key>                (controller's namespace, detached)
    runner actor     job-<key>                       (namespace rayfin-desk-<desk>, detached; rank 0)
    gang workers     unnamed, owned by the runner    (ranks 1..W-1; they die with it)
One bundle per worker, in rank order (placement.ranks.rank_layout), each asking for
`{"GPU": u, "rayfin_island_<id>": u, "rayfin_pool_<pool>": u}`: the island resource exists only
on that island's Ray node, so Ray itself keeps the bundle (and the GPU ids it hands out) there,
and the pool resource means Ray would refuse to place it outside the pool.

Every call to a runner carries the job's secret, an HMAC of the reservation key under the
controller's runner key: desk code that looks the runner up by name cannot drive it.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from ray.util.state import list_actors

from placement.ranks import rank_layout
from placement.topology import Topology, island_resource, pool_resource
from rayfin.controller.backend import LaunchSpec, Observation, Owned, RunnerStatus, aged
from rayfin.runner import JobRunner
from rayfin.telemetry.tracing import job_context

log = logging.getLogger("rayfin.backend")
GROUP_PREFIX = "rayfin-job-"


def state_api_address() -> str:
    """This cluster's GCS address for Ray's state API.

    Without it the state API finds "the latest cluster started on this machine", which is another
    cluster whenever more than one runs here (a second test session, a benchmark).
    """
    return str(ray.get_runtime_context().gcs_address)


def desk_namespace(desk: str) -> str:
    return f"rayfin-desk-{desk}"


def runner_name(key: str) -> str:
    return f"job-{key}"


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

    def secret(self, key: str) -> str:
        return hmac.new(self._runner_key, key.encode(), hashlib.sha256).hexdigest()

    # -- reserve / start --
    def reserve(self, key: str, desk: str, placement: tuple[tuple[str, float], ...], unit: int = 1) -> None:
        bundles = bundles_for(self.topology, placement, unit)
        with job_context(key.split("~")[0]):
            pg = placement_group(bundles, strategy="PACK", name=GROUP_PREFIX + key, lifetime="detached")
            self._live[key] = _Live(desk=desk, pg=pg, ready_ref=pg.ready())

    def start(self, spec: LaunchSpec) -> None:
        with job_context(spec.job_id):  # the runner's Ray calls join the job's trace
            self._start(spec)

    def _start(self, spec: LaunchSpec) -> None:
        live = self._live.setdefault(spec.name, _Live(desk=spec.desk))
        if live.pg is None:
            live.pg = ray.util.get_placement_group(GROUP_PREFIX + spec.name)
        if live.runner is None:
            layout = rank_layout(self.topology, spec.placement, spec.unit)
            slots = [s.to_dict() for s in layout]
            live.runner = self._runner_cls.options(
                name=runner_name(spec.name), namespace=desk_namespace(spec.desk), lifetime="detached",
                get_if_exists=True, num_cpus=0, num_gpus=float(layout[0].gpus), max_restarts=0,
                max_concurrency=8,
                scheduling_strategy=PlacementGroupSchedulingStrategy(live.pg, placement_group_bundle_index=0),
            ).remote(self.secret(spec.name), spec.job_id, spec.desk, spec.kind, spec.payload,
                     [list(p) for p in spec.placement], GROUP_PREFIX + spec.name, slots,
                     max_result_bytes=spec.max_result_bytes, max_log_bytes=spec.max_log_bytes,
                     priority=spec.priority, dist_backend=spec.dist_backend, checkpoint_dir=spec.checkpoint_dir,
                     attempt=spec.attempt)
        live.start_ref = live.runner.start.remote(self.secret(spec.name))

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
                    live.info = value
                    live.last = RunnerStatus("RUNNING", info=value)
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
            last = live.last if live is not None else None
            if live is None or last is None:
                continue
            if last.logs:   # output is handed over once; the status itself is reported every cycle
                live.last = replace(last, logs=())
            statuses[j] = aged(last, live.last_asked, now)   # its checkpoint age as of now
        return Observation(frozenset(ready), statuses, self._unavailable())

    def _unavailable(self) -> dict[str, float]:
        """Configured islands with no live Ray node (crashed, removed, or not up yet)."""
        alive = {(n.get("Labels") or {}).get("rayfin.io/island") for n in ray.nodes() if n.get("Alive")}
        return {i.id: float(i.gpus) for i in self.topology.islands if i.id not in alive}

    # -- stop / release --
    def request_stop(self, key: str) -> None:
        live = self._live.get(key)
        if live is not None and live.runner is not None:
            live.runner.request_stop.remote(self.secret(key))

    def release(self, key: str, desk: str) -> None:
        live = self._live.pop(key, None) or _Live(desk=desk)
        runner = live.runner
        if runner is None:
            try:
                runner = ray.get_actor(runner_name(key), namespace=desk_namespace(desk))
            except ValueError:
                runner = None
        if runner is not None:
            try:
                ray.kill(runner, no_restart=True)
            except RayError as exc:  # already gone
                log.debug("kill %s: %s", key, exc)
        pg = live.pg
        if pg is None:
            try:
                pg = ray.util.get_placement_group(GROUP_PREFIX + key)
            except ValueError:
                pg = None
        if pg is not None:
            try:
                remove_placement_group(pg)
            except Exception as exc:  # noqa: BLE001 - already removed
                log.debug("remove pg %s: %s", key, exc)

    # -- recovery --
    def owned(self, desks: list[str]) -> Owned:
        groups = set()
        for info in placement_group_table().values():
            name = info.get("name") or ""
            if name.startswith(GROUP_PREFIX) and info.get("state") != "REMOVED":
                groups.add(name[len(GROUP_PREFIX):])
        runners = set()
        try:
            for a in list_actors(address=state_api_address(), filters=[("state", "!=", "DEAD")], limit=10000, raise_on_missing_output=False):
                if a.name and a.name.startswith("job-") and (a.ray_namespace or "").startswith("rayfin-desk-"):
                    runners.add(a.name[4:])
        except Exception as exc:  # noqa: BLE001 - state API needs the dashboard; fall back to lookups
            log.info("state API unavailable (%s); runners are looked up by name", exc)
        return Owned(frozenset(groups), frozenset(runners))

    def adopt(self, key: str, desk: str, placement: tuple[tuple[str, float], ...], running: bool) -> None:
        live = self._live.setdefault(key, _Live(desk=desk))
        try:
            live.pg = ray.util.get_placement_group(GROUP_PREFIX + key)
            live.ready_ref = live.pg.ready() if not running else None
        except ValueError:
            live.pg = None
        if running:
            try:
                live.runner = ray.get_actor(runner_name(key), namespace=desk_namespace(desk))
            except ValueError:
                live.last = RunnerStatus("LOST", error="runner not found after controller restart")
                return
            # start() is idempotent: if the old controller died between creating the runner and
            # starting it, this starts it; otherwise it only returns where the job runs.
            live.start_ref = live.runner.start.remote(self.secret(key))
