"""A model deployed through the real controller (the session cluster's), as `rayfin up` does it:
the controller charges its replicas to the owning desk and picks an island, the replica lands on
that island, and a model over the desk's quota is refused with the typed error before anything
of it is deployed (the reservations made before it are given back)."""
from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest
import ray
from ray import serve
from ray.util.state import list_actors

from rayfin.errors import QuotaExceeded
from serve_apps.deploy import GATEWAY_APP, deploy_from_config, model_app_name
from serve_apps.schemas import example_body
from tests.support.cluster import wait_for

SERVED = "rc-pricer"          # fx's: 1 replica x 0.5 GPU
SMALL, BIG = "rc-small", "rc-big"


def _model(name: str, replicas: int, gpus: float) -> dict:
    return {"name": name, "kind": "option_pricer", "owner": "fx", "num_cpus_per_replica": 0, "fit_steps": 20,
            "num_replicas": replicas, "gpus_per_replica": gpus}


def _with_models(rayfin_env, models: list[dict]):
    """The session's config serving `models` on the session's Serve port (it hosts the rayfin
    API: nothing here may stop it)."""
    cfg = rayfin_env.config
    port = urlsplit(rayfin_env.api_url).port
    serve_cfg = cfg.serve.model_validate({**cfg.serve.model_dump(), "enabled": True, "port": port,
                                          "gateway_replicas": 1, "models": models})
    return cfg.model_copy(update={"serve": serve_cfg}), port


def _release(rayfin_env, *models: str) -> None:
    for name in models:
        ray.get(rayfin_env.controller.release_serving.remote(rayfin_env.deploy_key, model=name), timeout=60)


def _node_of(resource: str) -> str:
    """The Ray node that carries a custom resource (an island's)."""
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and resource in n.get("Resources", {})]
    assert len(nodes) == 1, (resource, nodes)
    return nodes[0]


@pytest.fixture(scope="module")
def deployed(rayfin_env, connect_desk):
    fx = connect_desk("fx")
    before_apps = set(serve.status().applications)
    serving_before = fx.usage()["serving"]
    config, port = _with_models(rayfin_env, [_model(SERVED, 1, 0.5)])
    try:
        info = deploy_from_config(config, controller=rayfin_env.controller, http_port=port, access_log=False,
                                  token=rayfin_env.deploy_key)
        yield {"info": info, "fx": fx, "serving_before": serving_before, "port": port}
    finally:
        for name in set(serve.status().applications) - before_apps:
            serve.delete(name)
        _release(rayfin_env, SERVED, SMALL, BIG)


def test_the_ledger_charges_the_owning_desk(deployed):
    assert deployed["fx"].usage()["serving"] == pytest.approx(deployed["serving_before"] + 0.5)


def test_the_replica_runs_on_the_island_the_controller_reserved(deployed):
    (resource, amount), = deployed["info"]["models"][SERVED]["resources"].items()
    assert resource.startswith("rayfin_island_n0_") and amount == 0.5     # fx's pool is node n0
    island_node = _node_of(resource)
    cls = f"ServeReplica:{model_app_name(SERVED)}:{SERVED}"
    replicas = wait_for(lambda: [a for a in list_actors(filters=[("class_name", "=", cls), ("state", "=", "ALIVE")])],
                        60, 0.5, what="the model's replica actor")
    assert [a.node_id for a in replicas] == [island_node]
    # And it serves: a real request through the ingress and admission.
    r = httpx.post(deployed["info"]["models"][SERVED]["predict_url"], json=example_body("option_pricer"),
                   headers={"Authorization": "Bearer fx-demo-token"}, timeout=60)
    assert r.status_code == 200 and r.json()["desk"] == "fx", r.text


def test_a_model_over_the_desks_quota_is_refused_and_not_deployed(rayfin_env, deployed):
    """fx: nominal 4, no borrowing, 0.5 already serving. SMALL (0.5) fits and is reserved first;
    BIG (4 x 1 GPU) does not: QuotaExceeded, neither is deployed, SMALL's GPUs go back."""
    fx = deployed["fx"]
    serving = fx.usage()["serving"]
    config, port = _with_models(rayfin_env, [_model(SMALL, 1, 0.5), _model(BIG, 4, 1.0)])
    with pytest.raises(QuotaExceeded) as info:
        deploy_from_config(config, controller=rayfin_env.controller, http_port=port, access_log=False,
                           token=rayfin_env.deploy_key)
    assert info.value.desk == "fx" and info.value.requested == 4.0
    apps = serve.status().applications
    assert model_app_name(SMALL) not in apps and model_app_name(BIG) not in apps
    assert fx.usage()["serving"] == pytest.approx(serving)
    assert GATEWAY_APP in apps          # what was running is untouched
