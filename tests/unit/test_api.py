"""The rayfin API over HTTP (FastAPI in process) on the real controller core with the in-package
FakeBackend: every route with a desk token, another desk's token, no token and a bad body; the
typed errors as status codes; the size limits; the SDK over the same app."""
import base64
import pickle
import subprocess
import sys

import cloudpickle
import pytest
from fastapi.testclient import TestClient

from rayfin.api import ApiLimits, build_app
from rayfin.controller.backend import FakeBackend
from rayfin.controller.core import ControllerCore
from rayfin.controller.ledger import SqliteLedger
from rayfin.errors import (Forbidden, InvalidRequest, JobFailed, JobNotFound, NotSupported, PayloadTooLarge,
                           QuotaExceeded, Unauthorized)
from rayfin.sdk import connect
from tests.support.api import CorePort
from tests.support.builders import Clock, config

TOK = {d: f"{d}-demo-token" for d in ("equities", "fx", "risk", "admin")}


@pytest.fixture
def env(tmp_path):
    ids = iter(range(1000))
    backend = FakeBackend()
    core = ControllerCore(config(), SqliteLedger(tmp_path / "ledger.db"), backend, clock=Clock(),
                          new_id=lambda d: f"{d}-{next(ids):08x}")
    app = build_app(CorePort(core), ApiLimits(max_payload_bytes=4096, max_result_bytes=2048))
    return core, backend, TestClient(app)


def auth(who):
    return {"Authorization": f"Bearer {TOK[who]}"}


def payload(fn=len, *args):
    return base64.b64encode(cloudpickle.dumps((fn, args, {}))).decode()


def submit(client, who="fx", desk="fx", **kw):
    body = {"desk": desk, "kind": "callable", "payload_b64": payload(len, "abc"), "gpus": 1, **kw}
    return client.post("/v1/jobs", json=body, headers=auth(who))


def finish(core, backend, job_id, value):
    for _ in range(3):
        core.cycle()
    backend.finish(job_id, result=pickle.dumps(value))
    core.cycle()


def test_every_route_with_the_desk_token(env):
    core, backend, c = env
    r = submit(c, name="probe")
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["desk"] == "fx" and job["state"] == "PENDING" and job["name"] == "probe"
    jid = job["job_id"]
    finish(core, backend, jid, {"answer": 42})
    assert c.get(f"/v1/jobs/{jid}", headers=auth("fx")).json()["state"] == "SUCCEEDED"
    res = c.get(f"/v1/jobs/{jid}/result", headers=auth("fx")).json()
    assert res["state"] == "SUCCEEDED" and pickle.loads(base64.b64decode(res["result_b64"])) == {"answer": 42}
    assert [j["job_id"] for j in c.get("/v1/jobs", headers=auth("fx")).json()] == [jid]
    assert c.get("/v1/jobs", params={"state": "RUNNING"}, headers=auth("fx")).json() == []
    kinds = [e["kind"] for e in c.get(f"/v1/jobs/{jid}/explain", headers=auth("fx")).json()["events"]]
    assert kinds[0] == "submitted" and kinds[-1] == "succeeded"
    assert c.post(f"/v1/jobs/{jid}/cancel", headers=auth("fx")).json()["state"] == "SUCCEEDED"  # already ended
    usage = c.get("/v1/usage", headers=auth("fx")).json()
    assert list(usage) == ["fx"] and usage["fx"]["nominal"] == 4 and usage["fx"]["succeeded"] == 1
    pools = c.get("/v1/pools", headers=auth("fx")).json()
    assert pools["general"]["capacity"] == 8 and pools["risk"]["free"] == 8
    assert {e["job_id"] for e in c.get("/v1/audit", headers=auth("fx")).json()} == {jid}
    assert c.get("/v1/policing", headers=auth("fx")).json()["mode"] == "enforce"
    assert c.get("/healthz").json() == {"status": "ok"}


def test_cancel_of_a_queued_job(env):
    _, _, c = env
    jid = submit(c).json()["job_id"]
    r = c.post(f"/v1/jobs/{jid}/cancel", headers=auth("fx"))
    assert r.status_code == 200 and r.json()["state"] == "CANCELLED" and "fx" in r.json()["reason"]


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/jobs/{id}"), ("POST", "/v1/jobs/{id}/cancel"), ("GET", "/v1/jobs/{id}/result"),
    ("GET", "/v1/jobs/{id}/explain"),
])
def test_another_desk_sees_no_job(env, method, path):
    _, _, c = env
    jid = submit(c).json()["job_id"]
    r = c.request(method, path.format(id=jid), headers=auth("equities"))
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["type"] == "JobNotFound" and err["fields"] == {"job_id": jid}
    assert c.get(f"/v1/jobs/{jid}", headers=auth("fx")).json()["state"] == "PENDING"   # untouched
    assert c.get(f"/v1/jobs/{jid}", headers=auth("admin")).json()["desk"] == "fx"      # the operator sees it


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/v1/jobs", {"desk": "fx", "kind": "entrypoint", "entrypoint": "python -V"}),
    ("GET", "/v1/jobs?desk=fx", None), ("GET", "/v1/usage?desk=fx", None), ("GET", "/v1/audit?desk=fx", None),
])
def test_another_desks_scope_is_403(env, method, path, body):
    _, _, c = env
    r = c.request(method, path, json=body, headers=auth("equities"))
    assert r.status_code == 403 and r.json()["error"]["type"] == "Forbidden"
    assert r.json()["error"]["fields"]["desk"] == "fx"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic fx-demo-token"},
                                     {"Authorization": "Bearer "}])
@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/jobs"), ("GET", "/v1/jobs/fx-00000000"), ("POST", "/v1/jobs/fx-00000000/cancel"),
    ("GET", "/v1/jobs/fx-00000000/result"), ("GET", "/v1/jobs/fx-00000000/explain"), ("GET", "/v1/usage"),
    ("GET", "/v1/pools"), ("GET", "/v1/audit"), ("GET", "/v1/policing"),
])
def test_no_or_wrong_credential_is_401(env, headers, method, path):
    _, _, c = env
    r = c.request(method, path, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "Unauthorized"
    if "wrong" not in str(headers):
        assert "$RAYFIN_TOKEN" in r.json()["error"]["message"]


def test_submit_without_token_is_401(env):
    _, _, c = env
    r = c.post("/v1/jobs", json={"desk": "fx", "kind": "entrypoint", "entrypoint": "python -V"})
    assert r.status_code == 401


@pytest.mark.parametrize("body, field", [
    ({"desk": "fx", "kind": "callable", "payload_b64": "eA==", "gpus": 0}, "gpus"),
    ({"desk": "fx", "kind": "callable", "payload_b64": "eA==", "priority": "asap"}, "priority"),
    ({"desk": "fx", "kind": "callable", "payload_b64": "eA==", "comm": "infiniband"}, "comm"),
    ({"desk": "fx", "kind": "callable", "payload_b64": "eA==", "workers": 0}, "workers"),
    ({"desk": "fx", "kind": "callable", "payload_b64": "eA==", "dist_backend": "mpi"}, "dist_backend"),
    ({"desk": "fx", "kind": "callable"}, "body"),
    ({"desk": "fx", "kind": "callable", "payload_b64": "not base64!"}, "payload_b64"),
    ({"desk": "FX!", "kind": "entrypoint", "entrypoint": "x"}, "desk"),
    ({"desk": "fx", "kind": "entrypoint", "entrypoint": "python -c 'oops"}, "entrypoint"),
    ({"desk": "fx", "kind": "entrypoint", "entrypoint": "x", "surprise": 1}, "surprise"),
])
def test_bad_body_is_422_naming_the_field(env, body, field):
    _, _, c = env
    r = c.post("/v1/jobs", json=body, headers=auth("fx"))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "InvalidRequest" and err["fields"]["field"].split(".")[0] == field


def test_body_that_is_not_json_is_400(env):
    _, _, c = env
    r = c.post("/v1/jobs", content=b"{not json", headers={**auth("fx"), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["fields"]["field"] == "body"


def test_sizes_are_bounded_413(env):
    core, backend, c = env
    big = base64.b64encode(b"x" * 5000).decode()          # payload limit 4096 bytes
    r = c.post("/v1/jobs", json={"desk": "fx", "kind": "callable", "payload_b64": big}, headers=auth("fx"))
    assert r.status_code == 413 and r.json()["error"]["fields"]["limit"] == 4096
    huge = c.post("/v1/jobs", content=b"x" * 200_000, headers={**auth("fx"), "Content-Type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["type"] == "PayloadTooLarge"
    jid = submit(c).json()["job_id"]
    finish(core, backend, jid, "y" * 4000)                 # result limit 2048 bytes
    r = c.get(f"/v1/jobs/{jid}/result", headers=auth("fx"))
    assert r.status_code == 413 and r.json()["error"]["fields"]["field"] == "result"


def test_quota_refusal_is_409_with_fields(env):
    _, _, c = env
    r = submit(c, gpus=5)                                  # fx: nominal 4, may borrow 0
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["type"] == "QuotaExceeded" and err["fields"]["requested"] == 5 and err["fields"]["available"] == 4


def test_unknown_desk_and_unknown_route_are_404(env):
    _, _, c = env
    assert c.get("/v1/usage?desk=nosuch", headers=auth("admin")).json()["error"]["type"] == "UnknownDesk"
    assert c.get("/v1/nothing", headers=auth("fx")).status_code == 404


class _OlderController(CorePort):
    """A controller that predates some calls (an API newer than the controller it talks to)."""

    async def call(self, method, *args):
        if method in ("results", "logs"):
            raise NotSupported(action=method)
        return await super().call(method, *args)


@pytest.mark.parametrize("path", ["/v1/jobs/fx-00000000/results", "/v1/jobs/fx-00000000/logs?rank=0&tail=5"])
def test_calls_this_controller_lacks_are_501(env, path):
    core, _, _ = env
    c = TestClient(build_app(_OlderController(core), ApiLimits(max_payload_bytes=4096, max_result_bytes=2048)))
    r = c.get(path, headers=auth("fx"))
    assert r.status_code == 501 and r.json()["error"]["type"] == "NotSupported"


def test_openapi_document_covers_every_route(env):
    _, _, c = env
    doc = c.get("/openapi.json").json()
    assert set(doc["paths"]) == {"/healthz", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel",
                                 "/v1/jobs/{job_id}/result", "/v1/jobs/{job_id}/results", "/v1/jobs/{job_id}/logs",
                                 "/v1/jobs/{job_id}/explain", "/v1/usage", "/v1/pools", "/v1/audit", "/v1/policing",
                                 "/v1/chargeback"}
    submit_op = doc["paths"]["/v1/jobs"]["post"]
    assert {"201", "401", "403", "409", "413", "422"} <= set(submit_op["responses"])
    props = doc["components"]["schemas"]["SubmitRequest"]["properties"]
    assert {"workers", "dist_backend", "payload_b64", "entrypoint", "retries", "comm"} <= set(props)


# ---------------------------------------------------------------- the SDK over the same app
def sdk(c, desk, who=None):
    return connect(desk, token=TOK[who or desk or "admin"], url="http://testserver", transport=c._transport,
                   retry_s=0)


def test_sdk_round_trip_with_typed_errors(env):
    core, backend, c = env
    fx = sdk(c, "fx")
    job = fx.submit(sorted, [3, 1, 2], gpus=1, name="sort")
    assert job.status().state.value == "PENDING"
    finish(core, backend, job.job_id, [1, 2, 3])
    assert job.result(timeout=5) == [1, 2, 3]
    assert fx.usage()["succeeded"] == 1
    with pytest.raises(QuotaExceeded) as err:
        fx.submit(sorted, [1], gpus=5)
    assert err.value.desk == "fx" and err.value.requested == 5 and err.value.available == 4
    with pytest.raises(JobNotFound):
        sdk(c, "equities").job(job.job_id)
    with pytest.raises(Unauthorized) as bad:
        connect("fx", token="equities-demo-token", url="http://testserver", transport=c._transport, retry_s=0)
    assert isinstance(bad.value, Forbidden) and "$RAYFIN_TOKEN" in str(bad.value)
    assert job.results(timeout=5) == [[1, 2, 3]]          # one worker: rank 0's value
    assert job.logs() == [] and job.logs(rank=0, tail=5) == []
    admin = sdk(c, None)
    assert admin.job(job.job_id).status().desk == "fx" and set(admin.usage()) == {"equities", "fx", "risk", "quant"}


def test_sdk_failed_job_raises_job_failed(env):
    core, backend, c = env
    fx = sdk(c, "fx")
    job = fx.submit(len, "x")
    for _ in range(3):
        core.cycle()
    backend.finish(job.job_id, ok=False, error="ZeroDivisionError: boom")
    core.cycle()
    with pytest.raises(JobFailed) as err:
        job.result(timeout=5)
    assert err.value.state == "FAILED" and "ZeroDivisionError" in err.value.reason


def test_sdk_without_token_says_how_to_pass_one(monkeypatch):
    monkeypatch.delenv("RAYFIN_TOKEN", raising=False)
    with pytest.raises(Unauthorized) as err:
        connect("fx", url="http://127.0.0.1:9")
    assert "token=" in str(err.value) and "$RAYFIN_TOKEN" in str(err.value)


def test_sdk_bad_arguments_never_reach_the_api():
    from rayfin.sdk import Client

    c = Client("fx", "t", "http://127.0.0.1:9", retry_s=0)
    for kwargs, field in (({"workers": 0}, "workers"), ({"workers": "all"}, "workers"),
                          ({"dist_backend": "mpi"}, "dist_backend")):
        with pytest.raises(InvalidRequest) as err:
            c.submit(len, "x", **kwargs)
        assert err.value.field == field


def test_importing_the_sdk_imports_no_ray():
    code = "import rayfin, rayfin.sdk, sys; assert 'ray' not in sys.modules, 'ray imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_payload_too_large_error_round_trips():
    from rayfin.errors import from_wire

    err = from_wire(PayloadTooLarge(field="body", size=10, limit=5).to_wire())
    assert isinstance(err, PayloadTooLarge) and (err.size, err.limit) == (10, 5)
