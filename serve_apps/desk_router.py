"""Serve request router of the model applications: sheds over-quota desks in the proxy.

Serve runs one request router per deployment in every process that calls the deployment, and
for HTTP that is the proxy, before any replica is chosen. `DeskQuotaRouter` first asks its
`EdgeFilter` (serve_apps/edge.py, pure) whether the request's desk is beyond its whole quota;
if so it fails the pending request with `EdgeRefusal`, which Serve's proxy answers itself as
`429` with our JSON body and a `Retry-After` from the edge bucket (Serve answers a
`BackPressureError` with its `status_code`, `retry_after_s` and `message`, and sends a
non-string `message` as JSON). The request never costs a replica call. Otherwise it routes as
Serve's default router does (power of two choices over the replicas, locality first).

Configured by `serve_apps.deploy.build_model_app` through `RequestRouterConfig` with kwargs
`edge` (`EdgeSettings.to_wire()`: Serve wants JSON there) and `route` (the application's
predict path). Used with Serve's Python proxy only: HAProxy picks the replica itself. Where Serve's proxy runs rayfin's ASGI middleware
(serve_apps/edge_asgi.py), the router registers its filter there and the middleware sheds
first, cheaper still; the router then skips requests the middleware marked as checked.

Relies on Ray Serve 2.60 internals, pinned in pyproject.toml and covered by
tests/integration/test_serve_gateway.py: HTTP requests reach the router with the pickled
`StreamingHTTPRequest` as the only argument, and a refused request must be dropped from the
router's index of pending requests (`_remove_pending_request_from_indices`).
"""
from __future__ import annotations

import logging
import pickle
import random
from typing import List, Optional

from ray.serve.exceptions import BackPressureError
from ray.serve.request_router import (FIFOMixin, LocalityMixin, MultiplexMixin, PendingRequest, RequestRouter,
                                      RunningReplica)

from rayfin.telemetry.serving import count_edge_refusal
from serve_apps import edge_asgi
from serve_apps.access import bearer_of
from serve_apps.edge import EdgeFilter, EdgeSettings, edge_body
from serve_apps.quota import Refusal

log = logging.getLogger("ray.serve")


class EdgeRefusal(BackPressureError):
    """A 429 answered by Serve's proxy: the body is the refusal's JSON, not Serve's text."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(0, 0, 429, refusal.retry_after_s)
        self.refusal = refusal

    @property
    def message(self):  # Serve sends a non-str message as a JSON body
        return edge_body(self.refusal)

    def __reduce__(self):
        return (EdgeRefusal, (self.refusal,))


def request_headers(pending_request: PendingRequest):
    """The ASGI headers of an HTTP request from Serve's proxy, else None."""
    meta = pending_request.metadata
    if not meta.is_http_request or not pending_request.args:
        return None
    arg = pending_request.args[0]
    try:
        request = pickle.loads(arg) if isinstance(arg, (bytes, bytearray)) else arg
        return list(request.asgi_scope.get("headers", ()))
    except Exception:  # noqa: BLE001 - not a request we understand: let the replica answer it
        return None


class DeskQuotaRouter(FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter):
    edge: EdgeFilter | None = None

    def initialize_state(self, edge: dict | None = None, route: str | None = None, **_unused) -> None:
        if not edge:
            return
        self.edge = EdgeSettings.from_wire(edge).filter()
        if route:   # the proxy's ASGI middleware (if Serve runs it) sheds before this router
            edge_asgi.register(route, self.edge, self._count)

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        if pending_request is not None and self.edge is not None and not pending_request.future.done():
            headers = request_headers(pending_request)
            if headers is not None and edge_asgi.marked_checked(headers):
                return self._power_of_two(pending_request)     # the middleware passed it
            refusal = self.edge.check(bearer_of(headers))
            if refusal is not None:
                pending_request.future.set_exception(EdgeRefusal(refusal))
                self._count(refusal)
                remove = getattr(self, "_remove_pending_request_from_indices", None)
                if remove is not None:
                    remove(pending_request)
                # Hand back candidates so the routing loop looks at the request, sees it done
                # and stops (an empty list would make it back off and ask again).
                return [list(candidate_replicas)]
        return self._power_of_two(pending_request)

    def _count(self, refusal: Refusal) -> None:
        count_edge_refusal(self._deployment_id.name, refusal)

    def _power_of_two(self, pending_request: Optional[PendingRequest]) -> List[List[RunningReplica]]:
        """Serve's default: two random candidates (same node or multiplexed model first)."""
        if pending_request is not None and pending_request.metadata.multiplexed_model_id:
            ids = self.apply_multiplex_routing(pending_request=pending_request)
        else:
            ids = self.apply_locality_routing(pending_request=pending_request)
        if not ids:
            return []
        ids = list(ids)
        chosen = ids if len(ids) <= 2 else random.sample(ids, 2)
        if len(chosen) == 2 and random.getrandbits(1):
            chosen.reverse()
        return [[self._replicas[i] for i in chosen]]
