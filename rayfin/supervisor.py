"""Brings the controller back when desk code (or anything) kills it for good.

The controller actor restarts by itself after a crash (`max_restarts=-1`), but
`ray.kill(handle)` (no_restart=True by default) ends it for good, and any code in the cluster can
look it up by name and do that (Ray has no per-user access control). The supervisor,
`rayfin supervise` (a child process of `rayfin up` with its own Ray connection, and a container
beside the head in the KubeRay manifests), looks the controller up every `interval_s`; when the name is gone it starts a new one, which rebuilds from
the ledger and re-adopts running jobs by name, and writes the kill to the audit log with what Ray
says about it: the death cause (`RAY_KILL` for `ray.kill`) and the dead actor. Ray 2.60 does not
record which worker called `ray.kill`, so the event names the rayfin jobs that were running at the
time (the suspects), as re-adopted by the new controller.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from rayfin.config import RayfinConfig

log = logging.getLogger("rayfin.supervisor")


def death_of(name: str, namespace: str) -> dict[str, Any]:
    """What Ray's state API says about the last dead actor of that name: its id, pid, node, and
    the death cause (for `ray.kill`, Ray's message says so)."""
    try:
        # lazy, here and below: importing Ray takes seconds, and `rayfin` commands import this module
        import ray
        from ray.util.state import list_actors

        # this cluster's address: without one, the state API picks the latest cluster on the machine
        address = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
        rows = list_actors(address=address, filters=[("name", "=", name), ("state", "=", "DEAD")], detail=True, limit=100,
                           raise_on_missing_output=False)
    except Exception as exc:  # noqa: BLE001 - the state API needs the dashboard
        return {"error": f"state API: {type(exc).__name__}: {exc}"[:300]}
    rows = [r for r in rows if (r.ray_namespace or "") == namespace]
    if not rows:
        return {}
    last = rows[-1]
    cause = last.death_cause or {}
    ctx = cause.get("actor_died_error_context") or {}
    return {"actor_id": last.actor_id, "pid": last.pid, "node_id": last.node_id,
            "reason": ctx.get("reason") or "", "message": (ctx.get("error_message") or str(cause))[:1000],
            "owner": {k: ctx.get(k) for k in ("owner_id", "owner_ip_address", "node_ip_address") if ctx.get(k)}}


def node_alive(node_id: str, nodes: list[dict[str, Any]]) -> bool:
    """Whether the node this driver is attached through is alive, by the GCS's node table
    (`ray.nodes()`). After a head death a driver attached through the head's raylet keeps its
    GCS connection (a new head comes up at the same address) but not its raylet: calls that
    need it (starting a controller, calls to actors that moved) hang. Only a new connection,
    through a live raylet, helps."""
    return any(n.get("NodeID") == node_id and n.get("Alive") for n in nodes)


class Supervisor:
    def __init__(self, config: RayfinConfig, deploy_key: str, *, interval_s: float = 1.0,
                 on_restart: Callable[[Any], None] | None = None) -> None:
        self.config = config
        self.deploy_key = deploy_key
        self.interval_s = interval_s
        self.on_restart = on_restart
        self.restarts: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gcs: str | None = None
        self._node: str | None = None     # the node (raylet) this driver is attached through

    def start_watching(self) -> "Supervisor":
        """Remember the cluster this process is attached to: the only one it will act on."""
        import ray

        self._gcs = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
        self._node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return self

    def start(self) -> "Supervisor":
        """Watch on a thread of this process (`rayfin supervise` loops in its main thread instead)."""
        self.start_watching()
        self._thread = threading.Thread(target=self._loop, name="rayfin-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - keep watching
                log.exception("supervisor check failed")

    def alive(self) -> bool:
        import ray

        c = self.config.controller
        try:
            ray.get_actor(c.name, namespace=c.namespace)   # a restarting actor keeps its name
        except ValueError:
            return False
        return True

    def connected(self) -> bool:
        """Still attached to the cluster it supervises (a process may have shut Ray down or
        attached to another cluster meanwhile, as some tests do): never start a controller elsewhere."""
        import ray

        if not ray.is_initialized():
            return False
        if self._gcs is not None and ray.get_runtime_context().gcs_address != self._gcs:
            return False
        return self._node is None or node_alive(self._node, ray.nodes())

    def check_once(self) -> dict[str, Any] | None:
        if self._stop.is_set() or not self.connected() or self.alive():
            return None
        return self.restart()

    def restart(self) -> dict[str, Any]:
        import ray

        from rayfin.controller.actor import start_controller  # imports Ray

        c = self.config.controller
        t0 = time.monotonic()
        death = death_of(c.name, c.namespace)
        handle = start_controller(self.config, deploy_key=self.deploy_key)
        took = time.monotonic() - t0
        recovery = ray.get(handle.ping.remote(), timeout=60)["value"]["recovery"]
        suspects = list(recovery.get("adopted", []))
        event = {"death": death, "restart_s": took, "recovery": recovery, "suspects": suspects}
        reason = (f"controller {c.name} died without restart ({death.get('reason') or '?'}: "
                  f"{(death.get('message') or '')[:200]}); Ray does not say who; rayfin jobs running then: "
                  f"{', '.join(suspects) or 'none'}; brought back from the ledger in {took:.1f}s")
        reply = ray.get(handle.record_event.remote(self.deploy_key, "controller_killed", reason, event), timeout=60)
        if not reply.get("ok"):
            log.warning("could not audit the controller's death: %s", reply.get("error"))
        log.warning(reason)
        self.restarts.append(event)
        if self.on_restart is not None:
            self.on_restart(handle)
        return event


# ---- staying connected: a head death ends the connection, not the supervision -----------------------
#
# When the head dies (a head pod restarting, `LocalCluster.kill_head`), Ray ends a driver attached
# through it: its raylet is gone, and past `gcs_rpc_server_reconnect_timeout_s` the core worker
# exits the process. So the connection lives in a child process (`rayfin supervise
# --one-connection`), and `rayfin supervise` itself, which never imports Ray, starts a new one
# at the same GCS address when it ends: with GCS fault tolerance the new head is there, with the
# controller and the cluster's state. Retries back off (doubling, capped) and stop after
# `give_up_s` without a connection that lasted `healthy_s`, so a cluster gone for good ends the
# command (a container restart or an operator takes over from there).

LOST = 3        # exit status of a connection that was lost (not asked to stop)


@dataclass(frozen=True)
class Backoff:
    first_s: float = 1.0
    max_s: float = 30.0
    give_up_s: float = 600.0     # failing this long, with no healthy connection between: give up
    healthy_s: float = 30.0      # a connection that lasted this long resets the backoff

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s or self.give_up_s <= 0 or self.healthy_s <= 0:
            raise ValueError(f"bad backoff {self}")


def keep_connected(run_once: Callable[[], int], stop: threading.Event, backoff: Backoff = Backoff(), *,
                   address: str = "", clock: Callable[[], float] = time.monotonic) -> int:
    """Run one connection (`run_once()`, its exit status: 0 when asked to stop) after another
    until `stop` is set; between them wait `backoff`. Returns 0 when stopped, else the last
    connection's status once `backoff.give_up_s` passed with no healthy connection."""
    delay = backoff.first_s
    failing_since: float | None = None
    attempt = 0
    while not stop.is_set():
        t0 = clock()
        rc = run_once()
        if stop.is_set() or rc == 0:
            return 0
        now = clock()
        if now - t0 >= backoff.healthy_s:     # it was up for a while: a fresh failure, not a retry
            delay, failing_since, attempt = backoff.first_s, None, 0
        failing_since = t0 if failing_since is None else failing_since
        attempt += 1
        if now - failing_since >= backoff.give_up_s:
            log.error("supervisor: no connection to the cluster at %s for %.0f s (%d attempts, last exit %d); "
                      "giving up", address, now - failing_since, attempt, rc)
            return rc
        log.warning("supervisor: connection to the cluster at %s ended (exit %d after %.1f s); "
                    "reconnecting in %.1f s (attempt %d)", address, rc, now - t0, delay, attempt)
        if stop.wait(delay):
            return 0
        delay = min(delay * 2, backoff.max_s)
    return 0


def watch(sup: Any, stop: threading.Event, interval_s: float, say: Callable[[str], None] = print) -> int:
    """One connection's loop (`rayfin supervise --one-connection`): check every `interval_s`
    until stopped (0) or the connection is gone (LOST). Exceptions other than rayfin's own end
    the connection too: after a head death Ray's calls fail until a new driver connects."""
    from rayfin.errors import RayfinError

    while not stop.wait(interval_s):
        if not sup.connected():
            say("lost the cluster connection")
            return LOST
        try:
            event = sup.check_once()
        except RayfinError as exc:
            say(f"restart failed: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - Ray's errors after a head death vary
            say(f"lost the cluster connection: {type(exc).__name__}: {str(exc)[:300]}")
            return LOST
        if event:
            say(f"controller brought back in {event['restart_s']:.1f}s")
    return 0


def connection_command(config_path: str, address: str, interval_s: float) -> list[str]:
    """The child process of one connection."""
    return [sys.executable, "-m", "rayfin.cli", "supervise", "--one-connection", "--config", config_path,
            "--address", address, "--interval", str(interval_s)]


class ChildConnection:
    """`run_once` for `keep_connected`: one `rayfin supervise --one-connection` child, waited for,
    ended (SIGINT, then SIGKILL after 15 s) when `stop` is set. The deploy key goes through the environment."""

    def __init__(self, command: list[str], deploy_key: str, stop: threading.Event,
                 popen: Callable[..., Any] = subprocess.Popen) -> None:
        self.command, self.deploy_key, self.stop, self.popen = command, deploy_key, stop, popen
        self.started = 0

    def __call__(self) -> int:
        env = dict(os.environ, **{DEPLOY_KEY_ENV: self.deploy_key})
        proc = self.popen(self.command, env=env)
        self.started += 1
        while True:
            try:
                return int(proc.wait(timeout=0.5))
            except subprocess.TimeoutExpired:
                if self.stop.is_set():
                    # SIGINT: the child's own handler stops it cleanly (Ray's driver logs a
                    # stack trace on SIGTERM)
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    return 0


DEPLOY_KEY_ENV = "RAYFIN_DEPLOY_KEY"


def spawn_supervisor(config: RayfinConfig, address: str, deploy_key: str,
                     interval_s: float = 1.0) -> subprocess.Popen[bytes]:
    """`rayfin supervise` as a child process of `rayfin up`: its own Ray driver, so nothing this
    process does with Ray (a test attaching to another cluster) can mislead it. The deploy key
    goes through the environment, not the command line."""
    fd, path = tempfile.mkstemp(prefix="rayfin-supervise-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config.model_dump(mode="json"), f)
    env = dict(os.environ, **{DEPLOY_KEY_ENV: deploy_key, "RAY_ADDRESS": address})
    proc = subprocess.Popen([sys.executable, "-m", "rayfin.cli", "supervise", "--config", path, "--address", address,
                             "--interval", str(interval_s)], env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    proc.config_path = path  # type: ignore[attr-defined]
    return proc


def stop_supervisor(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    try:
        os.unlink(getattr(proc, "config_path", ""))
    except OSError:
        pass


__all__ = ["Supervisor", "death_of", "spawn_supervisor", "stop_supervisor", "DEPLOY_KEY_ENV", "Backoff",
           "keep_connected", "watch", "connection_command", "ChildConnection", "LOST"]
