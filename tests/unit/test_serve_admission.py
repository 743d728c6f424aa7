"""Admission without Ray: local in-flight permits, admission in a model replica, the
gateway's 404/401/403 fallback, per-desk admitting replicas and the RayService builder."""
import asyncio
import json
import pathlib

import pytest
import yaml

from rayfin.config import hash_token, parse_config
from serve_apps.admission import Admission, AdmissionSettings, LocalBroker, QuotaGate, admitting_replicas, replicas_of
from serve_apps.quota import LocalLease, QuotaSpec, Shortage, local_permits
from serve_apps.schemas import example_body

ROOT = pathlib.Path(__file__).resolve().parents[2]


def spec(rate=100.0, burst=50, in_flight=8) -> QuotaSpec:
    return QuotaSpec(requests_per_s=rate, burst=burst, max_in_flight=in_flight)


@pytest.mark.parametrize("in_flight, replicas, each, total_bound", [
    (8, 2, 4, 8), (9, 2, 4, 9), (64, 1, 64, 64), (1, 3, 1, 3),   # at least 1 each: max(m, R)
])
def test_local_permits_add_up(in_flight, replicas, each, total_bound):
    s = spec(in_flight=in_flight)
    assert local_permits(s, replicas) == each
    assert replicas * local_permits(s, replicas) <= max(in_flight, replicas) == total_bound


def test_replicas_per_desk():
    assert replicas_of(3, "fx") == 3
    assert replicas_of({"fx": 2}, "fx") == 2 and replicas_of({"fx": 2}, "rates") == 1


def test_local_permits_never_call_the_broker():
    calls = []
    broker = LocalBroker({"fx": spec(in_flight=4)}, replicas=2, local_fraction=0.75)

    async def call(reqs):
        calls.append(list(reqs))
        return broker.lease(reqs)

    async def go():
        gate = QuotaGate({"fx": spec(in_flight=4)}, replicas=2, replica_id="a", call_broker=call,
                         local_fraction=0.75, permits_local=True)
        got = [await gate.acquire("fx") for _ in range(3)]
        return gate, got

    gate, got = asyncio.run(go())
    assert got[0] is None and got[1] is None           # 2 of 4 permits are this replica's
    assert got[2] is not None and got[2].limit.value == "max_in_flight"
    assert gate.refusals["permits:local"] == 1
    assert all(r.permits_target == 0 for batch in calls for r in batch)   # no permits asked for, ever
    assert broker.budgets["fx"].permits_held() == 0
    gate.release("fx")
    assert asyncio.run(gate.acquire("fx")) is None


def test_local_lease_ignores_broker_permits():
    lease = LocalLease("fx", spec(in_flight=6), 3, 0.0, 0.75, permits_local=True)
    assert lease.permits == 2
    req = lease.request("a", 0.0, short=Shortage.PERMITS, waiters=3)
    assert req.permits_target == 0
    b = LocalBroker({"fx": spec(in_flight=6)}, replicas=3, local_fraction=0.75, clock=lambda: 0.0)
    lease.apply(req, b.lease([req])[0], 0.0)
    assert lease.permits == 2


# -- the core, as a gated replica and as the gateway's fallback -------------------------------

def _config():
    def desk(name, models=(), **serving):
        return {"name": name, "nominal_gpus": 0, "credential_sha256": hash_token(f"{name}-t"), "serving": serving,
                "models": list(models)}
    return parse_config({
        "cluster": {"racks": [{"name": "r0", "nodes": [{"name": "n0", "islands": [4]}]}]},
        "desks": [desk("fx", requests_per_s=1000, burst=1000, max_in_flight=4),
                  desk("rates", requests_per_s=1, burst=2, max_in_flight=8),
                  desk("risk", requests_per_s=10, burst=10, max_in_flight=8)],
        "serve": {"gateway_replicas": 2, "max_body_bytes": 4096, "models": [
            {"name": "option-pricer", "kind": "option_pricer", "owner": "fx", "num_replicas": 2},
            {"name": "fraud-scorer", "kind": "fraud_scorer", "owner": "risk", "public": False}]},
    })


def test_admitting_replicas_are_those_of_callable_models():
    cfg = _config()
    assert admitting_replicas(cfg) == {"fx": 2, "rates": 2, "risk": 3}
    assert AdmissionSettings.from_config(cfg, "gw").replicas == {"fx": 2, "rates": 2, "risk": 3}


def _request(path: str, body: bytes, headers: dict, method: str = "POST"):
    from starlette.requests import Request

    sent = []

    async def receive():
        if sent:
            return {"type": "http.disconnect"}
        sent.append(1)
        return {"type": "http.request", "body": body, "more_body": False}

    hdrs = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    hdrs.append((b"content-length", str(len(body)).encode()))
    return Request({"type": "http", "method": method, "path": path, "headers": hdrs, "query_string": b""}, receive)


def _core():
    s = AdmissionSettings.from_config(_config(), "gw")
    broker = LocalBroker.from_settings(s)

    async def model(name, rows):
        return {"model": name, "predictions": [0.0] * len(rows), "batch_size": 1, "gpu_seconds": 0.0, "device": "cpu"}
    return Admission(s, call_broker=broker.alease, call_model=model, replica_id="r1")


def _post(core, desk, model="option-pricer", body=None, gateway=False):
    kind = "fraud_scorer" if model == "fraud-scorer" else "option_pricer"
    body = json.dumps(example_body(kind) if body is None else body).encode()
    headers = {"authorization": f"Bearer {desk}-t"} if desk else {}
    req = _request(f"/v1/models/{model}:predict", body, headers)

    async def go():
        if gateway:
            return core.route_only(model, req)
        return await core.predict(model, req)
    return asyncio.run(go())


@pytest.mark.parametrize("desk, model, status", [
    (None, "option-pricer", 401), ("nobody", "option-pricer", 401), ("fx", "nope", 404),
    ("fx", "fraud-scorer", 403), ("fx", "option-pricer", 200), ("risk", "fraud-scorer", 200),
])
def test_gated_core_status_codes(desk, model, status):
    assert _post(_core(), desk, model).status_code == status


def test_gated_core_422_and_429():
    core = _core()
    r = _post(core, "fx", body={"inputs": [{"spot": 1, "strike": 1, "maturity_years": 1, "volatility": 7}]})
    assert r.status_code == 422 and json.loads(r.body)["detail"][0]["field"] == "inputs[0].volatility"
    codes = [_post(core, "rates").status_code for _ in range(4)]
    assert codes.count(200) <= 2 and codes[-1] == 429


@pytest.mark.parametrize("desk, model, status", [
    (None, "nope", 401), ("fx", "nope", 404), ("fx", "fraud-scorer", 403), ("fx", "option-pricer", 503),
])
def test_gateway_fallback_in_gated_layout(desk, model, status):
    r = _post(_core(), desk, model, gateway=True)
    assert r.status_code == status
    if status == 503:
        assert r.headers["retry-after"] == "1"


# -- RayService ------------------------------------------------------------------------------

def test_rayservice_app_builds_every_application_in_the_manifest(tmp_path):
    from ray.serve import Application

    from serve_apps.deploy import rayservice_app
    from serve_apps.deployments import predict_route

    rs = yaml.safe_load((ROOT / "configs" / "kuberay" / "rayservice.yaml").read_text())
    apps = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    from serve_apps.api_app import rayservice_api_app

    builders = {"serve_apps.deploy:rayservice_app": rayservice_app,
                "serve_apps.api_app:rayservice_api_app": rayservice_api_app}
    for a in apps:
        assert a["import_path"] in builders
        args = {**a["args"], "config": str(ROOT / "configs" / "local.yaml")}
        assert isinstance(builders[a["import_path"]](args), Application), a["name"]
        if a["name"] == "rayfin-api":
            assert a["route_prefix"] == "/api"
            continue
        if a["args"]["app"] == "model":
            assert a["route_prefix"] == predict_route(a["args"]["model"])
            assert a["args"]["gateway_app"] == "gateway"
    assert "gateway" in {a["name"] for a in apps}


@pytest.mark.parametrize("args", [{}, {"app": "model", "model": "nope"}, {"app": "other"}])
def test_rayservice_app_refuses_bad_args(args):
    from rayfin.errors import ConfigError
    from serve_apps.deploy import rayservice_app

    with pytest.raises(ConfigError):
        rayservice_app({"config": str(ROOT / "configs" / "local.yaml"), **args} if args else {})


def test_the_edge_desk_mark_is_trusted_from_this_process_only():
    """The middleware's mark (this process's nonce) stands for the token; a mark with another
    nonce (pickled from Serve's proxy, say) is ignored and the token is checked again."""
    from serve_apps import edge_asgi

    core = _core()
    req = _request("/v1/models/option-pricer:predict", b"{}", {"authorization": "Bearer nobody-t"})
    req.scope[edge_asgi.SCOPE_DESK] = (edge_asgi.NONCE, "fx")
    assert core.authenticate(req) == "fx"                    # the edge hashed the token already
    req.scope[edge_asgi.SCOPE_DESK] = (b"another-process", "fx")
    assert core.authenticate(req) is None                    # re-checked: "nobody-t" is no desk's


def test_a_client_gone_before_its_body_arrived_gets_no_answer():
    from starlette.requests import ClientDisconnect

    core = _core()

    async def receive():
        return {"type": "http.disconnect"}

    from starlette.requests import Request
    req = Request({"type": "http", "method": "POST", "path": "/v1/models/option-pricer:predict",
                   "headers": [(b"authorization", b"Bearer fx-t")], "query_string": b""}, receive)
    with pytest.raises(ClientDisconnect):
        asyncio.run(core.predict("option-pricer", req))
    assert core.gate.leases["fx"].in_use == 0                # its permit went back


def test_a_body_in_several_messages_is_joined():
    core = _core()
    body = json.dumps(example_body("option_pricer")).encode()
    parts = [body[:7], body[7:20], body[20:]]

    async def receive():
        chunk = parts.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(parts)}

    from starlette.requests import Request
    req = Request({"type": "http", "method": "POST", "path": "/v1/models/option-pricer:predict",
                   "headers": [(b"authorization", b"Bearer fx-t")], "query_string": b""}, receive)
    assert asyncio.run(core.predict("option-pricer", req)).status_code == 200


def test_an_admitted_prediction_is_sent_as_jsonresponse_would_send_it():
    """The 200 path renders with pydantic-core: same bytes as Starlette's JSONResponse, the
    gateway header included, sent as two ASGI messages."""
    from starlette.responses import JSONResponse

    from serve_apps.admission import PredictionResponse

    result = {"model": "option-pricer", "predictions": [12.345678901234, 1e-300, 0.1 + 0.2], "batch_size": 9,
              "gpu_seconds": 0.0, "device": "cpu", "desk": "fx", "note": "déjà vu ✓"}
    ours = PredictionResponse(result, (b"x-rayfin-gateway", b"r1"))
    theirs = JSONResponse(result, headers={"X-Rayfin-Gateway": "r1"})
    assert ours.body == theirs.body
    assert sorted(ours.raw_headers) == sorted(theirs.raw_headers)
    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(ours({"type": "http"}, None, send))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200 and sent[1]["body"] == theirs.body

    r = _post(_core(), "fx")                         # what the gate's 200 path returns
    assert isinstance(r, PredictionResponse) and r.headers["x-rayfin-gateway"] == "r1"
    assert json.loads(r.body)["desk"] == "fx"
