"""The rayfin API on Ray Serve, beside the inference gateway (application `rayfin-api`, route
`api.route_prefix`, "/api" by default). Its replicas are the only HTTP clients of the controller
actor: desks and operators hold a rayfin credential and a URL, never the cluster's Ray token.

The controller is found by name and looked up again after it died without restart (the
supervisor of `rayfin up` brings it back from the ledger): calls in between answer 503
`ControllerUnavailable`, which the SDK retries.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError

from rayfin.api.app import ApiLimits, build_app
from rayfin.config import RayfinConfig, load_config
from rayfin.errors import ConfigError, ControllerUnavailable, NotSupported, from_wire

log = logging.getLogger(__name__)
API_APP = "rayfin-api"


class ActorControllerPort:
    """`rayfin.api.app.ControllerPort` over the controller actor's handle."""

    def __init__(self, name: str, namespace: str, timeout_s: float) -> None:
        self.name, self.namespace, self.timeout_s = name, namespace, timeout_s
        self._handle = None

    async def _get(self):
        if self._handle is None:
            try:
                self._handle = await asyncio.to_thread(ray.get_actor, self.name, namespace=self.namespace)
            except ValueError:
                raise ControllerUnavailable(address=f"{self.namespace}/{self.name}",
                                            reason="no controller actor (restarting?); retry shortly") from None
        return self._handle

    async def call(self, method: str, *args: Any) -> Any:
        handle = await self._get()
        try:
            fn = getattr(handle, method)
        except AttributeError:
            raise NotSupported(action=method) from None
        try:
            reply = await asyncio.wait_for(fn.remote(*args), self.timeout_s)
        except RayActorError as exc:
            self._handle = None       # dead for good: look it up again next time
            raise ControllerUnavailable(address=f"{self.namespace}/{self.name}", reason=str(exc)[:200]) from None
        except asyncio.TimeoutError:
            raise ControllerUnavailable(address=f"{self.namespace}/{self.name}",
                                        reason=f"no answer within {self.timeout_s:g}s") from None
        if not reply.get("ok"):
            raise from_wire(reply.get("error") or {})
        return reply.get("value")


@serve.deployment(name="RayfinApi", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class RayfinApi:
    def __init__(self, controller_name: str, namespace: str, limits: dict[str, int], timeout_s: float) -> None:
        self.port = ActorControllerPort(controller_name, namespace, timeout_s)
        self.limits = ApiLimits(**limits)

    def __serve_build_asgi_app__(self):
        return build_app(self.port, self.limits)


def build_api_app(config: RayfinConfig):
    api = config.api
    limits = ApiLimits.from_config(api)
    return RayfinApi.options(num_replicas=api.replicas).bind(
        config.controller.name, config.controller.namespace,
        {"max_payload_bytes": limits.max_payload_bytes, "max_result_bytes": limits.max_result_bytes},
        api.controller_timeout_s)


def api_url(config: RayfinConfig, port: int | None = None) -> str:
    return f"http://{config.serve.host}:{port or config.serve.port}{config.api.route_prefix}"


def deploy_api(config: RayfinConfig, *, http_port: int | None = None, access_log: bool = True) -> str:
    """Start Serve if nothing started it yet (as `deploy_from_config` would) and run the API
    application; returns its URL."""
    # Not at the top: serve_apps.deploy imports the torch models, and the API's replicas import
    # this module and need none of that.
    from serve_apps.deploy import start_serve

    start_serve(config, http_port, access_log)
    serve.run(build_api_app(config), name=API_APP, route_prefix=config.api.route_prefix,
              logging_config={"enable_access_log": access_log})
    return api_url(config, http_port)


def rayservice_api_app(args: dict):
    """KubeRay RayService builder (`import_path: serve_apps.api_app:rayservice_api_app`,
    `args.config`: path of the rayfin config)."""
    if not args or "config" not in args:
        raise ConfigError("rayservice_api_app: args.config (path of the rayfin config) is required",
                          path="args.config")
    return build_api_app(load_config(args["config"]))


__all__ = ["API_APP", "ActorControllerPort", "RayfinApi", "api_url", "build_api_app", "deploy_api",
           "rayservice_api_app"]
