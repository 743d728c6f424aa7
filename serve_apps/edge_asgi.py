"""The edge as an ASGI middleware: a flood is refused before Serve handles it.

Where it runs depends on `serve.ingress` (serve_apps/ingress.py). With HAProxy ingress each
model replica serves HTTP itself, Serve wraps that server in the same proxy-callback
middlewares, and the replica registers its filter here (`where="replica"`); the desk the
middleware authenticated is handed to the gate of the same process (`desk_of`), so the token
is hashed once per request. With Serve's Python proxy, as follows.

Serve's proxy calls the function named by `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` when it
starts and wraps its HTTP app in the Starlette middlewares that function returns (Serve's own
proxy callback). `proxy_middlewares` returns `EdgeMiddleware`: for a `POST` to a model's
predict path it asks that model's `EdgeFilter` (serve_apps/edge.py) and, when the desk is beyond
its whole rate and burst, answers 429 itself, straight after uvicorn has parsed the request:
no request context, no handle call, no router hop and no Serve metrics for a request that was
never going to run, so a refusal here costs far less proxy CPU than the same refusal in the
request router (figures in docs/serving.md).

The filters come from the request routers (`serve_apps.desk_router.DeskQuotaRouter`), which
Serve creates in the same proxy process with each model application's quota kwargs: a router
registers its filter under its route (`register`). Until it has, requests to that route pass
the middleware unchecked and the router checks them. A request is checked once, by one of the
two: the middleware marks what it passed with a header holding a random per-process value
(`CHECKED_HEADER`, any client copy is dropped first), and the router skips marked requests.
A replica's middleware adds no such header (no router runs there): it hands the desk on.
Without the environment variable (a cluster started elsewhere), the router alone sheds.

`install_env` sets the variable for a cluster rayfin starts (raylets and the Serve proxy
inherit the environment of the process that starts Ray). No Ray import here.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import uuid
from typing import Callable

from starlette.middleware import Middleware

from serve_apps.access import bearer_token, header_value
from serve_apps.edge import EdgeFilter, edge_body
from serve_apps.priority import niceness_from_env, set_niceness
from serve_apps.quota import Refusal

log = logging.getLogger("ray.serve")

ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "serve_apps.edge_asgi.proxy_middlewares"
CHECKED_HEADER = b"x-rayfin-edge-checked"
NONCE = secrets.token_hex(16).encode()     # never sent to clients: they cannot forge it
SCOPE_DESK = "rayfin.edge.desk"            # ASGI scope key: (NONCE, desk) the middleware authenticated
REPLICA = b"replica"                       # `register(where=...)` of a model replica's own filter

Counter = Callable[[Refusal], None]

_lock = threading.Lock()                     # guards the registry (the filters lock themselves)
_filters: dict[str, tuple[EdgeFilter, Counter, bytes]] = {}


def register(route: str, edge: EdgeFilter, count: Counter, where: str = "proxy") -> None:
    """Hand a filter to the middleware of this process: a request router does in Serve's proxy
    (`where` "proxy"); with HAProxy ingress a model replica does in its own HTTP server
    ("replica"). `where` is the `X-Rayfin-Edge` header of the refusals."""
    with _lock:
        _filters[route] = (edge, count, where.encode())


def unregister(route: str) -> None:
    with _lock:
        _filters.pop(route, None)


def install_env(environ: dict | None = None) -> bool:
    """Point Serve's proxy callback at `proxy_middlewares` unless another callback is set."""
    env = os.environ if environ is None else environ
    current = env.get(ENV)
    if current and current != CALLBACK:
        log.warning("%s is %s: rayfin's edge sheds in the request router only", ENV, current)
        return False
    env[ENV] = CALLBACK
    return True


def proxy_middlewares() -> list:
    """Serve's proxy callback: the middlewares the proxy wraps its HTTP app in. Also where the
    proxy (and, with HAProxy ingress, a replica's HTTP server) takes `serve.replica_niceness`
    (serve_apps/priority.py), so that the ingress runs at the replicas' priority."""
    set_niceness(niceness_from_env())
    return [Middleware(EdgeMiddleware)]


def _bearer(authorization: bytes | None) -> str | None:
    """The token of an Authorization header's raw value, else None."""
    return bearer_token(authorization.decode("latin-1")) if authorization is not None else None


def desk_of(scope) -> tuple[bool, str | None]:
    """(known, desk): the desk this process's middleware authenticated the request as (None:
    no desk's credential), if it did. A client cannot set scope keys, and the value carries this
    process's nonce, so a scope pickled from Serve's proxy to a replica is never trusted."""
    mark = scope.get(SCOPE_DESK)
    if isinstance(mark, tuple) and len(mark) == 2 and mark[0] == NONCE:
        return True, mark[1]
    return False, None


def marked_checked(headers) -> bool:
    """Whether the proxy's middleware already took this request past the edge."""
    return any(k == CHECKED_HEADER and v == NONCE for k, v in headers)


class EdgeMiddleware:
    """Pure ASGI middleware (no Starlette request objects on the hot path)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        headers = scope.get("headers") or []
        authorization, forged = None, False
        for k, v in headers:                       # one pass (this runs on every request)
            if k == b"authorization":
                if authorization is None:
                    authorization = v
            elif k == CHECKED_HEADER:
                forged = True
        if forged:                                  # a client's copy never counts
            headers = [(k, v) for k, v in headers if k != CHECKED_HEADER]
            scope = {**scope, "headers": headers}
        entry = _filters.get(scope.get("path", "")) if scope.get("method") == "POST" else None
        if entry is None:
            return await self.app(scope, receive, send)
        edge, count, where = entry
        desk, refusal = edge.screen(_bearer(authorization))
        if refusal is None:
            # In a replica (HAProxy ingress) the desk goes to the gate of this same process
            # (`desk_of`); in Serve's proxy the mark tells the request router it was checked.
            if where == REPLICA:
                scope = {**scope, SCOPE_DESK: (NONCE, desk)}
            else:
                scope = {**scope, "headers": [*headers, (CHECKED_HEADER, NONCE)], SCOPE_DESK: (NONCE, desk)}
            return await self.app(scope, receive, send)
        try:
            count(refusal)
        except Exception:  # noqa: BLE001 - metrics must never fail a response
            pass
        await send_refusal(send, refusal, header_value(headers, b"x-request-id") or str(uuid.uuid4()).encode(),
                           where)


async def send_refusal(send, refusal: Refusal, request_id: bytes, where: bytes = b"proxy") -> None:
    body = json.dumps(edge_body(refusal), separators=(",", ":")).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", refusal.retry_after_header().encode()), (b"x-request-id", request_id),
        (b"x-rayfin-edge", where)]   # where: the proxy's or a replica's middleware (the router says nothing)
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})

