"""`rayfin up` as the README runs it, with Serve: it starts, answers (the gateway, the rayfin
API, a model, the dashboard), stops on SIGTERM to its own pid (a service manager's stop: unlike
Ctrl-C, nothing else in its process group gets the signal), and leaves no process behind, Serve's
HAProxy included.

It runs as its own command, in its own terminal-like session, with a HOME of its own (so its
ledger, Ray token and state file are its own) and free ports. What it started is known by an
environment variable only its processes carry (they inherit it, however they are started), and
by the process tree sampled while it runs.

The config is the README's, configs/local.yaml (RAYFIN_SMOKE_CONFIG=PATH for another). The test
cluster's smaller shape with one small model was tried and started no faster: the start is Ray's
and Serve's, not the cluster's size."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from rayfin.cluster import free_port
from tests.support import procs
from tests.support.cluster import clean_cluster_env, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG = os.environ.get("RAYFIN_SMOKE_CONFIG", str(ROOT / "configs" / "local.yaml"))
TAG = "RAYFIN_SMOKE_RUN"


class Up:
    """`rayfin up` in a new session, its output collected line by line."""

    def __init__(self, tmp_path: Path):
        self.tag = uuid.uuid4().hex
        home = tmp_path / "home"
        home.mkdir()
        # never attach to the session cluster nor inherit its ingress and GCS settings
        env = {**clean_cluster_env(), "HOME": str(home), TAG: self.tag}
        self.ports = {"dashboard": free_port(), "metrics": free_port(), "serve": free_port()}
        cmd = [str(Path(sys.executable).parent / "rayfin"), "up", "--config", CONFIG,
               "--dashboard-port", str(self.ports["dashboard"]), "--metrics-port", str(self.ports["metrics"]),
               "--serve-port", str(self.ports["serve"])]
        self.proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.seen: set[procs.Proc] = set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def sample(self) -> set[procs.Proc]:
        """What it runs now: its tree, its session and its tagged processes (remembered)."""
        now = procs.tree(self.proc.pid) | procs.session(self.proc.pid) | procs.tagged(TAG, self.tag)
        self.seen |= now
        return now

    def endpoints(self) -> dict[str, str]:
        return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in self.lines if ": " in ln)}

    def output(self) -> str:
        return "\n".join(self.lines[-60:])


@pytest.mark.timeout(600)     # a whole cluster's start and stop, on a loaded machine
def test_rayfin_up_starts_answers_and_stops_leaving_nothing(tmp_path):
    up = Up(tmp_path)
    try:
        t0 = time.monotonic()
        wait_for(lambda: up.proc.poll() is not None or (up.sample() and "ready" in up.lines), 420, 1.0,
                 what="rayfin up to print 'ready' or exit")
        assert "ready" in up.lines, f"rayfin up exited {up.proc.returncode}:\n{up.output()}"
        started_s = time.monotonic() - t0
        ep = up.endpoints()
        assert ep["serve"] == f"http://127.0.0.1:{up.ports['serve']}", up.output()
        assert ep["api"] == f"http://127.0.0.1:{up.ports['serve']}/api", up.output()
        assert ep["metrics"].endswith(f":{up.ports['metrics']}/metrics"), up.output()

        with httpx.Client(timeout=60) as http:
            assert http.get(f"{ep['serve']}/healthz").status_code == 200
            # The rayfin API, as a desk uses it, and a desk's token seeing only its own row.
            usage = http.get(f"{ep['api']}/v1/usage", headers={"Authorization": "Bearer fx-demo-token"})
            assert usage.status_code == 200 and set(usage.json()) == {"fx"}, usage.text
            assert http.get(f"{ep['api']}/v1/usage").status_code == 401
            # A model on Serve behind the gateway, called with a desk's token.
            from serve_apps.schemas import example_body

            r = http.post(f"{ep['serve']}/v1/models/option-pricer:predict",
                          json=example_body("option_pricer", 2), headers={"Authorization": "Bearer fx-demo-token"})
            assert r.status_code == 200, r.text
            # The dashboard answers, with Ray's token auth on: refused without the token `rayfin up`
            # created in its HOME, the cluster's nodes with it.
            nodes = ep["dashboard"].rstrip("/") + "/api/v0/nodes"
            assert http.get(nodes).status_code == 401
            token = (tmp_path / "home" / ".ray" / "auth_token").read_text().strip()
            assert http.get(nodes, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        running = up.sample()
        assert len(running) >= 5, running       # raylets, GCS, workers, the supervisor, ...
        # serve.ingress haproxy (the config's): Serve's HAProxy runs, and must be stopped too
        assert any(procs.name(p) == "haproxy" for p in running), running

        # SIGTERM to its own pid only: what rayfin up started must stop because it stops it.
        t1 = time.monotonic()
        os.kill(up.proc.pid, signal.SIGTERM)
        up.proc.wait(timeout=180)
        stopped_s = time.monotonic() - t1
        assert up.proc.returncode == 0, up.output()
        assert "shutting down" in up.lines
        # Nothing it started is left (Ray's workers take a moment to notice their raylet is gone).
        wait_for(lambda: not {p for p in up.seen | procs.tagged(TAG, up.tag) if procs.alive(p)}, 60, 1.0,
                 what="every process rayfin up started to exit")
        assert not procs.session(up.proc.pid)
        print(f"\nrayfin up: ready in {started_s:.0f} s, {len(up.seen)} processes, stopped in {stopped_s:.0f} s")
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
        procs.kill(up.seen | procs.tagged(TAG, up.tag))
