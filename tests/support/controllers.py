"""A second rayfin controller on the session cluster, for tests that need a different config
(a quota plan, a shifted clock): its own name, namespace and ledger, and no metrics, so the
session controller's gauges (which tests/integration/test_observability.py reads) stay its own.
Workers import this module from the checkout (tests/conftest.py puts it on PYTHONPATH)."""
from __future__ import annotations

from typing import Any

from rayfin.config import RayfinConfig
from rayfin.controller.actor import RayfinController
from rayfin.controller.recorder import Recorder


class QuietController(RayfinController):
    def _recorder(self) -> Recorder | None:
        return None     # NullRecorder: no Ray metrics with the session controller's desk tags


def start_quiet_controller(config: RayfinConfig) -> Any:
    """As rayfin.controller.actor.start_controller, with QuietController; returns the handle.
    The caller kills it (ray.kill) when done."""
    import ray

    c = config.controller
    handle = ray.remote(QuietController).options(
        name=c.name, namespace=c.namespace, lifetime="detached", get_if_exists=True, max_restarts=0,
        max_concurrency=32, num_cpus=0, resources={"node:__internal_head__": 0.001},
    ).remote(config.model_dump(mode="json"))
    ray.get(handle.ping.remote(), timeout=120)
    return handle
