"""The edge middleware in Serve's proxy (serve_apps/edge_asgi.py): pure ASGI, driven here
without Ray or a server, against a recording downstream app."""
import asyncio
import json

import pytest

from serve_apps import edge_asgi
from serve_apps.edge_asgi import CHECKED_HEADER, NONCE, EdgeMiddleware, marked_checked
from tests.support.builders import Clock
from tests.support.serve import edge

ROUTE = "/v1/models/pricer:predict"


class Downstream:
    """Serve's proxy app as the middleware sees it: records the scopes it was handed."""

    def __init__(self):
        self.scopes = []

    async def __call__(self, scope, receive, send):
        self.scopes.append(scope)
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def call(app, *, path=ROUTE, method="POST", token="fx-token", extra=()):
    headers = [(b"content-type", b"application/json"), *extra]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


@pytest.fixture
def registered():
    clock = Clock()
    counted = []
    e = edge(clock, fx=(10.0, 3))
    edge_asgi.register(ROUTE, e, counted.append)
    yield e, clock, counted
    edge_asgi.unregister(ROUTE)


def test_a_desk_beyond_its_burst_is_answered_429_by_the_middleware(registered):
    e, clock, counted = registered
    down = Downstream()
    app = EdgeMiddleware(down)
    statuses = [call(app)[0] for _ in range(3)]
    status, headers, body = call(app)
    assert statuses == [200, 200, 200] and status == 429
    assert len(down.scopes) == 3                       # the refused request never reached Serve
    doc = json.loads(body)
    assert doc["refused_by"] == "edge" and doc["limit"] == "requests_per_s" and doc["desk"] == "fx"
    assert headers[b"retry-after"] == b"1" and headers[b"content-type"] == b"application/json"
    assert headers[b"x-request-id"] and headers[b"x-rayfin-edge"] == b"proxy"
    assert [r.desk for r in counted] == ["fx"]         # counted in rayfin_serve_requests
    clock.advance(0.1)                                 # one token at 10/s
    assert call(app)[0] == 200


def test_what_it_passes_is_marked_checked_once_and_a_client_mark_is_dropped(registered):
    down = Downstream()
    app = EdgeMiddleware(down)
    call(app, extra=[(CHECKED_HEADER, b"forged")])
    headers = down.scopes[-1]["headers"]
    assert [v for k, v in headers if k == CHECKED_HEADER] == [NONCE]
    assert marked_checked(headers)
    assert not marked_checked([(CHECKED_HEADER, b"forged")])


@pytest.mark.parametrize("path, method, token", [
    ("/v1/models/other:predict", "POST", "fx-token"),   # no filter registered for that route
    (ROUTE, "GET", "fx-token"),
    (ROUTE, "POST", None),                               # cannot attribute: the replica answers 401
    (ROUTE, "POST", "nobody"),
])
def test_what_it_cannot_judge_passes_unmarked_for_the_router(registered, path, method, token):
    down = Downstream()
    app = EdgeMiddleware(down)
    for _ in range(10):
        call(app, path=path, method=method, token=token)
    assert len(down.scopes) == 10
    expect_mark = path == ROUTE and method == "POST"     # checked (and passed): unattributable
    assert all(marked_checked(s["headers"]) is expect_mark for s in down.scopes)


def test_non_http_scopes_pass_untouched():
    down = Downstream()
    app = EdgeMiddleware(down)
    scope = {"type": "lifespan"}
    asyncio.run(app(scope, None, None))
    assert down.scopes == [scope]


@pytest.mark.parametrize("before, after, installed", [
    (None, edge_asgi.CALLBACK, True),
    (edge_asgi.CALLBACK, edge_asgi.CALLBACK, True),
    ("someone.elses.callback", "someone.elses.callback", False),   # never overwritten
])
def test_install_env(before, after, installed):
    env = {} if before is None else {edge_asgi.ENV: before}
    assert edge_asgi.install_env(env) is installed
    assert env[edge_asgi.ENV] == after


def test_proxy_callback_returns_a_starlette_middleware_list():
    from starlette.middleware import Middleware   # what Serve's proxy callback must return

    mws = edge_asgi.proxy_middlewares()
    assert isinstance(mws, list) and mws
    assert all(isinstance(m, Middleware) and m.cls is EdgeMiddleware for m in mws)


def test_a_replica_registered_filter_says_so_in_its_refusals():
    """With HAProxy ingress the gated replica registers the filter of its own HTTP server."""
    clock = Clock()
    edge_asgi.register(ROUTE, edge(clock, fx=(1.0, 1)), lambda r: None, where="replica")
    try:
        down = Downstream()
        app = EdgeMiddleware(down)
        assert call(app, extra=[(CHECKED_HEADER, NONCE)])[0] == 200    # even a copy of the real mark
        passed = down.scopes[-1]
        # No request router runs in a replica: no mark for one, and a client's copy is dropped;
        # the desk goes to the gate of this process instead.
        assert not any(k == CHECKED_HEADER for k, _ in passed["headers"])
        assert edge_asgi.desk_of(passed) == (True, "fx")
        status, headers, _ = call(app)
        assert status == 429 and headers[b"x-rayfin-edge"] == b"replica"
    finally:
        edge_asgi.unregister(ROUTE)


def test_the_desk_is_handed_to_the_gate_of_this_process_only(registered):
    """The middleware authenticated the token; the gate in the same process reuses that, and a
    scope from elsewhere (another process's nonce, or none) is never trusted."""
    down = Downstream()
    app = EdgeMiddleware(down)
    assert call(app)[0] == 200
    assert edge_asgi.desk_of(down.scopes[-1]) == (True, "fx")
    assert call(app, token="nobody")[0] == 200                 # unknown credential: passed on...
    assert edge_asgi.desk_of(down.scopes[-1]) == (True, None)   # ...known to be no desk's (401)
    assert edge_asgi.desk_of({edge_asgi.SCOPE_DESK: (b"another-process", "fx")}) == (False, None)
    assert edge_asgi.desk_of({"type": "http"}) == (False, None)
