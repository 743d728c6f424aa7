"""`serve.edge_runtime`: the address the quota broker pushes the desks' rates to when the HAProxy
edge is not on its node (KubeRay's head-pod sidecar), from the config to the admin call."""
from __future__ import annotations

import socket

import pytest

from rayfin.config import hash_token, parse_config
from rayfin.errors import ConfigError
from serve_apps.haproxy_edge import admin_target


def _config(edge="haproxy", **runtime):
    serve = {"gateway_replicas": 1, "ingress": "haproxy", "edge": edge,
             "models": [{"name": "option-pricer", "kind": "option_pricer", "owner": "fx"}]}
    if runtime:
        serve["edge_runtime"] = runtime
    return parse_config({
        "cluster": {"racks": [{"name": "r0", "nodes": [{"name": "n0", "islands": [4]}]}]},
        "desks": [{"name": "fx", "nominal_gpus": 0, "credential_sha256": hash_token("fx-token"),
                   "serving": {"requests_per_s": 5, "burst": 5, "max_in_flight": 32}}],
        "serve": serve})


@pytest.mark.parametrize("runtime, field", [
    ({"admin": "/var/run/admin.sock", "map_path": "/var/run/rates.map"}, "serve.edge_runtime.admin"),  # no unix@
    ({"admin": "ipv4@localhost", "map_path": "/m"}, "serve.edge_runtime.admin"),                        # no port
    ({"admin": "unix@/a.sock", "map_path": "rates.map"}, "serve.edge_runtime.map_path"),                # relative
])
def test_config_names_the_bad_field(runtime, field):
    with pytest.raises(ConfigError) as e:
        _config(**runtime)
    assert field in str(e.value)


def test_edge_runtime_needs_the_haproxy_edge():
    with pytest.raises(ConfigError) as e:
        _config(edge="python", admin="unix@/r/admin.sock", map_path="/r/rates.map")
    assert "serve.edge_runtime" in str(e.value)


def test_admin_addresses_in_haproxys_spelling():
    assert admin_target("unix@/r/admin.sock") == (socket.AF_UNIX, "/r/admin.sock")
    assert admin_target("/tmp/x/admin.sock") == (socket.AF_UNIX, "/tmp/x/admin.sock")     # Serve's variable
    assert admin_target("ipv4@127.0.0.1:9999") == (socket.AF_INET, ("127.0.0.1", 9999))
    for bad in ("ipv4@127.0.0.1", "ipv4@:80", "admin.sock", "ipv4@h:99999"):
        with pytest.raises(ValueError):
            admin_target(bad)


def test_the_broker_pushes_to_the_configured_address_not_the_nodes_sockets(tmp_path, monkeypatch):
    from serve_apps.admission import AdmissionSettings
    from serve_apps.deployments import push_edge_rates

    # Serve's own HAProxy variables are set too (as on every Ray pod): the config must win.
    monkeypatch.setenv("RAYFIN_HAPROXY_EDGE_MAP", str(tmp_path / "local.map"))
    monkeypatch.setenv("RAY_SERVE_HAPROXY_SOCKET_PATH", str(tmp_path / "admin.sock"))
    (tmp_path / "admin.sock").touch()
    calls: list[tuple[str, str]] = []

    def call(address: str, command: str) -> str:
        calls.append((address, command))
        return ""                         # `show map`: empty; map updates: HAProxy answers nothing
    settings = AdmissionSettings.from_config(_config(admin="ipv4@127.0.0.1:9999", map_path="/run/edge/rates.map"),
                                             "gateway")
    assert (settings.edge_admin, settings.edge_map) == ("ipv4@127.0.0.1:9999", "/run/edge/rates.map")
    update = push_edge_rates(settings, call=call)
    assert update is not None and update.ok
    assert {a for a, _ in calls} == {"ipv4@127.0.0.1:9999"}
    assert calls[0][1] == "show map /run/edge/rates.map"
    assert calls[1][1].startswith(f"add map /run/edge/rates.map {hash_token('fx-token')} ")
    assert not (tmp_path / "local.map").exists()      # the node's own map untouched
    # without serve.edge_runtime: the HAProxies Serve runs on this node, as before
    calls.clear()
    assert push_edge_rates(AdmissionSettings.from_config(_config(), "gateway"), call=call).ok
    assert {a for a, _ in calls} == {str(tmp_path / "admin.sock")}


def test_the_broker_runs_on_the_head_where_the_sidecar_is():
    from serve_apps.deploy import broker_options
    from serve_apps.deployments import HEAD_RESOURCE

    opts = broker_options(_config(admin="unix@/r/admin.sock", map_path="/r/rates.map"))
    assert opts["ray_actor_options"]["resources"] == {HEAD_RESOURCE: 0.001}
    assert opts["ray_actor_options"]["num_cpus"] == 0
    assert broker_options(_config()) == {}
    off = _config(admin="unix@/r/admin.sock", map_path="/r/rates.map", broker_on_head=False)
    assert broker_options(off) == {}
