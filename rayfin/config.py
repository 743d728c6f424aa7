"""One typed config tree for rayfin, validated at the edge.

A config file (YAML) describes the cluster (racks, nodes, NVLink islands, link bandwidths),
the desks (quotas, pools, credentials, serving quotas) and defaults. `load_config(path)`
returns a frozen `RayfinConfig` or raises `ConfigError` whose message lists every problem as
`field.path: got VALUE; allowed`. Every section is a model (`rayfin.config_base.ConfigModel`),
parsed once here; the sections that belong to a feature keep their model beside it
(`autoscaling`: rayfin.autoscale.config, `telemetry`: rayfin.telemetry.config) and those
modules import only rayfin.config_base, so this module imports them and not the other way.
Decision code receives the parts it needs as arguments and never reads this module's globals.
"""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from rayfin import auth
from rayfin.autoscale.config import AutoscalingSettings
from rayfin.config_base import SHA256_RE, ConfigModel, Name, config_error_from
from rayfin.errors import ConfigError
from rayfin.market.chargeback import ChargebackSettings
from rayfin.market.plan import CalendarSettings, MarketSettings, QuotaPlan
from rayfin.telemetry.config import TelemetryConfig

# How HTTP reaches the model replicas (serve_apps/ingress.py): written once, here.
Ingress = Literal["haproxy", "proxy"]
# Where a desk far beyond its quota is refused first (docs/serving.md, "Refusal inside HAProxy").
Edge = Literal["python", "haproxy"]


class LinkBandwidths(ConfigModel):
    """Bandwidth in GB/s of the slowest link between two GPUs at each level of the topology."""

    nvlink: float = Field(300.0, gt=0, description="between GPUs of one NVLink island")
    intra_node: float = Field(64.0, gt=0, description="same node, different islands (PCIe/UPI)")
    intra_rack: float = Field(25.0, gt=0, description="same rack, different nodes (e.g. 200 Gb/s IB)")
    inter_rack: float = Field(12.5, gt=0, description="across racks (spine)")

    @model_validator(mode="after")
    def _ordered(self) -> "LinkBandwidths":
        if not (self.nvlink >= self.intra_node >= self.intra_rack >= self.inter_rack):
            raise ValueError("bandwidths must not increase with distance: nvlink >= intra_node >= intra_rack >= inter_rack")
        return self


class NodeConfig(ConfigModel):
    name: Name
    pool: Name = "general"
    islands: list[Annotated[int, Field(gt=0, le=64)]] = Field(
        ..., min_length=1, max_length=16, description="GPUs in each NVLink island of this node")
    num_cpus: int = Field(1, ge=0, le=512)

    @property
    def gpus(self) -> int:
        return sum(self.islands)


class RackConfig(ConfigModel):
    name: Name
    nodes: list[NodeConfig] = Field(..., min_length=1)


class ClusterConfig(ConfigModel):
    name: Name = "local"
    bandwidth_gbps: LinkBandwidths = LinkBandwidths()
    racks: list[RackConfig] = Field(..., min_length=1)
    head_num_cpus: int = Field(2, ge=1, le=512)

    @model_validator(mode="after")
    def _unique_names(self) -> "ClusterConfig":
        seen: set[str] = set()
        for rack in self.racks:
            for node in rack.nodes:
                if node.name in seen:
                    raise ValueError(f"node name {node.name!r} is used twice; node names must be unique")
                seen.add(node.name)
        if len({r.name for r in self.racks}) != len(self.racks):
            raise ValueError("rack names must be unique")
        return self

    @property
    def nodes(self) -> list[NodeConfig]:
        return [n for r in self.racks for n in r.nodes]

    @property
    def pools(self) -> set[str]:
        return {n.pool for n in self.nodes}

    @property
    def total_gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    @classmethod
    def uniform(cls, *, gpus: int, gpus_per_node: int = 8, islands_per_node: int = 2,
                nodes_per_rack: int = 16, pool: str = "general",
                bandwidth_gbps: LinkBandwidths | None = None) -> "ClusterConfig":
        """A synthetic homogeneous cluster (used by the simulator and benchmarks)."""
        if gpus % gpus_per_node or gpus_per_node % islands_per_node:
            raise ConfigError(
                f"gpus={gpus} must be a multiple of gpus_per_node={gpus_per_node}, itself a multiple of "
                f"islands_per_node={islands_per_node}", path="cluster")
        n_nodes = gpus // gpus_per_node
        per_island = gpus_per_node // islands_per_node
        racks = []
        for r in range(0, n_nodes, nodes_per_rack):
            nodes = [NodeConfig(name=f"n{i}", pool=pool, islands=[per_island] * islands_per_node)
                     for i in range(r, min(r + nodes_per_rack, n_nodes))]
            racks.append(RackConfig(name=f"r{r // nodes_per_rack}", nodes=nodes))
        return cls(racks=racks, bandwidth_gbps=bandwidth_gbps or LinkBandwidths())


class ModelQuota(ConfigModel):
    """Per-desk serving quota (enforced by the gateway across all its replicas)."""

    requests_per_s: float = Field(50.0, gt=0, le=1_000_000)
    burst: int = Field(100, ge=1, le=10_000_000)
    max_in_flight: int = Field(32, ge=1, le=100_000)
    gpu_seconds_per_window: float | None = Field(None, gt=0)
    window_s: float = Field(60.0, gt=0, le=86_400)


class DeskConfig(ConfigModel):
    name: Name
    nominal_gpus: float = Field(..., ge=0, description="guaranteed GPUs")
    borrowing_limit: float | None = Field(
        None, ge=0, description="most GPUs above nominal it may borrow from others; null = no limit")
    lending_limit: float | None = Field(
        None, ge=0, description="most of its unused nominal GPUs others may borrow; null = all of it")
    weight: float = Field(1.0, gt=0, le=1000)
    pools: list[Name] = Field(default_factory=lambda: ["general"], min_length=1)
    credential_sha256: str = Field(..., pattern=SHA256_RE, description="sha256 hex of the desk's token")
    serving: ModelQuota = ModelQuota()
    models: list[Name] = Field(default_factory=list, description="private models this desk may call")
    least_attained_service: bool = Field(
        True, description="with scheduling.least_attained_service on: false keeps this desk out of it (its jobs "
                          "never preempt its own longer-running jobs, nor are preempted for them)")

    @property
    def max_gpus(self) -> float:
        """Most GPUs this desk may ever hold (nominal + borrowing)."""
        return float("inf") if self.borrowing_limit is None else self.nominal_gpus + self.borrowing_limit


class AdminConfig(ConfigModel):
    credential_sha256: str = Field(..., pattern=SHA256_RE)


class DefaultsConfig(ConfigModel):
    priority: Literal["critical", "normal", "batch"] = "normal"
    preemption_grace_s: float = Field(30.0, ge=0, le=86_400)
    max_retries: int = Field(0, ge=0, le=100)
    job_timeout_s: float | None = Field(None, gt=0)


class SchedulingConfig(ConfigModel):
    """The live policy's switches beyond the `rayfin` preset (docs/scheduling.md)."""
    least_attained_service: bool = Field(True, description="a desk's job that has run little may preempt the "
                                         "desk's own jobs that have run long (never another desk's work within "
                                         "its nominal; only jobs with retries left, never deadline work)")
    las_threshold_gpu_hours: float = Field(10.0, gt=0, le=1_000_000,
                                           description="GPU-hours of service after which a job may be preempted so")
    las_min_run_s: float = Field(3600.0, ge=0, le=30 * 86_400,
                                 description="nor before it has run this long since its last start")


class ControllerConfig(ConfigModel):
    name: Name = "rayfin-controller"
    namespace: Name = "rayfin"
    cycle_interval_s: float = Field(0.2, gt=0, le=60)
    ledger_path: str = Field("~/.rayfin/ledger.db", min_length=1, description="the SQLite ledger file "
                             "(the embedded default), used when `ledger` is not set")
    ledger: str | None = Field(None, description="postgresql://USER@HOST:PORT/DATABASE selects a PostgreSQL "
                               "ledger; the password comes from ledger_password_env or ledger_password_file")
    ledger_password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                            description="environment variable holding the PostgreSQL password")
    ledger_password_file: str | None = Field(None, min_length=1,
                                             description="file holding the PostgreSQL password")
    ledger_pool_size: int = Field(4, ge=1, le=64, description="PostgreSQL connections the controller keeps")
    max_result_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_log_bytes: int = Field(1024 * 1024, ge=1024, description="output kept per job and rank (newest kept)")
    checkpoint_dir: str = Field("", description="root of per-job checkpoint directories, on storage every "
                                                "worker node sees; empty = 'checkpoints' beside the ledger")
    cordon_s: float = Field(20.0, ge=0, le=3600, description="an island where a runner was just lost takes no "
                            "new work this long: time for Ray's failure detector to declare its node dead")
    admit_timeout_s: float = Field(180.0, gt=0, le=86_400, description="an admitted job whose placement group or "
                                   "runner has not come up after this long goes back to the queue (no retry spent)")
    clock_start: datetime | None = Field(None, description="drills and tests only: the controller's clock reads "
                                         "this instant (with a zone) when the controller first starts, then runs at "
                                         "real speed, across controller restarts of the same `rayfin up`; every "
                                         "timestamp, quota window and deadline follows it")
    audit_snapshots: bool = Field(True, description="keep, for each cycle that decided something, its audit records "
                                  "and the snapshot they were made on, so `rayfin replay` can re-run them")

    @field_validator("clock_start")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("clock_start needs a time zone, e.g. 2025-11-28T12:55:00-05:00")
        return value

    @property
    def checkpoint_root(self) -> str:
        if self.checkpoint_dir:
            return os.path.expanduser(self.checkpoint_dir)
        base = os.path.dirname(os.path.expanduser(self.ledger_path)) if self.ledger_path != ":memory:" else ""
        return os.path.join(base or os.path.expanduser("~/.rayfin"), "checkpoints")

    @field_validator("ledger")
    @classmethod
    def _ledger_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return check_ledger_url(value)

    @model_validator(mode="after")
    def _one_password_source(self) -> "ControllerConfig":
        if self.ledger_password_env and self.ledger_password_file:
            raise ValueError("set one of controller.ledger_password_env and controller.ledger_password_file, "
                             "not both")
        if (self.ledger_password_env or self.ledger_password_file) and not self.ledger:
            raise ValueError("controller.ledger_password_env/_file apply to a PostgreSQL ledger: set "
                             "controller.ledger to a postgresql:// URL, or remove them")
        return self


def check_ledger_url(value: str) -> str:
    """A PostgreSQL URL with no password in it (the password lives in an env var or a file)."""
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in ("postgresql", "postgres"):
        raise ValueError("must be a postgresql://USER@HOST:PORT/DATABASE URL (leave it unset for the SQLite "
                         "ledger at controller.ledger_path)")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.password is not None or "password" in {k.lower() for k in parse_qs(parts.query)}:
        raise ValueError("must not contain a password; put it in an environment variable "
                         "(controller.ledger_password_env) or a file (controller.ledger_password_file)")
    if not parts.hostname and "host" not in parse_qs(parts.query):
        raise ValueError("must name a host: postgresql://USER@HOST:PORT/DATABASE")
    return value


class ServeModelConfig(ConfigModel):
    name: Name
    kind: Literal["option_pricer", "fraud_scorer"]
    owner: Name = Field(..., description="desk the replicas are charged to")
    public: bool = Field(True, description="callable by every desk; else only owner and desks that list it")
    num_replicas: int = Field(1, ge=1, le=1024)
    gpus_per_replica: float = Field(0.0, ge=0, le=8)
    max_batch_size: int = Field(32, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1)
    num_cpus_per_replica: float = Field(0.25, ge=0, le=64)
    max_queued_requests: int = Field(
        512, ge=1, le=1_000_000, description="Serve queue per caller; beyond it the gateway answers 429")
    seed: int = Field(0, ge=0, description="seed of the start-up fit (same seed, same weights)")
    fit_steps: int | None = Field(None, ge=1, le=100_000, description="optimiser steps of the start-up fit; "
                                  "null = the model's default (tests use fewer)")


# HAProxy's own spelling of a runtime API (stats socket) address: a unix socket or an IPv4 TCP port.
EDGE_ADMIN_RE = r"^(unix@/[^\s]+|ipv4@[0-9.]+:[0-9]{1,5})$"


class EdgeRuntimeConfig(ConfigModel):
    """Where the quota broker pushes the desks' rates to the HAProxy edge when that HAProxy does
    not run beside it (KubeRay: a sidecar of the head pod, serve_apps/haproxy_sidecar.py). Unset,
    the broker finds the admin sockets of the HAProxies Serve runs on its own node."""

    admin: str = Field(..., pattern=EDGE_ADMIN_RE, description="the HAProxy's runtime API, as its `stats socket` "
                       "line names it: unix@/PATH (a socket on a volume the broker shares) or ipv4@HOST:PORT")
    map_path: str = Field(..., pattern=r"^/[^\s]+$", description="the rate map file as that HAProxy loaded it "
                          "(its runtime API names a map by file); the broker rewrites the file too, for a reload")
    broker_on_head: bool = Field(True, description="run the quota broker on the head node (where a head-pod "
                                 "sidecar's loopback port or shared volume is)")


class ServeConfig(ConfigModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    gateway_replicas: int = Field(2, ge=1, le=64)
    max_body_bytes: int = Field(64 * 1024, ge=256, le=64 * 1024 * 1024)
    models: list[ServeModelConfig] = Field(default_factory=list)
    lease_ttl_s: float = Field(
        1.0, gt=0, le=60, description="quota tokens a gateway replica leased expire after this long unused")
    quota_sync_interval_s: float = Field(
        0.25, gt=0, le=10, description="how often gateway replicas report GPU use and return idle permits")
    quota_local_share: float = Field(
        0.75, ge=0, le=0.9, description="part of each desk's rate and burst split evenly over gateway replicas "
        "(admitted with no broker call); the quota broker lends out the rest")
    ingress: Ingress = Field(
        "haproxy", description="how HTTP reaches the model replicas: 'haproxy' (Serve's HAProxy ingress: "
        "HAProxy forwards to replicas that serve HTTP themselves) or 'proxy' (Serve's Python proxy actor); "
        "see serve_apps/ingress.py")
    edge_shedding: bool = Field(
        True, description="refuse a desk beyond its whole request rate and burst before Serve handles the "
        "request (ASGI middleware in each gated replica's HTTP server with 'haproxy', in Serve's proxy or "
        "its request router with 'proxy'); replicas still account quotas exactly")
    edge: Edge = Field(
        "python", description="where a desk beyond its quota is refused first: 'python' (the edge_shedding "
        "filter in Python) or 'haproxy' (also rules inside Serve's HAProxy, keyed by the credential's hash, "
        "that refuse before Python sees the request and follow quota changes at run time; needs "
        "ingress 'haproxy'); either way admission in the replicas stays the exact authority")
    haproxy_request_metrics: bool = Field(
        True, description="with ingress 'haproxy': Serve's per-request HTTP metrics (the request counts and "
        "latencies of the Ray dashboard's Serve view), which Serve gets by parsing one HAProxy log line per "
        "request in Python (about 50 us of CPU each on a small node); false saves that, and rayfin's own "
        "per-desk request metrics from the replicas remain")
    edge_hold_s: int = Field(
        1, ge=0, le=30, description="with edge 'haproxy': once a credential's refusals reach 4x its edge limit "
        "in the window (or 200 a second), each further refusal is held this long in HAProxy before the same "
        "429 with Retry-After (a tarpit), so a client sending back to back gets one refusal per connection "
        "per hold instead of one per round trip; 0: refuse at once")
    edge_runtime: EdgeRuntimeConfig | None = Field(
        None, description="with edge 'haproxy': the runtime API address and map file of an HAProxy edge that "
        "does not run on the broker's node (KubeRay's head-pod sidecar); unset: Serve's own HAProxies")
    replica_niceness: int | None = Field(
        0, ge=-20, le=19, description="CPU niceness of rayfin's serving replicas (models, gateway, quota broker) "
        "and of their ingress (the HAProxy Serve starts, through rayfin's wrapper, or Serve's Python proxy): "
        "Ray starts every worker at nice 15, below its own daemons, and a replica at 15 loses its core for "
        "tens of ms whenever one of them runs. 0 (the default) serves at the node's normal priority, above "
        "desks' batch workers (still 15); null keeps Ray's. Lowering a niceness needs an RLIMIT_NICE that "
        "allows it (soft limit 20 for 0) or CAP_SYS_NICE; without, the replica goes as low as allowed and "
        "logs it")

    @model_validator(mode="after")
    def _edge_needs_haproxy(self) -> "ServeConfig":
        if self.edge == "haproxy" and self.ingress != "haproxy":
            raise ValueError(f"serve.edge 'haproxy' refuses inside Serve's HAProxy ingress, but serve.ingress is "
                             f"{self.ingress!r}; set serve.ingress: haproxy or serve.edge: python")
        if self.edge_runtime is not None and self.edge != "haproxy":
            raise ValueError(f"serve.edge_runtime is the HAProxy edge's address, but serve.edge is {self.edge!r}; "
                             "set serve.edge: haproxy or remove serve.edge_runtime")
        return self


class ApiConfig(ConfigModel):
    """The rayfin API (HTTP on Ray Serve, beside the inference gateway): what desks and operators
    call instead of the controller actor, so no client needs the cluster's Ray token."""

    enabled: bool = True
    route_prefix: str = Field("/api", pattern=r"^/[a-z0-9/_-]*[a-z0-9]$",
                              description="under serve.host:serve.port; the URL `rayfin up` prints")
    replicas: int = Field(1, ge=1, le=64)
    max_payload_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024,
        description="largest pickled callable (with its arguments) or request body accepted; beyond: 413")
    max_result_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024, description="largest job result returned; beyond: 413")
    controller_timeout_s: float = Field(60.0, gt=0, le=3600,
                                        description="a controller call slower than this answers 503")


class PolicingConfig(ConfigModel):
    """GPU use outside rayfin: the controller lists Ray's actors, tasks and placement groups
    every `interval_s` and stops (`enforce`) or only reports (`report`) what holds GPUs or desk
    pool / island resources without going through rayfin."""

    mode: Literal["enforce", "report", "off"] = "enforce"
    interval_s: float = Field(2.0, ge=0.2, le=600)
    fail_owner_job: bool = Field(True, description="enforce: also fail the rayfin job whose code started it")
    gpu_processes: bool = Field(True, description="on nodes with real GPUs, also check the processes NVML "
                                "lists on them: a process on a GPU its Ray worker does not hold is a finding")


class DeadlinesConfig(ConfigModel):
    """Jobs with a deadline (rayfin.controller.deadlines): the submit answer and the escalation."""

    slack_threshold_s: float = Field(3600.0, ge=0, description="escalate a deadline job to critical when "
                                     "deadline - now - safety x remaining falls to this")
    safety: float = Field(1.2, ge=1.0, le=10.0, description="remaining runtime x this in the slack")
    margin_s: float = Field(0.0, ge=0, description="an ETA later than deadline - margin_s is at risk")
    default_runtime_s: float = Field(3600.0, gt=0, description="remaining runtime assumed, in the queue ahead, "
                                     "for jobs with neither expected_runtime_s nor history")
    horizon_days: float = Field(8.0, gt=0, le=60, description="how far ahead the quota plan's windows are "
                                "read for an ETA")
    guard_deadline_class: bool = Field(True, description="an escalated job never priority-preempts running "
                                       "deadline work of its own desk due no later than itself "
                                       "(rayfin.market.deadline.guard_deadline_class)")


class DashboardConfig(ConfigModel):
    host: str = "127.0.0.1"
    port: int = Field(8265, ge=1, le=65535)
    metrics_export_port: int = Field(8090, ge=1, le=65535)


class RayfinConfig(ConfigModel):
    cluster: ClusterConfig
    desks: list[DeskConfig] = Field(..., min_length=1)
    admin: AdminConfig | None = None
    defaults: DefaultsConfig = DefaultsConfig()
    scheduling: SchedulingConfig = SchedulingConfig()
    controller: ControllerConfig = ControllerConfig()
    serve: ServeConfig = ServeConfig()
    api: ApiConfig = ApiConfig()
    policing: PolicingConfig = PolicingConfig()
    dashboard: DashboardConfig = DashboardConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    autoscaling: AutoscalingSettings = AutoscalingSettings()
    # The market clock (issue 18, rayfin.market): the exchange whose sessions the quota plan
    # follows, and per desk the quota overrides of each window. Both optional; a plan needs a calendar.
    calendar: CalendarSettings | None = None
    quota_plan: QuotaPlan | None = None
    deadlines: DeadlinesConfig = DeadlinesConfig()
    # Chargeback (rayfin.market.chargeback): cost per GPU-hour per node pool (`default` for the rest).
    chargeback: ChargebackSettings = ChargebackSettings()

    @model_validator(mode="after")
    def _cross_checks(self) -> "RayfinConfig":
        if self.quota_plan is not None and self.calendar is None:
            raise ValueError("quota_plan needs a calendar: add `calendar: {exchange: XNYS}` (or another "
                             "exchange_calendars code)")
        names = [d.name for d in self.desks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"desk names must be unique; repeated: {sorted(dup)}")
        pools = self.cluster.pools
        for i, desk in enumerate(self.desks):
            for pool in desk.pools:
                if pool not in pools:
                    raise ValueError(f"desks[{i}].pools: pool {pool!r} has no nodes; node pools are {sorted(pools)}")
        for pool in pools:
            cap = sum(n.gpus for n in self.cluster.nodes if n.pool == pool)
            # Nominal quotas are guarantees: desks confined to one pool cannot be promised more than it has.
            confined = sum(d.nominal_gpus for d in self.desks if d.pools == [pool])
            if confined > cap:
                raise ValueError(f"desks confined to pool {pool!r} are guaranteed {confined:g} GPUs "
                                 f"but the pool has {cap}; lower nominal_gpus or add nodes")
        unknown = sorted(set(self.chargeback.rates) - set(pools) - {"default"})
        if unknown:
            raise ValueError(f"chargeback.rates: unknown pool(s) {unknown}; node pools are {sorted(pools)} "
                             "(or `default`)")
        if self.chargeback.missing(pools):
            raise ValueError(f"chargeback.rates: no rate for pool(s) {self.chargeback.missing(pools)} and no "
                             "`default`; give each pool a cost per GPU-hour or add `default: COST`")
        total_nominal = sum(d.nominal_gpus for d in self.desks)
        if total_nominal > self.cluster.total_gpus:
            raise ValueError(f"sum of desks' nominal_gpus ({total_nominal:g}) exceeds the cluster's "
                             f"{self.cluster.total_gpus} GPUs; nominal quotas are guarantees")
        model_names = [m.name for m in self.serve.models]
        for i, m in enumerate(self.serve.models):
            if m.owner not in names:
                raise ValueError(f"serve.models[{i}].owner: unknown desk {m.owner!r}; desks are {names}")
        for i, desk in enumerate(self.desks):
            for name in desk.models:
                if name not in model_names:
                    raise ValueError(f"desks[{i}].models: unknown model {name!r}; serve.models are {model_names}")
        return self

    def desk(self, name: str) -> DeskConfig:
        for d in self.desks:
            if d.name == name:
                return d
        raise KeyError(name)

    @property
    def desk_names(self) -> list[str]:
        return [d.name for d in self.desks]

    @property
    def market(self) -> MarketSettings | None:
        """The calendar and quota plan as rayfin.market takes them; None when no calendar is set."""
        if self.calendar is None:
            return None
        return MarketSettings(calendar=self.calendar, quota_plan=self.quota_plan or QuotaPlan())


# The one credential check lives in rayfin.auth; these names stay importable from here.
hash_token = auth.hash_token
token_matches = auth.token_matches


def parse_config(data: Any, source: str = "<config>") -> RayfinConfig:
    """Validate a parsed YAML/dict into a RayfinConfig, raising ConfigError with field paths."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping with keys cluster, desks, ...; got "
                          f"{type(data).__name__}", path="(root)")
    try:
        return RayfinConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(exc, source) from None


def load_config(path: str | Path) -> RayfinConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file ({exc.strerror})", path=str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(exc, 'problem', exc)}", path=str(p)) from None
    return parse_config(data, source=str(p))


ROOT_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = ROOT_CONFIGS / "local.yaml"


def default_config_path() -> Path:
    return DEFAULT_CONFIG


