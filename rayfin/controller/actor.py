"""The controller as one detached, named, restartable Ray actor: a thin shell around
`ControllerCore`. It runs the cycle on a background thread and answers SDK calls; every call
returns `{"ok": True, "value": ...}` or `{"ok": False, "error": <RayfinError.to_wire()>}` so the
SDK can raise the same typed error the controller decided.
"""
from __future__ import annotations

import gc
import hashlib
import logging
import os
import secrets
import threading
import time
from typing import Any, Callable

import ray

from placement.topology import Topology
from rayfin.config import RayfinConfig, parse_config
from rayfin.controller import autoscale_ray, unpickle_guard_ray
from rayfin.controller.capacity import CapacityLoop
from rayfin.controller.clock import controller_clock
from rayfin.controller.core import ControllerCore
from rayfin.controller.ledger import open_ledger
from rayfin.controller.patrol import Patrol
from rayfin.controller.police_ray import RayPolice
from rayfin.controller.ray_backend import RayBackend
from rayfin.controller.recorder import Recorder
from rayfin.errors import Forbidden, InvalidRequest, RayfinError
from rayfin.reasons import ReasonCode
from rayfin.telemetry.recorder import TelemetryRecorder

log = logging.getLogger("rayfin.controller")


Token = str | None
Reply = dict[str, Any]


def _wrap(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Reply:
    try:
        return {"ok": True, "value": fn(*args, **kwargs)}
    except RayfinError as exc:
        return {"ok": False, "error": exc.to_wire()}


class RayfinController:
    def __init__(self, config_data: dict[str, Any], deploy_key: str | None = None) -> None:
        # First: from here on what a caller sends is unpickled as data only, which refuses the
        # direct ways for desk code to run inside this actor through an argument. Not a boundary
        # (rayfin/unpickle_guard.py; docs/security.md, point 7, lists the ways around it).
        unpickle_guard_ray.install()
        self.config: RayfinConfig = parse_config(config_data, "controller config")
        self.started_at = time.time()
        self.ledger = open_ledger(self.config.controller)
        session = hashlib.sha256(deploy_key.encode()).hexdigest()[:16] if deploy_key else ""
        self.clock = controller_clock(self.config, self.started_at, self.ledger, session)
        backend = self._backend = RayBackend(Topology.from_config(self.config.cluster), runner_key=self._runner_seed())
        self.core = ControllerCore(self.config, self.ledger, backend, recorder=self._recorder(),
                                   deploy_key=deploy_key, clock=self.clock)
        self.recovery = self.core.recover()
        # Not `self.capacity`: that name is the `capacity()` call of the SDK surface.
        self.capacity_loop = CapacityLoop(self.config, self.ledger, autoscale_ray.RayAutoscalerAdapter(),
                                          record=autoscale_ray.record_capacity,
                                          read_counts=autoscale_ray.read_desk_request_counts)
        self.cycles = 0
        self.last_report: dict[str, float] = {}
        # Everything built so far (Ray, the config, the recovered state) lives as long as the
        # process: freezing it keeps full collections from walking it, which otherwise land in
        # about one cycle in ten and set the decision latency's p99 (docs/scheduling.md).
        gc.freeze()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rayfin-cycle", daemon=True)
        self._thread.start()
        self.patrol = self._patrol()

    def _runner_seed(self) -> bytes:
        """Seed of the per-job runner secrets: made once, kept in the ledger (which only the head
        node's controller reads), so a controller brought back can still drive its runners."""
        seed = self.ledger.get_kv("runner_secret_seed")
        if seed is None:
            seed = secrets.token_bytes(32)
            self.ledger.put_kv("runner_secret_seed", seed)
        return bytes(seed)

    def _patrol(self) -> Patrol | None:
        """Policing of GPU use outside rayfin, on its own thread (state API calls take a while)."""
        if self.config.policing.mode == "off":
            return None
        # Model applications as `rayfin up` names them (rayfin-model-<m>) and as the RayService does (model-<m>)
        apps = frozenset(n for m in self.config.serve.models for n in (f"rayfin-model-{m.name}", f"model-{m.name}"))
        # Rayfin's groups are the ones its backend holds (by id): a name like `rayfin-job-*` proves nothing.
        police = RayPolice(apps, held=self._backend.held_groups, gpu_processes=self.config.policing.gpu_processes,
                           runners=self._backend.runner_ids)
        patrol = Patrol(self.config.policing, self.core, police)

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    patrol.sweep()
                except Exception:  # noqa: BLE001 - e.g. the dashboard restarting: try next time
                    log.exception("policing sweep failed")
                self._stop.wait(max(0.05, patrol.next_at - time.time()))

        threading.Thread(target=loop, name="rayfin-patrol", daemon=True).start()
        return patrol

    def _recorder(self) -> Recorder | None:
        return TelemetryRecorder(self.config)

    def _loop(self) -> None:
        interval = self.config.controller.cycle_interval_s
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                report = self.core.cycle()
                self.cycles += 1
                self.last_report = report.timings_ms
                now = self.clock()
                if self.capacity_loop.due(now):
                    with self.core.lock:
                        demand = self.core.pool_demand()
                        floor = self.core.prewarm_floor(self.capacity_loop.settings)
                    self.capacity_loop.step(demand, now, floor)
            except Exception:  # a bad cycle must not kill the loop; it is logged and retried
                log.exception("controller cycle failed")
            self._stop.wait(max(0.0, interval - (time.perf_counter() - t)))

    # -- SDK surface: every call returns {"ok": True, "value": ...} or {"ok": False, "error": ...} --
    def ping(self) -> dict[str, Any]:
        return {"ok": True, "value": {"pid": os.getpid(), "started_at": self.started_at,
                                      "cycles": self.cycles, "recovery": self.recovery,
                                      "timings_ms": self.last_report,
                                      "unpickle_guard": {"installed": unpickle_guard_ray.installed(),
                                                         **unpickle_guard_ray.refusals()}}}

    def submit(self, token: Token, desk: str, spec: dict[str, Any]) -> Reply:
        return _wrap(self.core.submit, token, desk, spec)

    def status(self, token: Token, job_id: str) -> Reply:
        return _wrap(self.core.status, token, job_id)

    def result(self, token: Token, job_id: str) -> Reply:
        return _wrap(self.core.result, token, job_id)

    def results(self, token: Token, job_id: str) -> Reply:
        return _wrap(self.core.results, token, job_id)

    def logs(self, token: Token, job_id: str, rank: int | None = None, tail: int | None = None) -> Reply:
        return _wrap(self.core.logs, token, job_id, rank, tail)

    def cancel(self, token: Token, job_id: str) -> Reply:
        return _wrap(self.core.cancel, token, job_id)

    def jobs(self, token: Token, desk: str | None = None, states: list[str] | None = None,
             limit: int = 1000) -> Reply:
        return _wrap(self.core.jobs, token, desk, states, limit)

    def usage(self, token: Token, desk: str | None = None) -> Reply:
        return _wrap(self.core.usage, token, desk)

    def explain(self, token: Token, job_id: str) -> Reply:
        return _wrap(self.core.explain, token, job_id)

    def capacity(self, token: Token) -> Reply:
        def _view(_token: Token) -> dict[str, Any]:
            self.core.authenticate(_token, None, "read capacity plan")
            req = self.capacity_loop.last_request
            if req is None:
                return {}
            return {p: {"requested_gpus": plan.gpus, "demand_gpus": plan.demand_gpus,
                        "forecast_gpus": plan.forecast_gpus, "reasons": list(plan.reasons)}
                    for p, plan in req.pools.items()}
        return _wrap(_view, token)

    def market(self, token: Token) -> Reply:
        """The quota window in force, the next switch and both windows' quotas (None: no calendar)."""
        return _wrap(self.core.market, token)

    def release_serving(self, token: Token = None, *, model: str) -> Reply:
        return _wrap(self.core.release_serving, token, model)

    def pools(self, token: Token) -> Reply:
        return _wrap(self.core.pools, token)

    def policing(self, token: Token) -> Reply:
        def _view(_token: Token) -> dict[str, Any]:
            who = self.core.authenticate(_token, None, "read policing")
            if self.patrol is None:
                return {"mode": "off", "interval_s": 0.0, "findings": [], "outside_gpus": {}}
            return self.patrol.view(None if who.admin else who.desk)
        return _wrap(_view, token)

    def set_policing_mode(self, token: Token, mode: str) -> Reply:
        """Operator: switch policing between `enforce` and `report` while the controller runs
        (an incident, or a second rayfin controller on the same cluster, whose groups this one
        cannot tell from a desk's). Audited (`policing_mode`)."""
        def _set(_token: Token) -> dict[str, str]:
            self.core.require_operator(_token, None)
            if mode not in ("enforce", "report"):
                raise InvalidRequest(field="mode", value=mode, allowed="'enforce' or 'report'")
            if self.patrol is None:
                raise InvalidRequest("policing is off in this controller's config (policing.mode: off)",
                                     field="mode", value=mode, allowed="a controller started with policing on")
            was = self.patrol.settings.mode
            self.patrol.settings = self.patrol.settings.model_copy(update={"mode": mode})
            self.ledger.record(self.clock(), "", "", "policing_mode", "", f"policing switched from {was} to {mode}",
                               {"mode": mode, "was": was}, ReasonCode.OPERATOR)
            return {"mode": mode, "was": was}
        return _wrap(_set, token)

    def record_event(self, token: Token, kind: str, reason: str, data: dict[str, Any] | None = None) -> Reply:
        """An operator event into the audit log (e.g. the supervisor's: the controller was killed)."""
        def _record(_token: Token) -> bool:
            self.core.require_operator(_token, None)
            self.ledger.record(self.clock(), "", "", str(kind)[:64], "", str(reason)[:2000], data or {},
                               ReasonCode.OPERATOR)
            return True
        return _wrap(_record, token)

    def audit(self, token: Token, desk: str | None = None, since: float | None = None, until: float | None = None,
              limit: int = 1000) -> Reply:
        return _wrap(self.core.audit, token, desk, since, until, limit)

    def chargeback(self, token: Token, since: float, until: float | None = None, by: str = "desk",
                   desk: str | None = None) -> Reply:
        return _wrap(self.core.chargeback, token, since, until, by, desk)

    def reserve_serving(self, token: Token = None, *, model: str, desk: str, replicas: int,
                        gpus_per_replica: float) -> Reply:
        return _wrap(self.core.reserve_serving, token, model, desk, replicas, gpus_per_replica)

    def shutdown(self, token: Token = None) -> Reply:
        """Stop the cycle and the policing patrol, before the actor is killed: the deploy key of
        `rayfin up` or the admin credential. Any job can call this actor, and a stopped loop in a
        live actor is never restarted, so a desk must not be able to."""
        def _stop(_token: Token) -> None:
            if not self.core.auth.authenticate(_token, None, "deploy").admin:
                raise Forbidden("stopping the controller needs the admin credential or the deploy key of "
                                "`rayfin up`", action="shutdown")
            self._stop.set()
            self._thread.join(timeout=5)
        return _wrap(_stop, token)


def start_controller(config: RayfinConfig, *, deploy_key: str | None = None) -> Any:
    """Create (or find) the detached controller actor, pinned to the head node so the ledger
    file and the metrics it exports live there. Returns the actor handle.

    `deploy_key` is a secret of the starting process that lets it reserve serving capacity;
    it is a constructor argument, so a restarted controller keeps it."""
    c = config.controller
    cls = ray.remote(RayfinController)
    handle = cls.options(name=c.name, namespace=c.namespace, lifetime="detached", get_if_exists=True,
                         max_restarts=-1, max_task_retries=-1, max_concurrency=32, num_cpus=0,
                         resources={"node:__internal_head__": 0.001}).remote(config.model_dump(mode="json"),
                                                                              deploy_key)
    ray.get(handle.ping.remote(), timeout=120)
    return handle


def get_controller(config_or_name: RayfinConfig | str = "rayfin-controller", namespace: str = "rayfin") -> Any:
    if isinstance(config_or_name, RayfinConfig):
        return ray.get_actor(config_or_name.controller.name, namespace=config_or_name.controller.namespace)
    return ray.get_actor(config_or_name, namespace=namespace)
