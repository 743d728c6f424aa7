"""Deploy the serving stack from a RayfinConfig: one Serve application per model, plus the gateway.

    rayfin-model-<name>   ModelServer (batched torch model), no HTTP route in production
    rayfin-gateway        Gateway (FastAPI ingress, route "/") + QuotaBroker (one replica)

With a controller handle, every model is first reserved in the controller's GPU ledger against
its owning desk (`reserve_serving`); a refusal raises the controller's typed error
(`QuotaExceeded`) before anything is deployed.
"""
from __future__ import annotations

import logging
from typing import Any

from rayfin.config import RayfinConfig, ServeConfig, ServeModelConfig
from rayfin.errors import ConfigError, RayfinError, from_wire

log = logging.getLogger(__name__)

GATEWAY_APP = "rayfin-gateway"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def model_app_name(model: str) -> str:
    return f"rayfin-model-{model}"


def direct_route(model: str) -> str:
    return f"/direct/{model}"


def gateway_spec(config: RayfinConfig) -> dict[str, Any]:
    """Plain data the gateway replicas are built from (no secrets beyond the token hashes)."""
    from serve_apps.access import AccessPolicy
    from serve_apps.quota import QuotaSpec

    sc = config.serve
    return {
        "access": AccessPolicy.from_config(config).to_dict(),
        "quotas": {d.name: vars(QuotaSpec.from_config(d.serving)) for d in config.desks},
        "replicas": sc.gateway_replicas,
        "max_body_bytes": sc.max_body_bytes,
        "sync_interval_s": sc.quota_sync_interval_s,
        "local_fraction": sc.quota_local_share,
        "model_apps": {m.name: model_app_name(m.name) for m in sc.models},
    }


def model_spec(m: ServeModelConfig) -> dict[str, Any]:
    return {"name": m.name, "kind": m.kind, "gpus_per_replica": m.gpus_per_replica, "seed": m.seed, "fit_steps": m.fit_steps,
            "max_batch_size": m.max_batch_size, "batch_wait_timeout_s": m.batch_wait_timeout_s}


def build_model_app(m: ServeModelConfig, resources: dict[str, float] | None = None):
    from ray.serve.config import BackpressureConfig

    from serve_apps.model_server import ModelServer

    actor_options: dict[str, Any] = {"num_cpus": m.num_cpus_per_replica, "num_gpus": m.gpus_per_replica}
    if resources:
        actor_options["resources"] = dict(resources)
    return ModelServer.options(
        name=m.name,
        num_replicas=m.num_replicas,
        ray_actor_options=actor_options,
        # A batch can only fill up to max_ongoing_requests; leave room for the next batch to queue.
        max_ongoing_requests=max(64, 4 * m.max_batch_size),
        max_queued_requests=m.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=1),
    ).bind(model_spec(m))


def build_gateway_app(config: RayfinConfig):
    from ray.serve.config import BackpressureConfig

    from serve_apps.broker import QuotaBroker
    from serve_apps.gateway import Gateway

    spec = gateway_spec(config)
    broker = QuotaBroker.bind(spec["quotas"], replicas=spec["replicas"], local_fraction=spec["local_fraction"],
                              token_ttl_s=config.serve.lease_ttl_s,
                              holder_ttl_s=max(5.0, 10 * config.serve.quota_sync_interval_s))
    return Gateway.options(
        num_replicas=config.serve.gateway_replicas,
        max_ongoing_requests=1000,
        max_queued_requests=4000,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=1),
    ).bind(spec, broker)


def _check_loopback(sc: ServeConfig) -> None:
    if sc.host not in LOOPBACK:
        raise ConfigError(f"serve.host: got {sc.host!r}; rayfin serves on loopback only ({', '.join(LOOPBACK)}). "
                          "To fix: set serve.host to 127.0.0.1 and publish the port through your ingress",
                          path="serve.host")


def _reserve(controller, m: ServeModelConfig) -> dict[str, float]:
    import ray

    reply = ray.get(controller.reserve_serving.remote(model=m.name, desk=m.owner, replicas=m.num_replicas,
                                                      gpus_per_replica=m.gpus_per_replica))
    if not reply.get("ok"):
        raise from_wire(reply.get("error") or {"type": "RayfinError", "message": f"reserve_serving refused {m.name}"})
    return dict(reply.get("resources") or {})


def _release_quietly(controller, names: list[str]) -> None:
    release = getattr(controller, "release_serving", None)
    if release is None:
        return
    import ray

    for name in names:
        try:
            ray.get(release.remote(model=name))
        except Exception:  # noqa: BLE001 - best effort while already failing
            log.warning("could not release serving reservation of %s", name)


def deploy_from_config(config: RayfinConfig, *, controller=None, http_port: int | None = None,
                       expose_models_http: bool = False, access_log: bool = True) -> dict[str, Any]:
    """Deploy every model of `config.serve.models` and the gateway; return where they are.

    `expose_models_http` also routes each model at /direct/<name> with no gateway in front
    (benchmarks only: that path has no quota). `access_log=False` turns off Serve's per-request
    log lines (benchmarks and tests; production keeps them as the audit trail).
    """
    from ray import serve
    from ray.serve.api import RunTarget

    sc = config.serve
    _check_loopback(sc)
    port = http_port or sc.port

    resources: dict[str, dict[str, float]] = {}
    if controller is not None:
        reserved: list[str] = []
        try:
            for m in sc.models:
                resources[m.name] = _reserve(controller, m)
                reserved.append(m.name)
        except RayfinError:
            _release_quietly(controller, reserved)
            raise

    serve.start(http_options={"host": sc.host, "port": port})
    logging_config = {"enable_access_log": access_log}
    targets = [RunTarget(build_model_app(m, resources.get(m.name)), name=model_app_name(m.name),
                         route_prefix=direct_route(m.name) if expose_models_http else None,
                         logging_config=logging_config)
               for m in sc.models]
    targets.append(RunTarget(build_gateway_app(config), name=GATEWAY_APP, route_prefix="/",
                             logging_config=logging_config))
    serve.run_many(targets)

    base = f"http://{sc.host}:{port}"
    return {
        "url": base,
        "gateway": {"app": GATEWAY_APP, "replicas": sc.gateway_replicas, "url": base + "/v1/models"},
        "models": {m.name: {"app": model_app_name(m.name), "kind": m.kind, "owner": m.owner,
                            "replicas": m.num_replicas, "gpus_per_replica": m.gpus_per_replica,
                            "resources": resources.get(m.name, {}),
                            "direct_url": base + direct_route(m.name) if expose_models_http else None}
                   for m in sc.models},
    }


def undeploy(config: RayfinConfig) -> None:
    """Delete the gateway and model applications (Serve itself keeps running)."""
    from ray import serve

    for name in [GATEWAY_APP] + [model_app_name(m.name) for m in config.serve.models]:
        try:
            serve.delete(name)
        except Exception:  # noqa: BLE001 - already gone
            pass
