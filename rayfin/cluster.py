"""The embedded default: a local Ray cluster whose GPU nodes are simulated with Ray's own
machinery (`ray.cluster_utils.Cluster`, logical `GPU` resources).

One Ray node (raylet) per NVLink island, like a KubeRay worker pod per island: Ray's GPU ids
then never leave the island rayfin chose. Each island node carries
    labels     rayfin.io/rack, rayfin.io/node, rayfin.io/island, rayfin.io/pool
    resources  GPU: n, rayfin_island_<node>_i<k>: n, rayfin_pool_<pool>: n
and the head node (no GPUs) runs the controller, Serve and the dashboard.
We stop only the processes this object started; never `ray stop`.

How HTTP reaches Serve's replicas is set up by the caller's `ingress` (serve_apps.ingress, passed
by rayfin.up): this module sits below the Serve applications and imports nothing from them.

With `gcs_redis` (HOST:PORT) Ray's control store (GCS) keeps its tables in that Redis (Ray's GCS
fault tolerance, `RAY_REDIS_ADDRESS`), under a storage namespace unique to this cluster: a GCS
that dies and restarts finds its nodes, actors and placement groups again. `kill_head` and
`restart_head` go further: every process of the head node dies, and a new head node starts on the
same GCS address. The worker nodes reconnect to it, as they do to a new head pod on KubeRay.
"""
from __future__ import annotations

import logging
import os
import random
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from placement.topology import Island, Topology, island_resource, pool_resource
from rayfin.config import RayfinConfig
from rayfin.errors import ConfigError
from rayfin.telemetry.tracing import ray_hook, tracing_env

log = logging.getLogger("rayfin.cluster")
LABEL = "rayfin.io/"


def island_node_args(island: Island) -> dict[str, Any]:
    return {
        "num_cpus": 1,
        "num_gpus": island.gpus,
        "resources": {island_resource(island.id): float(island.gpus), pool_resource(island.pool): float(island.gpus)},
        "labels": {LABEL + "rack": island.rack, LABEL + "node": island.node, LABEL + "island": island.id,
                   LABEL + "pool": island.pool},
        "object_store_memory": 80 * 1024 * 1024,
    }


def ensure_ray_token_auth() -> bool:
    """Keep Ray's own token authentication on for the cluster we start.

    `ray start` and a local `ray.init()` enable it by default in Ray 2.60, but
    `ray.cluster_utils.Cluster` does not; so we do what `ray start` does: unless RAY_AUTH_MODE
    says otherwise, set RAY_AUTH_MODE=token for this process (raylets and workers inherit it)
    and create ~/.ray/auth_token if there is none. Returns whether token auth is on."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return False
    from ray._private.authentication import authentication_token_setup as auth  # lazy: Ray, seconds to import

    auth.enable_token_auth_by_default()
    auth.ensure_token_if_auth_enabled(None, create_token_if_missing=True)
    return True


# Ray's worker ports (--min/max-worker-port defaults) and its fixed ports stay below PORT_FLOOR;
# Serve's replicas take their own HTTP ports from PORT_CEILING up (direct ingress, lowest first).
PORT_FLOOR = 20000
PORT_CEILING = int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "30000"))
_handed_out: set[int] = set()       # ports this process gave out: never the same one twice
# Ray's switch that tells work asking for no GPU CUDA_VISIBLE_DEVICES="" (LocalCluster.start)
ZERO_GPU_ENV = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"


def ephemeral_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """The kernel's range for port-0 binds and outgoing connections (Linux default 32768-60999)."""
    try:
        with open(path) as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def pick_port(rng: random.Random, is_free: Callable[[int], bool], low: int, high: int,
              tries: int = 64) -> int | None:
    """A random port in [low, high) that `is_free` accepts, or None after `tries` (pure)."""
    for _ in range(tries if high > low else 0):
        port = rng.randrange(low, high)
        if is_free(port):
            return port
    return None


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))      # all interfaces: HAProxy's stats and metrics bind there
            return True
        except OSError:
            return False


def free_port(rng: random.Random | None = None) -> int:
    """A port to hand to a process that starts later (the dashboard, Serve, HAProxy).

    Not one from the kernel's ephemeral range: a port found free there by binding port 0 can be
    taken, before its owner binds it, by any process binding port 0 or opening a connection, and
    Ray does both by the hundred while it starts (seen: HAProxy's metrics port taken, the Serve
    start failing with 'Address already in use'). Nor one of the ports Serve's replicas take for
    their own HTTP servers (PORT_CEILING up). So: a free port between PORT_FLOOR and the lower
    of the two, not handed out before by this process, falling back to the kernel's choice when
    that span is empty or full."""
    low, _ = ephemeral_range()
    port = pick_port(rng or random.SystemRandom(), lambda p: p not in _handed_out and _bindable(p),
                     PORT_FLOOR, min(low, PORT_CEILING))
    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    _handed_out.add(port)
    return port


def free_port_range(count: int, rng: random.Random | None = None) -> int:
    """The first of `count` consecutive free ports (a process that takes a block: `ray start`'s
    fixed ports, a worker port range), by free_port's rules; none handed out before by this
    process. Raises RuntimeError if no such block is free."""
    low, _ = ephemeral_range()
    start = pick_port(rng or random.SystemRandom(),
                      lambda p: all(q not in _handed_out and _bindable(q) for q in range(p, p + count)),
                      PORT_FLOOR, min(low, PORT_CEILING) - count + 1)
    if start is None:
        raise RuntimeError(f"no {count} consecutive free ports between {PORT_FLOOR} and {min(low, PORT_CEILING)}")
    _handed_out.update(range(start, start + count))
    return start


def proc_pids(proc: str = "/proc") -> list[str]:
    """The process-id entries of /proc (as names); [] where there is no /proc."""
    try:
        return [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return []


def descendants(pid: int, proc: str = "/proc") -> list[int]:
    """Every process below `pid` (children, their children, ...), from /proc; [] elsewhere."""
    parent: dict[int, int] = {}
    for e in proc_pids(proc):
        try:
            with open(f"{proc}/{e}/stat") as f:
                stat = f.read()
            parent[int(e)] = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found: list[int] = []
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found.extend(kids)
        frontier.extend(kids)
    return found


class IngressSetup(Protocol):
    """How HTTP reaches Serve's replicas, set in the environment before Ray starts (Serve reads
    it from each process's environment): `serve_apps.ingress` is one. `install_from_config`
    reads `serve.ingress` and `serve.edge`."""

    def install_from_config(self, config: RayfinConfig) -> dict[str, str]: ...

    def remove_run_dir(self, values: dict[str, str]) -> None: ...


@dataclass
class LocalCluster:
    config: RayfinConfig
    dashboard: bool = True
    dashboard_port: int | None = None
    metrics_export_port: int | None = None
    cluster: Any = None
    nodes: dict[str, Any] = field(default_factory=dict)   # island id -> ray Node
    started_s: float = 0.0
    token_auth: bool = False
    ingress: IngressSetup | None = None  # None: leave the environment's ingress settings as they are
    ingress_env: dict[str, str] = field(default_factory=dict)   # what `ingress` set for it
    gcs_redis: str | None = None         # HOST:PORT of the Redis for GCS fault tolerance
    storage_namespace: str = ""
    head_alive: bool = True
    _head_args: dict[str, Any] = field(default_factory=dict, repr=False)
    _env_before: dict[str, str | None] = field(default_factory=dict, repr=False)

    @property
    def topology(self) -> Topology:
        return Topology.from_config(self.config.cluster)

    def start(self) -> str:
        from ray.cluster_utils import Cluster  # lazy: importing Ray takes seconds; `rayfin --help` need not

        t0 = time.monotonic()
        self.token_auth = ensure_ray_token_auth()
        # How HTTP reaches the replicas (HAProxy by default) and rayfin's edge middleware, which
        # sheds a desk's flood before Serve handles it: set before Ray starts, as Serve reads them
        # from each process's environment.
        if self.ingress is not None:
            try:
                self.ingress_env = self.ingress.install_from_config(self.config)
            except ValueError as exc:   # no HAProxy here, or a conflicting variable: the field to change
                raise ConfigError(str(exc), path="serve.ingress") from None
        # Fewer idle workers and quicker failure detection suit a laptop-sized simulated cluster.
        os.environ.setdefault("RAY_num_prestart_python_workers", "0")
        # Work that asks for no GPU gets CUDA_VISIBLE_DEVICES="" (Ray 2.60 leaves it unset, and
        # such a task then sees every GPU of its node: ray-project/ray#54868). Advice to CUDA, not
        # a fence: policing checks the GPUs' own process lists (policing.gpu_processes).
        # CUDA numbers GPUs in PCI order, as NVML does, so that the GPU policing sees a worker on
        # is the one Ray gave it.
        for key, value in ((ZERO_GPU_ENV, "1"), ("CUDA_DEVICE_ORDER", "PCI_BUS_ID")):
            self._env_before.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        if self.gcs_redis:
            self._use_gcs_redis()
        d = self.config.dashboard
        head = {
            "num_cpus": self.config.cluster.head_num_cpus,
            "num_gpus": 0,
            "include_dashboard": self.dashboard,
            "dashboard_host": d.host,
            "dashboard_port": self.dashboard_port if self.dashboard_port is not None else d.port,
            "metrics_export_port": self.metrics_export_port if self.metrics_export_port is not None
            else d.metrics_export_port,
            "labels": {LABEL + "role": "head"},
            "object_store_memory": 200 * 1024 * 1024,
            # Its own agent port: the default (52365) clashes with any other Ray head on the machine.
            "dashboard_agent_listen_port": free_port(),
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5,
                               # a busy laptop can take longer than 30 s to start a node's agent
                               "agent_register_timeout_ms": 120_000},
        }
        hook = ray_hook(self.config.telemetry)
        if hook:  # Ray's own tracing hook: Ray tasks join the job's OpenTelemetry trace
            os.environ.update(tracing_env(self.config.telemetry))  # every raylet and worker inherits these
            head["tracing_startup_hook"] = hook
        try:
            self._head_args = dict(head)
            self.cluster = Cluster(initialize_head=True, head_node_args=head, shutdown_at_exit=True)
            for island in self.topology.islands:
                self.nodes[island.id] = self.cluster.add_node(wait=False, **island_node_args(island))
            self.cluster.wait_for_nodes()
        except BaseException:
            self.shutdown()
            raise
        self.started_s = time.monotonic() - t0
        return self.address

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def dashboard_url(self) -> str | None:
        url = getattr(self.cluster, "webui_url", None) if self.cluster else None
        if not url:
            return None
        return url if url.startswith("http") else "http://" + url

    def _use_gcs_redis(self) -> None:
        """Read by Ray when the head starts (ray/_private/node.py) and by the GCS it launches. A
        namespace of its own: a new cluster on a namespace another used restores stale state."""
        self.storage_namespace = self.storage_namespace or f"rayfin-{self.config.cluster.name}-{secrets.token_hex(4)}"
        for key, value in (("RAY_REDIS_ADDRESS", self.gcs_redis or ""),
                           ("RAY_external_storage_namespace", self.storage_namespace)):
            self._env_before.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    @property
    def gcs_running(self) -> bool:
        head = self.cluster.head_node if self.cluster is not None else None
        return head is not None and head._gcs_address is not None

    def kill_gcs(self) -> None:
        """SIGKILL Ray's GCS server on the head (a head failure, as far as the control store goes)."""
        self.cluster.head_node.kill_gcs_server()

    def restart_gcs(self) -> None:
        """Start the GCS again on its port; with `gcs_redis` it reloads the cluster's state."""
        self.cluster.head_node.start_gcs_server()

    def kill_head(self) -> list[int]:
        """The head node dies as a head pod does: SIGKILL of every process of it (raylet, GCS,
        dashboard, monitor, log monitor, and everything below them: the dashboard's modules, the
        node agents, the workers of the actors on the head (the controller's among them) and
        what those started, e.g. HAProxy). Worker nodes stay up; with `gcs_redis`
        their raylets wait for a GCS on the same address (`gcs_rpc_server_reconnect_timeout_s`).
        Returns the process ids killed."""
        head = self.cluster.head_node
        self._head_args["gcs_server_port"] = int(head.gcs_address.rsplit(":", 1)[1])
        own = [p.process.pid for procs in head.all_processes.values() for p in procs]
        pids = list(dict.fromkeys(own + [c for pid in own for c in descendants(pid)]))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)  # reaps its children
        self.cluster.head_node = None
        self.head_alive = False
        return pids

    def restart_head(self) -> float:
        """A new head node on the dead head's GCS address (and dashboard and metrics ports): with
        `gcs_redis` its GCS reloads the cluster from Redis, the worker raylets reconnect, and Ray
        restarts the detached actors pinned to the head (the controller) on it. Returns seconds."""
        t0 = time.monotonic()
        self.cluster.add_node(**self._head_args)
        self.head_alive = True
        return time.monotonic() - t0

    def remove_island(self, island_id: str, graceful: bool = True) -> None:
        """Take an island's node away (a node failure when graceful=False)."""
        node = self.nodes.pop(island_id)
        self.cluster.remove_node(node, allow_graceful=graceful)

    def add_island(self, island_id: str) -> None:
        island = self.topology.island(island_id)
        self.nodes[island_id] = self.cluster.add_node(wait=True, **island_node_args(island))

    def shutdown(self) -> None:
        try:
            if self.cluster is not None:
                if not self.head_alive:
                    self.restart_head()     # else the worker nodes wait for a GCS that never comes
                if not self.gcs_running:
                    self.restart_gcs()      # else the node agents, waiting for it, are orphaned
                self.cluster.shutdown()
        finally:
            self.cluster = None
            self.nodes.clear()
            if self.ingress is not None:
                self.ingress.remove_run_dir(self.ingress_env)
            self._forget_gcs_redis()

    def _forget_gcs_redis(self) -> None:
        if self.gcs_redis and self.storage_namespace:
            try:
                from ray._private.gcs_utils import cleanup_redis_storage  # lazy: Ray

                host, port = self.gcs_redis.rsplit(":", 1)
                cleanup_redis_storage(host, int(port), os.environ.get("RAY_REDIS_PASSWORD", ""), False,
                                      self.storage_namespace)
            except Exception as exc:  # noqa: BLE001 - Redis gone already: nothing left to clean
                log.warning("GCS storage in Redis not cleaned: %s", exc)
        for key, value in self._env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._env_before.clear()
