"""serve_apps/deployments.py: what a gated model replica does when it is built, not on its request loop."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ray import serve

from rayfin.config import hash_token, parse_config
from serve_apps import deployments
from serve_apps.admission import AdmissionSettings


def _config():
    return parse_config({
        "cluster": {"racks": [{"name": "r0", "nodes": [{"name": "n0", "islands": [4]}]}]},
        "desks": [{"name": "fx", "nominal_gpus": 0, "credential_sha256": hash_token("fx-token"),
                   "serving": {"requests_per_s": 10, "burst": 10, "max_in_flight": 4}}],
        "serve": {"replica_niceness": None, "models": [
            {"name": "pricer", "kind": "option_pricer", "owner": "fx", "num_cpus_per_replica": 0,
             "fit_steps": 1}]},
    })


def test_the_broker_handle_is_made_when_the_replica_is_built_not_at_its_first_lease(monkeypatch):
    # serve.get_deployment_handle waits on Serve's controller (ray.get): on the request loop
    # that stalled every request of the replica at its first lease under load.
    made, leased = [], []

    class Handle:
        def __init__(self):
            self.lease = SimpleNamespace(remote=self._lease)

        async def _lease(self, requests):
            leased.append(requests)
            return ["grant"]

    def get_handle(name, app_name=None, _check_exists=True):
        made.append((name, app_name, _check_exists))
        return Handle()

    monkeypatch.setattr(serve, "get_deployment_handle", get_handle)
    monkeypatch.setattr(serve, "get_replica_context",
                        lambda: SimpleNamespace(replica_id=SimpleNamespace(unique_id="r1")))
    config = _config()
    settings = AdmissionSettings.from_config(config, "rayfin-gateway")
    replica = deployments.GatedModel.func_or_class(settings, config.serve.models[0])
    # Not checked against the controller: the gateway application may be deployed after this one.
    assert made == [(deployments.BROKER_DEPLOYMENT, "rayfin-gateway", False)]
    assert asyncio.run(replica._call_broker(["req"])) == ["grant"]
    assert asyncio.run(replica._call_broker(["req2"])) == ["grant"]
    assert made == [(deployments.BROKER_DEPLOYMENT, "rayfin-gateway", False)]     # none on the request path
    assert leased == [["req"], ["req2"]]
