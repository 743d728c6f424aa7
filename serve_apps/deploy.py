"""Deploy the serving stack from a RayfinConfig: one Serve application per model, plus the gateway.

    rayfin-model-<name>   GatedModel (admission and the batched torch model in one replica),
                          route "/v1/models/<name>:predict"
    rayfin-gateway        Gateway (FastAPI ingress, route "/": GET /v1/models, /v1/quota,
                          /healthz, 404 for unknown models) + QuotaBroker (one replica)

With a controller handle, every model is first reserved in the controller's GPU ledger against
its owning desk (`reserve_serving`); a refusal raises the controller's typed error
(`QuotaExceeded`) before anything is deployed.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import ray
from ray import serve
from ray.serve.api import RunTarget
from ray.serve.config import BackpressureConfig, RequestRouterConfig

from rayfin.config import RayfinConfig, ServeConfig, ServeModelConfig, load_config
from rayfin.errors import ConfigError, RayfinError, from_wire
from serve_apps import haproxy_edge, ingress
from serve_apps.admission import AdmissionSettings
from serve_apps.deployments import HEAD_RESOURCE, Gateway, GatedModel, QuotaBroker, predict_route
from serve_apps.edge import EdgeSettings
from serve_apps.model_server import ModelServer

log = logging.getLogger(__name__)

GATEWAY_APP = "rayfin-gateway"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def model_app_name(model: str) -> str:
    return f"rayfin-model-{model}"


def direct_app_name(model: str) -> str:
    return f"rayfin-direct-{model}"


def direct_route(model: str) -> str:
    return f"/direct/{model}"


def admission_settings(config: RayfinConfig, gateway_app: str = GATEWAY_APP) -> AdmissionSettings:
    """What the model replicas, the broker and the gateway are built from (`gateway_app`: the
    Serve application that holds the broker)."""
    return AdmissionSettings.from_config(config, gateway_app)


def model_options(m: ServeModelConfig, resources: dict[str, float] | None, *, max_ongoing: int) -> dict[str, Any]:
    """Serve options shared by a model's deployments (with admission, and plain): replicas, resources,
    and Serve's own 429 (`Retry-After: 1`) when the model's queue is full."""
    return dict(name=m.name, num_replicas=m.num_replicas, ray_actor_options=replica_options(m, resources),
                max_ongoing_requests=max_ongoing, max_queued_requests=m.max_queued_requests,
                backpressure_config=BackpressureConfig(status_code=429, retry_after_s=1))


def replica_options(m: ServeModelConfig, resources: dict[str, float] | None) -> dict[str, Any]:
    """CPUs and (fractional) GPUs of one replica, plus the island resource the controller
    accounted the model on, so Ray places the replica where the ledger says."""
    options: dict[str, Any] = {"num_cpus": m.num_cpus_per_replica, "num_gpus": m.gpus_per_replica}
    if resources:
        options["resources"] = dict(resources)
    return options


def build_model_app(config: RayfinConfig, m: ServeModelConfig, resources: dict[str, float] | None = None,
                    gateway_app: str = GATEWAY_APP):
    """The model's own application: admission + batched model in one replica (route: predict_route)."""
    settings = admission_settings(config, gateway_app)
    # Quota refusals are answered by the replica itself, so it must accept more at once than the
    # model alone: a flood of refused requests must not queue behind admitted ones.
    options = model_options(m, resources, max_ongoing=max(256, 4 * m.max_batch_size))
    if config.serve.edge_shedding and config.serve.ingress == "proxy":
        # HAProxy picks the replica itself (Serve refuses a custom router there): with that
        # ingress each replica hands its edge filter to the middleware of its own HTTP server.
        options["request_router_config"] = edge_router_config(EdgeSettings(settings.access, settings.quotas),
                                                              predict_route(m.name))
    return GatedModel.options(**options).bind(settings, m)


def build_direct_app(m: ServeModelConfig, niceness: int | None = None):
    """Plain Serve, for the benchmark's baseline: the model alone, no admission, not in the GPU ledger.
    `niceness`: the gated replicas' (`serve.replica_niceness`), so that the baseline differs from
    them by admission alone, not by CPU priority."""
    # A batch can only fill up to max_ongoing_requests; leave room for the next batch to queue.
    return ModelServer.options(**model_options(m, None, max_ongoing=max(64, 4 * m.max_batch_size))).bind(
        m, niceness=niceness)


def edge_router_config(edge: EdgeSettings, route: str) -> RequestRouterConfig:
    """Serve's request router for a model application: sheds desks beyond their whole quota in
    the proxy (serve_apps/desk_router.py, serve_apps/edge.py), else Serve's default routing; it
    hands its filter to the proxy's ASGI middleware for `route` (serve_apps/edge_asgi.py)."""
    return RequestRouterConfig(request_router_class="serve_apps.desk_router:DeskQuotaRouter",
                               request_router_kwargs={"edge": edge.to_wire(), "route": route})


def broker_options(config: RayfinConfig) -> dict:
    """The quota broker's placement: on the head node when the HAProxy edge it updates is a sidecar
    of the head pod (`serve.edge_runtime.broker_on_head`), so its shared volume or loopback port is
    the broker's too; else anywhere."""
    rt = config.serve.edge_runtime
    if rt is not None and rt.broker_on_head:
        return {"ray_actor_options": {"num_cpus": 0, "resources": {HEAD_RESOURCE: 0.001}}}
    return {}


def build_gateway_app(config: RayfinConfig, gateway_app: str = GATEWAY_APP):
    settings = admission_settings(config, gateway_app)
    broker = QuotaBroker.options(**broker_options(config)).bind(settings)
    return Gateway.options(
        num_replicas=config.serve.gateway_replicas,
        max_ongoing_requests=1000,
        max_queued_requests=4000,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=1),
    ).bind(settings, broker)


def _check_loopback(sc: ServeConfig) -> None:
    if sc.host not in LOOPBACK:
        raise ConfigError(f"serve.host: got {sc.host!r}; rayfin serves on loopback only ({', '.join(LOOPBACK)}). "
                          "To fix: set serve.host to 127.0.0.1 and publish the port through your ingress",
                          path="serve.host")


def _reserve(controller, m: ServeModelConfig, token: str | None) -> dict[str, float]:
    """Charge the model's replicas to its owner desk; returns the custom resources (the island the
    controller accounted them on) to add to the replicas' actor options."""
    reply = ray.get(controller.reserve_serving.remote(token, model=m.name, desk=m.owner, replicas=m.num_replicas,
                                                      gpus_per_replica=m.gpus_per_replica))
    if not reply.get("ok"):
        raise from_wire(reply.get("error") or {"type": "RayfinError", "message": f"reserve_serving refused {m.name}"})
    return dict((reply.get("value") or {}).get("resources") or {})


def _release_quietly(controller, names: list[str], token: str | None) -> None:
    release = getattr(controller, "release_serving", None)
    if release is None:
        return
    for name in names:
        try:
            ray.get(release.remote(token, model=name))
        except Exception:  # noqa: BLE001 - best effort while already failing
            log.warning("could not release serving reservation of %s", name)


def start_serve(config: RayfinConfig, http_port: int | None, access_log: bool = True) -> dict[str, Any]:
    """Start Serve on `serve.host` and the port (the models, the gateway and the rayfin API share
    it by route prefix); returns the logging config the applications use."""
    sc = config.serve
    _check_loopback(sc)
    logging_config = {"enable_access_log": access_log}
    # Also the proxy's own per-request log lines (global logging config, used when this call
    # starts Serve); production keeps them with access_log=True.
    # HAProxy ingress: one HAProxy, on the head node. Several on one host (rayfin's simulated
    # nodes) would all bind the same ports; on a real multi-host cluster (KubeRay) the manifests
    # run one per pod. Serve's Python proxy: its default, one per node sharing the port.
    start_options: dict[str, Any] = {"proxy_location": "HeadOnly"} if sc.ingress == "haproxy" else {}
    serve.start(http_options={"host": sc.host, "port": http_port or sc.port}, logging_config=logging_config,
                **start_options)
    return logging_config


def deploy_from_config(config: RayfinConfig, *, controller=None, http_port: int | None = None,
                       expose_models_http: bool = False, access_log: bool = True,
                       token: str | None = None, direct_routes_timeout_s: float = 30.0) -> dict[str, Any]:
    """Deploy every model of `config.serve.models` and the gateway; return where they are.

    `expose_models_http` also routes each model at /direct/<name> as plain Serve, with no
    admission in front (benchmarks only: that path has no quota). `access_log=False` turns off
    Serve's per-request log lines (benchmarks and tests; production keeps them as the audit
    trail). `token` is the deploy key (or admin token) the controller accepts for reserving
    serving GPUs. With HAProxy ingress on this machine it returns once HAProxy sends every
    application's requests straight to its replicas, not through Serve's proxy (at most
    `direct_routes_timeout_s`; `direct_routes` in the answer says how it went).
    """
    sc = config.serve
    _check_loopback(sc)
    port = http_port or sc.port

    resources: dict[str, dict[str, float]] = {}
    if controller is not None:
        reserved: list[str] = []
        try:
            for m in sc.models:
                resources[m.name] = _reserve(controller, m, token)
                reserved.append(m.name)
        except RayfinError:
            _release_quietly(controller, reserved, token)
            raise

    logging_config = start_serve(config, port, access_log)
    targets = [RunTarget(build_model_app(config, m, resources.get(m.name)), name=model_app_name(m.name),
                         route_prefix=predict_route(m.name), logging_config=logging_config)
               for m in sc.models]
    if expose_models_http:
        targets += [RunTarget(build_direct_app(m, config.serve.replica_niceness), name=direct_app_name(m.name), route_prefix=direct_route(m.name),
                              logging_config=logging_config) for m in sc.models]
    targets.append(RunTarget(build_gateway_app(config), name=GATEWAY_APP, route_prefix="/",
                             logging_config=logging_config))
    serve.run_many(targets)
    routes = wait_for_direct_routes_here(sc, [t.name for t in targets], timeout_s=direct_routes_timeout_s)

    base = f"http://{sc.host}:{port}"
    return {
        "url": base,
        "direct_routes": routes.as_dict() if routes else None,
        "gateway": {"app": GATEWAY_APP, "replicas": sc.gateway_replicas, "url": base + "/v1/models"},
        "models": {m.name: {"app": model_app_name(m.name), "kind": m.kind, "owner": m.owner,
                            "replicas": m.num_replicas, "gpus_per_replica": m.gpus_per_replica,
                            "resources": resources.get(m.name, {}),
                            "predict_url": base + f"/v1/models/{m.name}:predict",
                            "direct_url": base + direct_route(m.name) if expose_models_http else None}
                   for m in sc.models},
    }


def wait_for_direct_routes_here(sc: ServeConfig, apps: list[str], timeout_s: float = 30.0) -> "ingress.DirectRoutes | None":
    """`ingress.wait_for_direct_routes` on the HAProxies of this cluster on this machine (whose
    admin sockets `ingress.install` put in this process's environment); None where there are
    none to ask (Serve's proxy ingress, or a cluster started elsewhere)."""
    base = os.environ.get(haproxy_edge.SOCKET_ENV)
    if sc.ingress != "haproxy" or not base or timeout_s <= 0:
        return None
    routes = ingress.wait_for_direct_routes(apps, lambda: haproxy_edge.admin_sockets(base), timeout_s=timeout_s)
    if not routes.ready:
        log.warning("HAProxy does not yet send every application straight to its replicas after %.0f s (%s): "
                    "until it does, their requests go through Serve's proxy: %s", routes.waited_s, routes.reason,
                    routes.backends)
    return routes


def undeploy(config: RayfinConfig) -> None:
    """Delete the gateway and model applications (Serve itself keeps running)."""
    for name in [GATEWAY_APP] + [n for m in config.serve.models for n in (model_app_name(m.name),
                                                                          direct_app_name(m.name))]:
        try:
            serve.delete(name)
        except Exception:  # noqa: BLE001 - already gone
            pass


def rayservice_app(args: dict):
    """Application builder for KubeRay's RayService (`import_path: serve_apps.deploy:rayservice_app`).

    `args`: `config` (path of the rayfin config), `app` (`gateway` or `model`), `model` (the
    model's name, for `app: model`), optional `gateway_app` (the Serve application name of the
    gateway, which holds the quota broker; `gateway` as in configs/kuberay/rayservice.yaml).
    Routes come from the RayService's serveConfigV2: the gateway at "/", each model at
    "/v1/models/<name>:predict". GPU reservations in the controller's ledger are made by
    `deploy_from_config` only.
    """
    args = dict(args or {})
    if "config" not in args:
        raise ConfigError("rayservice_app: args.config (path of the rayfin config) is required", path="args.config")
    config = load_config(args["config"])
    gateway_app = str(args.get("gateway_app", "gateway"))
    kind = args.get("app")
    if kind == "gateway":
        return build_gateway_app(config, gateway_app)
    if kind == "model":
        name = args.get("model")
        models = {m.name: m for m in config.serve.models}
        if name not in models:
            raise ConfigError(f"rayservice_app: args.model: got {name!r}; one of {', '.join(models) or '(none)'}",
                              path="args.model")
        return build_model_app(config, models[name], gateway_app=gateway_app)
    raise ConfigError(f"rayservice_app: args.app: got {kind!r}; one of gateway, model", path="args.app")
