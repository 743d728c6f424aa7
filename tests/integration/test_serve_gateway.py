"""The serving stack over real HTTP against a running Serve, gated layout: each model's own
application (2 replicas of the option pricer, 1 of the fraud scorer) admits and predicts at
/v1/models/<name>:predict; the gateway (2 replicas) at "/" lists models and answers 404; edge
shedding is on (a desk beyond its whole quota is refused in Serve's proxy). That the replicas
alone hold one budget between them is tested without Ray in tests/unit/test_serve_quota.py."""
import asyncio
import os
import time

import httpx
import pytest

from rayfin.config import hash_token, parse_config
from rayfin.errors import QuotaExceeded
from serve_apps.schemas import example_body
from rayfin.cluster import free_port, proc_pids

pytestmark = pytest.mark.integration

PRICER = "/v1/models/option-pricer:predict"
FRAUD = "/v1/models/fraud-scorer:predict"


def auth(desk: str) -> dict:
    return {"Authorization": f"Bearer {desk}-demo-token"}




def desk(name, models=(), **serving):
    return {"name": name, "nominal_gpus": 0, "credential_sha256": hash_token(f"{name}-demo-token"),
            "serving": serving, "models": list(models)}


def serve_config(port: int, gpu: bool, edge: bool = True, ingress: str = "haproxy"):
    return parse_config({
        "cluster": {"racks": [{"name": "r0", "nodes": [{"name": "n0", "islands": [4]}]}]},
        "desks": [
            desk("fx", requests_per_s=1000, burst=1000, max_in_flight=200),
            desk("rates", requests_per_s=1, burst=2, max_in_flight=8),
            desk("shared", requests_per_s=0.5, burst=4, max_in_flight=8),
            desk("equities", models=["fraud-scorer"], requests_per_s=100, burst=50, max_in_flight=32),
            desk("risk", requests_per_s=100, burst=50, max_in_flight=32,
                 **({"gpu_seconds_per_window": 1e-6, "window_s": 30} if gpu else {})),
        ],
        "serve": {"port": port, "gateway_replicas": 2, "max_body_bytes": 4096, "edge_shedding": edge,
                  "ingress": ingress, "models": [
            {"name": "option-pricer", "kind": "option_pricer", "owner": "fx", "num_cpus_per_replica": 0,
             "fit_steps": 30, "num_replicas": 2, "max_batch_size": 16, "batch_wait_timeout_s": 0.05},
            {"name": "fraud-scorer", "kind": "fraud_scorer", "owner": "risk", "public": False,
             "num_cpus_per_replica": 0, "fit_steps": 30, "gpus_per_replica": 0.25 if gpu else 0.0},
        ]},
    })


@pytest.fixture(scope="module", params=["haproxy", "proxy"])
def stack(request):
    """The stack behind each ingress (serve_apps/ingress.py): HAProxy forwarding to replicas that
    serve HTTP themselves (the default), and Serve's Python proxy."""
    import ray
    from ray import serve

    from serve_apps import ingress
    from serve_apps.deploy import deploy_from_config

    mode = request.param
    if ray.is_initialized():
        ray.shutdown()      # the ingress is fixed when a cluster starts: each mode gets its own
    # address="local": a private cluster, never someone else's running one. Its ingress runs
    # rayfin's edge middleware, as on a cluster rayfin starts.
    saved = dict(os.environ)     # install() sets the ingress's variables here: put them back after
    # As LocalCluster does (ingress.install_from_config): the ingress at serve.replica_niceness
    installed = ingress.install(mode, niceness=0)
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    gpu = ray.cluster_resources().get("GPU", 0) >= 0.25
    port = free_port()
    config = serve_config(port, gpu, ingress=mode)
    try:
        info = deploy_from_config(config, http_port=port, access_log=False)
        with httpx.Client(base_url=info["url"], timeout=30) as client:
            yield {"client": client, "url": info["url"], "config": config, "gpu": gpu, "port": port,
                   "ingress": mode, "installed": installed, "info": info}
    finally:
        serve.shutdown()
        ray.shutdown()
        ingress.remove_run_dir(installed)
        os.environ.clear()
        os.environ.update(saved)


def test_deploy_returns_once_haproxy_sends_every_application_straight_to_its_replicas(stack):
    # Until Serve has added a replica to HAProxy's configuration (seconds after the application
    # runs), HAProxy sends its requests to the backup, Serve's Python proxy, at a tenth of the rate.
    from serve_apps import haproxy_edge
    from serve_apps.deploy import GATEWAY_APP, model_app_name

    routes = stack["info"]["direct_routes"]
    if stack["ingress"] == "proxy":
        assert routes is None                     # no HAProxy: nothing to wait for
        return
    assert routes["ready"] and routes["reason"] == "direct", routes
    sockets = haproxy_edge.admin_sockets(os.environ[haproxy_edge.SOCKET_ENV])
    assert sockets
    apps = [model_app_name(m.name) for m in stack["config"].serve.models] + [GATEWAY_APP]
    for sock in sockets:
        states = haproxy_edge.backend_states(haproxy_edge.admin_call(sock, "show stat"))
        for app in apps:
            st = states[haproxy_edge.backend_name(app)]
            assert st.direct and st.primary >= 1, (app, st)


def _pids_of(needle: str) -> list[int]:
    """Processes whose command line holds `needle` (Ray sets a worker's to its actor's name)."""
    out = []
    for e in proc_pids():
        try:
            with open(f"/proc/{e}/cmdline", "rb") as f:
                if needle.encode() in f.read():
                    out.append(int(e))
        except OSError:
            continue
    return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _thread_niceness(pids) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                out.setdefault(pid, set()).add(os.getpriority(os.PRIO_PROCESS, int(tid)))
            except OSError:
                continue
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux keeps a niceness per thread")
def test_serving_runs_at_the_normal_priority_not_rays_worker_niceness(stack):
    """serve.replica_niceness (default 0): every thread of the model replicas, and the ingress in
    front of them (the HAProxy Serve starts, or Serve's Python proxy), at 0, where Ray starts its
    workers at 15; Ray's own controller actor keeps 15 (the setting is rayfin's serving, not Ray's)."""
    from serve_apps import ingress

    replicas = _pids_of("ServeReplica:rayfin-model-option-pricer")
    assert replicas
    deadline = time.monotonic() + 30
    while True:                 # threads a replica starts after its health check catch up within 10 s
        got = _thread_niceness(replicas)
        if all(v == {0} for v in got.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert got and all(v == {0} for v in got.values()), got

    def front() -> dict[int, set[int]]:
        if stack["ingress"] == "proxy":
            return _thread_niceness(_pids_of("ray::ProxyActor"))
        # HAProxy itself: while Serve reloads it, rayfin's wrapper (Python, still at Ray's 15
        # until it sets the niceness and becomes HAProxy) has the same arguments for a moment
        pids = [p for p in ingress.haproxy_pids(stack["installed"]["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
                if _comm(p) == "haproxy"]
        return _thread_niceness(pids)

    deadline = time.monotonic() + 30
    while True:
        seen = front()
        ok = bool(seen) and all((v == {0}) if stack["ingress"] == "haproxy" else (0 in v) for v in seen.values())
        if ok or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert ok, seen
    assert any(15 in v for v in _thread_niceness(_pids_of("ray::ServeController")).values())


def test_healthz(stack):
    r = stack["client"].get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic fx-demo-token"},
                                     {"Authorization": "Bearer"}])
def test_bad_credential_is_401(stack, headers):
    r = stack["client"].post(PRICER, headers=headers, json=example_body("option_pricer"))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert stack["client"].get("/v1/models", headers=headers).status_code == 401


def test_models_lists_what_the_desk_may_call(stack):
    fx = stack["client"].get("/v1/models", headers=auth("fx")).json()
    eq = stack["client"].get("/v1/models", headers=auth("equities")).json()
    assert [m["name"] for m in fx["models"]] == ["option-pricer"]
    assert sorted(m["name"] for m in eq["models"]) == ["fraud-scorer", "option-pricer"]


def test_predict_ok(stack):
    r = stack["client"].post(PRICER, headers=auth("fx"), json=example_body("option_pricer", 3))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "option-pricer" and body["desk"] == "fx" and len(body["predictions"]) == 3
    assert r.headers["x-rayfin-gateway"]


def test_unknown_model_is_404(stack):
    r = stack["client"].post("/v1/models/nope:predict", headers=auth("fx"), json=example_body("option_pricer"))
    assert r.status_code == 404 and r.json()["error"] == "unknown_model"
    # unknown model without a credential: 401 first, as before (the gateway answers both)
    assert stack["client"].post("/v1/models/nope:predict", json=example_body("option_pricer")).status_code == 401
    # a path under a model's route prefix is not its predict path
    assert stack["client"].post(PRICER + "/x", headers=auth("fx"), json=example_body("option_pricer")).status_code == 404


def test_private_model_of_another_desk_is_403(stack):
    c = stack["client"]
    r = c.post(FRAUD, headers=auth("fx"), json=example_body("fraud_scorer"))
    assert r.status_code == 403 and "risk" in r.json()["message"]
    assert c.post(FRAUD, headers=auth("equities"), json=example_body("fraud_scorer")).status_code == 200  # listed


def test_bad_body_is_422_naming_the_field(stack):
    body = {"inputs": [{"spot": 100, "strike": 100, "maturity_years": 1, "volatility": 7}]}
    r = stack["client"].post(PRICER, headers=auth("fx"), json=body)
    assert r.status_code == 422
    assert [d["field"] for d in r.json()["detail"]] == ["inputs[0].volatility"]


def test_body_over_limit_is_413(stack):
    c = stack["client"]
    big = example_body("option_pricer", 200)          # > max_body_bytes 4096
    assert c.post(PRICER, headers=auth("fx"), json=big).status_code == 413

    def chunks():                                     # no Content-Length: counted while read
        for _ in range(10):
            yield b" " * 1000
    r = c.post(PRICER, headers={**auth("fx"), "content-type": "application/json"}, content=chunks())
    assert r.status_code == 413 and r.json()["limit_bytes"] == 4096


@pytest.mark.parametrize("content, ctype", [
    (b"not json", "application/json"), (b"[]", "application/json"), (b"{}", "text/plain"),
    (b'{"inputs": [{"spot": 1e400}]}', "application/json"), (b'{"inputs": "x"}', "application/json"),
])
def test_client_mistakes_are_never_5xx(stack, content, ctype):
    r = stack["client"].post(PRICER, headers={**auth("fx"), "content-type": ctype}, content=content)
    assert 400 <= r.status_code < 500, r.text
    assert stack["client"].get(PRICER, headers=auth("fx")).status_code == 405


def test_over_quota_is_429_with_retry_after(stack):
    c = stack["client"]
    codes, refused = [], None
    for _ in range(6):                                # burst 2, 1/s
        r = c.post(PRICER, headers=auth("rates"), json=example_body("option_pricer"))
        codes.append(r.status_code)
        if r.status_code == 429:
            refused = r
    assert codes.count(200) >= 2 and 429 in codes
    body = refused.json()
    assert body["limit"] == "requests_per_s" and body["desk"] == "rates"
    assert 0 < body["retry_after_s"] <= 1.0           # next token of a 1/s bucket
    assert refused.headers["retry-after"] == "1"


def edges(stack) -> int:
    """How many edge filters a desk's requests to the option pricer can meet, each with its own
    buckets: one per gated replica with HAProxy ingress, one per Serve proxy (one per node,
    sharing the port) with Serve's proxy."""
    from ray import serve

    if stack["ingress"] == "haproxy":
        return 2            # the option pricer's replicas
    return max(1, len(serve.status().proxies))


def edge_where(stack) -> str:
    """The X-Rayfin-Edge header of edge refusals: which middleware answered."""
    return "replica" if stack["ingress"] == "haproxy" else "proxy"


async def _burst(url: str, n: int) -> list[httpx.Response]:
    # One connection per request so the ingress spreads them over both model replicas.
    async def one():
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            return await c.post(PRICER, headers=auth("shared"), json=example_body("option_pricer"))
    return await asyncio.gather(*[one() for _ in range(n)])


def answered_by(r: httpx.Response) -> str | None:
    """The model replica whose admission answered (X-Rayfin-Gateway); None for an edge refusal."""
    return r.headers.get("x-rayfin-gateway")


def test_quota_is_one_budget_across_two_replicas(stack):
    """Desk "shared" (burst 4, 0.5/s) calls the option pricer's two replicas in bursts of 24.
    From a full bucket the desk may be admitted at most 4 + 0.5 * T by any time T, whichever
    replica admits: each burst's running total is bounded by the time up to that burst's end.
    Two separate budgets would let up to 8 through at once. Bursts go on (at most 6) until
    both replicas have answered, so the bound is over a budget two replicas really shared."""
    start = time.monotonic()
    admitted, replicas, bursts = 0, set(), 0
    while bursts < 2 or (len(replicas) < 2 and bursts < 6):
        began = time.monotonic()
        responses = asyncio.run(_burst(stack["url"], 24))
        end = time.monotonic()
        bursts += 1
        assert all(r.status_code in (200, 429) for r in responses)
        admitted += sum(r.status_code == 200 for r in responses)
        assert admitted <= 4 + 0.5 * (end - start), (bursts, admitted, end - start)
        # Most of the excess never reached admission: an edge refused it. Each edge passes at
        # most its bucket (4) plus what refills during this burst.
        edge = [r for r in responses if r.status_code == 429 and r.json().get("refused_by") == "edge"]
        assert len(edge) >= 24 - edges(stack) * (4 + 0.5 * (end - began)), (bursts, len(edge))
        replicas |= {answered_by(r) for r in responses if answered_by(r)}
    assert len(replicas) == 2, f"only {replicas} answered in {bursts} bursts"


def test_flood_is_refused_in_the_proxy_before_any_replica(stack):
    """Edge shedding (serve_apps/edge_asgi.py, serve_apps/desk_router.py): a desk beyond its
    whole quota gets a 429 from Serve's proxy with our JSON body and a Retry-After from the edge
    bucket; no replica answers (a replica's answers always carry X-Rayfin-Gateway), and other
    desks are served meanwhile. On a cluster rayfin starts, the proxy's ASGI middleware answers
    it (X-Rayfin-Edge: proxy) before Serve routes the request at all."""
    async def go():
        async with httpx.AsyncClient(base_url=stack["url"], timeout=30) as c:
            # The route's request router exists (and hands its filter to the middleware) once
            # the proxy has routed one request to the application.
            assert (await c.post(PRICER, headers=auth("fx"), json=example_body("option_pricer"))).status_code == 200
            flood = [c.post(PRICER, headers=auth("rates"), json=example_body("option_pricer")) for _ in range(60)]
            quiet = [c.post(PRICER, headers=auth("fx"), json=example_body("option_pricer")) for _ in range(10)]
            return await asyncio.gather(*flood), await asyncio.gather(*quiet)

    start = time.monotonic()
    flood, quiet = asyncio.run(go())
    elapsed = time.monotonic() - start
    assert all(r.status_code == 200 for r in quiet)
    admitted = [r for r in flood if r.status_code == 200]
    edge = [r for r in flood if r.status_code == 429 and r.json().get("refused_by") == "edge"]
    assert len(admitted) <= 2 + 1 * elapsed                  # rates: burst 2, 1/s
    assert len(edge) >= 60 - edges(stack) * (2 + 1 * elapsed)   # each edge passes at most a quota
    r = edge[0]
    assert r.headers["content-type"] == "application/json"
    assert "x-rayfin-gateway" not in r.headers
    body = r.json()
    assert body["error"] == "quota_exceeded" and body["desk"] == "rates" and body["limit"] == "requests_per_s"
    assert 0 < body["retry_after_s"] <= 1.0                   # next token of a 1/s bucket
    assert r.headers["retry-after"] == "1"
    assert all(r.headers.get("x-rayfin-edge") == edge_where(stack) for r in edge)   # a middleware, not the router


def test_edge_passes_what_it_cannot_attribute(stack):
    """Unknown credentials are not shed at the edge: the replica answers 401, every time."""
    codes = {stack["client"].post(PRICER, headers={"Authorization": "Bearer nobody"},
                                  json=example_body("option_pricer")).status_code for _ in range(20)}
    assert codes == {401}


def test_batching_batches_under_concurrent_load(stack):
    async def go():
        async with httpx.AsyncClient(base_url=stack["url"], timeout=30) as c:
            return await asyncio.gather(*[c.post(PRICER, headers=auth("fx"), json=example_body("option_pricer"))
                                          for _ in range(32)])
    responses = asyncio.run(go())
    bad = [r for r in responses if r.status_code != 200]
    quotas = [stack["client"].get("/v1/quota", headers=auth("fx")).text] if bad else []
    assert not bad, (bad[0].text, quotas)
    assert max(r.json()["batch_size"] for r in responses) > 1


def test_gpu_seconds_budget(stack):
    if not stack["gpu"]:
        pytest.skip("no (simulated) GPU in this Ray cluster")
    c = stack["client"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = c.post(FRAUD, headers=auth("risk"), json=example_body("fraud_scorer"))
        if r.status_code == 429:
            assert r.json()["limit"] == "gpu_seconds_per_window"
            assert 1 <= int(r.headers["retry-after"]) <= 30
            return
        assert r.status_code == 200 and r.json()["gpu_seconds"] > 0
        time.sleep(0.05)
    pytest.fail("GPU-seconds budget never refused")


def test_controller_refusal_stops_the_deployment(stack):
    import ray

    from serve_apps.deploy import deploy_from_config

    @ray.remote(num_cpus=0)
    class RefusingController:
        def reserve_serving(self, token=None, *, model, desk, replicas, gpus_per_replica):
            return {"ok": False, "error": QuotaExceeded(desk=desk, requested=replicas * gpus_per_replica,
                                                        available=0.0).to_wire()}

    ctl = RefusingController.remote()
    with pytest.raises(QuotaExceeded) as info:
        deploy_from_config(stack["config"], controller=ctl, http_port=int(stack["url"].rsplit(":", 1)[1]))
    assert info.value.desk == "fx"
    assert stack["client"].get("/healthz").status_code == 200   # what runs is untouched
    ray.kill(ctl)


def test_quota_view_is_the_brokers(stack):
    r = stack["client"].get("/v1/quota", headers=auth("shared"))
    assert r.status_code == 200
    body = r.json()
    assert body["desk"] == "shared" and body["quota"]["burst"] == 4
    assert body["admitting_replicas"] == 2          # the option pricer's two replicas (fraud is private)
    assert stack["client"].get("/v1/quota").status_code == 401


def _openapi_for_fuzzing() -> dict:
    """An OpenAPI 3.1 document of the public endpoints, built from the request models the
    gateway validates with, so schemathesis generates valid and invalid bodies alike."""
    from serve_apps.schemas import FraudPredictRequest, OptionPredictRequest

    auth_header = {"name": "Authorization", "in": "header", "required": False, "schema": {"type": "string"}}
    components: dict = {}
    paths: dict = {}
    for name, model in (("option-pricer", OptionPredictRequest), ("fraud-scorer", FraudPredictRequest),
                        ("no-such-model", OptionPredictRequest)):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
        paths[f"/v1/models/{name}:predict"] = {"post": {
            "parameters": [auth_header],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}},
            "responses": {"200": {"description": "predictions"}}}}
    paths["/v1/models"] = {"get": {"parameters": [auth_header], "responses": {"200": {"description": "models"}}}}
    return {"openapi": "3.1.0", "info": {"title": "rayfin gateway", "version": "1"}, "paths": paths,
            "components": {"schemas": components}}


def test_fuzzed_requests_never_get_a_server_error(stack):
    """schemathesis, positive and negative bodies, random and real credentials: never a 5xx."""
    import hypothesis
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.openapi import from_dict

    schema = from_dict(_openapi_for_fuzzing())
    tokens = st.sampled_from(["Bearer fx-demo-token", "Bearer equities-demo-token", "Bearer risk-demo-token",
                              "Bearer nope", "Basic fx-demo-token", ""])
    seen: dict[int, int] = {}
    failures: list[str] = []
    for path, method in [("/v1/models/option-pricer:predict", "POST"), ("/v1/models/fraud-scorer:predict", "POST"),
                         ("/v1/models/no-such-model:predict", "POST"), ("/v1/models", "GET")]:
        op = schema[path][method]
        # A GET with only a free-form header has no invalid form to generate: positive only.
        modes = (GenerationMode.POSITIVE,) if method == "GET" else (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        for mode in modes:

            @hypothesis.settings(max_examples=25, deadline=None, database=None,
                                 suppress_health_check=list(hypothesis.HealthCheck))
            @hypothesis.given(case=op.as_strategy(generation_mode=mode), token=tokens)
            def run(case, token):
                headers = {"Authorization": token} if token else {}
                kwargs = case.as_transport_kwargs(base_url=stack["url"], headers=headers)
                r = stack["client"].request(kwargs["method"], kwargs["url"], headers=kwargs.get("headers"),
                                            json=kwargs.get("json"), params=kwargs.get("params"))
                seen[r.status_code] = seen.get(r.status_code, 0) + 1
                if r.status_code >= 500:
                    failures.append(f"{method} {path} {token!r} {kwargs.get('json')!r} -> {r.status_code} {r.text[:200]}")

            run()
    assert not failures, failures[:5]
    assert seen.get(200, 0) > 0 and seen.get(401, 0) > 0 and seen.get(422, 0) > 0, seen   # it really exercised them

