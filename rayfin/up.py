"""Bring rayfin up: a Ray cluster (local simulated, or an existing one), the controller, the
Serve applications; and take down exactly what it started.

With `--address` (an existing cluster, e.g. KubeRay) Ray's tracing hook cannot be set from
here: start that cluster's head with `--tracing-startup-hook=rayfin.telemetry.tracing:setup_tracing`
(configs/kuberay/raycluster.yaml does)."""
from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rayfin.cluster import LocalCluster
from rayfin.config import ControllerConfig, RayfinConfig, config_error_from
from rayfin.controller.ledger import is_postgres_url
from rayfin.supervisor import spawn_supervisor, stop_supervisor
from serve_apps import ingress

log = logging.getLogger("rayfin.up")
STATE_FILE = Path(os.path.expanduser("~/.rayfin/up.json"))


@dataclass
class Running:
    config: RayfinConfig
    address: str
    dashboard_url: str | None
    metrics_url: str | None
    serve_url: str | None
    controller: Any
    local: LocalCluster | None = None    # when we started one
    timings_s: dict[str, float] = field(default_factory=dict)
    serve_started: bool = False
    deploy_key: str | None = field(default=None, repr=False)
    api_url: str | None = None
    supervisor: Any = None               # the `rayfin supervise` child process bring_up started

    def endpoint_lines(self) -> list[str]:
        lines = [f"dashboard: {self.dashboard_url or 'not started'}", f"address: {self.address}"]
        if self.metrics_url:
            lines.append(f"metrics: {self.metrics_url}")
        if self.serve_url:
            lines.append(f"serve: {self.serve_url}")
        if self.local is not None and self.local.gcs_redis:
            lines.append(f"gcs: fault tolerant, in Redis {self.local.gcs_redis} "
                         f"(namespace {self.local.storage_namespace})")
        if self.api_url:
            lines.append(f"api: {self.api_url}")
        return lines

    def write_state(self, path: Path = STATE_FILE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"address": self.address, "dashboard": self.dashboard_url,
                                    "metrics": self.metrics_url, "serve": self.serve_url, "api": self.api_url,
                                    "pid": os.getpid(),
                                    "controller": self.config.controller.name,
                                    "namespace": self.config.controller.namespace}))

    def shutdown(self) -> None:
        import ray  # lazy here and below: importing Ray takes seconds; `rayfin --help` need not

        if self.supervisor is not None:      # first, or it would bring the controller back
            stop_supervisor(self.supervisor)

        if self.serve_started:
            try:
                from ray import serve

                serve.shutdown()
            except Exception as exc:  # noqa: BLE001 - shutting down: report and go on
                log.warning("serve shutdown: %s", exc)
        try:
            ray.get(self.controller.shutdown.remote(self.deploy_key), timeout=10)
            ray.kill(self.controller, no_restart=True)
        except Exception as exc:  # noqa: BLE001
            log.warning("controller shutdown: %s", exc)
        if ray.is_initialized():
            ray.shutdown()
        if self.local is not None:
            self.local.shutdown()
        try:
            if STATE_FILE.exists() and json.loads(STATE_FILE.read_text()).get("pid") == os.getpid():
                STATE_FILE.unlink()
        except (OSError, ValueError):
            pass


def with_ledger(config: RayfinConfig, ledger: str | None, *, password_env: str | None = None,
                password_file: str | None = None) -> RayfinConfig:
    """The config with another ledger: a postgresql:// URL (password from `password_env` or
    `password_file`) or a SQLite file path."""
    if not ledger:
        return config
    return config.model_copy(update={"controller": controller_with_ledger(
        config.controller, ledger, password_env=password_env, password_file=password_file)})


def controller_with_ledger(controller: ControllerConfig, ledger: str, *, password_env: str | None = None,
                           password_file: str | None = None) -> ControllerConfig:
    data = controller.model_dump()
    if is_postgres_url(ledger):
        data.update(ledger=ledger, ledger_password_env=password_env, ledger_password_file=password_file)
    else:
        data.update(ledger=None, ledger_path=ledger, ledger_password_env=None, ledger_password_file=None)
    try:
        return ControllerConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(exc, "--ledger", prefix="controller") from None


def bring_up(config: RayfinConfig, *, address: str | None = None, serve: bool = True,
             dashboard: bool = True, dashboard_port: int | None = None, metrics_port: int | None = None,
             serve_port: int | None = None, gcs_redis: str | None = None, api: bool = True,
             access_log: bool = True, supervise: bool = True) -> Running:
    """Start (or attach to) the cluster, the controller and Serve. `gcs_redis` (HOST:PORT, or
    $RAY_REDIS_ADDRESS) keeps a local cluster's GCS in that Redis (GCS fault tolerance); `api`:
    deploy the rayfin API (Serve starts for it even when no model is served); `supervise`: bring
    the controller back if it is killed for good."""
    import ray

    from rayfin.controller.actor import start_controller  # imports Ray

    t0 = time.monotonic()
    local = None
    timings: dict[str, float] = {}
    if address is None:
        local = LocalCluster(config, dashboard=dashboard, dashboard_port=dashboard_port,
                             metrics_export_port=metrics_port, ingress=ingress,
                             gcs_redis=gcs_redis or os.environ.get("RAY_REDIS_ADDRESS") or None)
        address = local.start()
        timings["cluster_s"] = local.started_s
    os.environ["RAY_ADDRESS"] = address  # so Ray Jobs, `rayfin status` and child processes find it
    ray.init(address=address, namespace=config.controller.namespace, log_to_driver=False,
             logging_level="WARNING")
    try:
        t1 = time.monotonic()
        deploy_key = secrets.token_hex(16)
        controller = start_controller(config, deploy_key=deploy_key)
        timings["controller_s"] = time.monotonic() - t1
        dash = local.dashboard_url if local is not None else _dashboard_url()
        port = metrics_port if metrics_port is not None else config.dashboard.metrics_export_port
        metrics_url = (f"http://{ray.util.get_node_ip_address()}:{port}/metrics" if local is not None
                       else _head_metrics_url())
        run = Running(config, address, dash, metrics_url, None, controller, local, timings, deploy_key=deploy_key)
        if serve and config.serve.enabled and config.serve.models:
            t2 = time.monotonic()
            run.serve_url = _deploy_serve(config, controller, serve_port, deploy_key)
            run.serve_started = run.serve_url is not None
            timings["serve_s"] = time.monotonic() - t2
        if api and config.api.enabled:
            t3 = time.monotonic()
            run.api_url = _deploy_api(config, serve_port, access_log)
            run.serve_started = run.serve_started or run.api_url is not None
            timings["api_s"] = time.monotonic() - t3
        if supervise:
            run.supervisor = spawn_supervisor(config, address, deploy_key)
        timings["total_s"] = time.monotonic() - t0
        return run
    except BaseException:
        if ray.is_initialized():
            ray.shutdown()
        if local is not None:
            local.shutdown()
        raise


def _deploy_serve(config: RayfinConfig, controller: Any, port: int | None, token: str) -> str | None:
    try:
        from serve_apps.deploy import deploy_from_config
    except ImportError as exc:
        log.warning("serve apps not available: %s", exc)
        return None
    info = deploy_from_config(config, controller=controller, http_port=port, token=token)
    return (info or {}).get("url") or f"http://{config.serve.host}:{port or config.serve.port}"


def _deploy_api(config: RayfinConfig, port: int | None, access_log: bool) -> str:
    from serve_apps.api_app import deploy_api  # imports Ray Serve

    return deploy_api(config, http_port=port, access_log=access_log)


def _head_metrics_url() -> str | None:
    """Prometheus endpoint of the head node of an attached cluster (where the controller runs)."""
    import ray

    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in (node.get("Resources") or {}):
            port = node.get("MetricsExportPort")
            return f"http://{node['NodeManagerAddress']}:{port}/metrics" if port else None
    return None


def _dashboard_url() -> str | None:
    import ray

    ctx = ray.get_runtime_context()
    url = getattr(ctx, "dashboard_url", None) or (ray._private.worker.global_worker.node.webui_url
                                                  if hasattr(ray._private.worker.global_worker, "node") else None)
    if url and not url.startswith("http"):
        url = "http://" + url
    return url
