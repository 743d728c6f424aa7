"""Per-desk refusal inside HAProxy (C): stick-table rules, the rate map, its runtime updates.

The Python edge (serve_apps/edge.py) refuses a flooding desk in the replica's HTTP server, but
each refusal costs Python CPU on the event loop the quiet desk also needs (docs/serving.md).
These rules refuse it in the HAProxy that Serve already runs in front of the replicas, before
Python sees a byte:

    acl rf_predict   path_end :predict
    txn.rf_key     = sha256(bearer token) in hex       (the map holds hashes, never tokens)
    txn.rf_limit   = map(rates.map, rf_key)            (requests a desk may pass per window)
    track-sc0 rf_key in table rf_desk_passed           (store gpc0_rate(window))
    429 + Retry-After   if gpc0_rate(window) >= limit
    sc-inc-gpc0(0)      otherwise                      (only passed requests are counted)

Counting only what passes (gpc0, not http_req_rate) keeps a desk's allowed share flowing
during its own flood: the edge passes about `limit` per window, as the token bucket does.

The same is counted per second too (`rf_desk_passed_1s`, tracked as sc1, limit from the map
entry `<hash>_1s`): a desk idle for a window could otherwise pass its whole window's limit at
the first instant of a flood, and the replica that serves the other desks would refuse most of
it in Python. A bucket of rate r and burst b passes at most b + r in any second, so the
per-second limit ceil(slack * (b + r)) refuses nothing within quota either.

A storm (a retry loop, a client that ignores Retry-After) is refused more cheaply still. Once a
credential's refusals in the window (gpc1_rate) pass `storm_factor` times its limit, or
`storm_cap_per_s` a second whatever its quota (and its limit), each further refusal is held for 0.5 to 1.5 x
`hold_s` (at random, so the holds of a client's connections do not end together) before its 429
(HAProxy's `tarpit` in one of the `rf_hold_<i>` backends, with the same status, body and
Retry-After). A client that backs off on Retry-After sees no difference. A client sending back to
back gets one refusal per connection per `hold_s` instead of one per round trip, and each
refusal it does not send is HAProxy CPU not taken from the core that also serves the quiet
desks. While the credential storms, its requests under the limit are held and refused too (a
penalty box, as CDN rate limiters' mitigation timeout): a desk sending at many times its quota
has spent it, and the share it would still pass (the limit is twice the quota) would land on the
replica that serves the other desks. The storm ends once the refusals counted in the window fall
back under the line, within two windows of the desk slowing down (HAProxy's rate counter weighs
in the previous period); then what it may pass passes at once again. Whether to hold is decided
before a pass is counted. The held connections count toward HAProxy's `maxconn`, as idle
keep-alive connections already do.
Behind a shared L7 gateway that pools upstream connections across desks, a held refusal would
block the next request on its pooled connection: put the edge in front of such a gateway.

The edge only refuses: what it passes still meets admission (serve_apps/admission.py: Python
stays the authority), and the limit is set so a desk within its quota is never refused here:
a token bucket of rate r and burst b passes at most b + r * W in any window W, and HAProxy's
rate counter (the current period plus the previous one weighted by the time left) can read up
to that count again from the period before, so limit = ceil(slack * (b + r * W)) with slack 2
by default; the edge then cuts a flood to at most twice the desk's quota, and the exact
gate does the rest. Keys without a map entry (no or unknown credential) are not tracked and
pass to the replica, which answers them (401 and so on).

Quota changes follow without a restart: `apply_rates` rewrites the map file (so a reload reads
the new limits) and sends each running HAProxy the runtime API commands (`set map` / `add map` /
`del map` on its admin socket, `limit_commands`) that turn the map it holds, read back with
`show map`, into the new one. The quota broker calls it whenever it is built with quotas
(serve_apps/deployments.py), so a redeploy with changed quotas reaches the edge too.

How the rules reach Ray's generated configuration: `patch_template` inserts them into Serve's
HAProxy template (ray.serve._private.haproxy_templates.HAPROXY_CONFIG_TEMPLATE, Ray 2.60) ahead
of its per-backend routing, and fails loudly if the anchor moved in another Ray version.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import math
import os
import re
import shlex
import socket
import sys
from dataclasses import dataclass, field
from typing import Callable, Mapping

from serve_apps.priority import set_niceness

ANCHOR = "    # Per-backend path ACLs"
TABLE = "rf_desk_passed"
WRAPPER = "haproxy-rayfin"      # the script Serve runs as its HAProxy binary
MAP_FILE = "rates.map"          # in the cluster's HAProxy directory
# Set by `install_edge` for every process of the cluster: the quota broker finds the map here.
MAP_ENV = "RAYFIN_HAPROXY_EDGE_MAP"
SOCKET_ENV = "RAY_SERVE_HAPROXY_SOCKET_PATH"
# A storm: refusals in the window past STORM_FACTOR x the desk's limit, or past STORM_CAP_PER_S a
# second; its further refusals are then held about HOLD_S each (`tarpit`) before the same 429.
STORM_FACTOR = 4
STORM_CAP_PER_S = 200
HOLD_S = 1
HOLDS = 5                       # hold backends, 0.5 to 1.5 x HOLD_S
HOLD_BACKEND = "rf_hold_"
ROUTER_ACTION = "lua.route_via_ingress_request_router"   # Serve's ingress request router, when on
# The second, short window: a credential's passes per SHORT_S as well, so a flood's onset cannot
# spend a whole window's limit at once. Its limit is the map entry `<credential hash>_1s`.
SHORT_S = 1
SHORT_KEY = "_1s"
SHORT_TABLE = "rf_desk_passed_1s"
NO_LIMIT = 1_000_000_000        # a credential without a short entry: no per-second limit


@dataclass(frozen=True)
class DeskRate:
    rate: float          # requests/s of the desk's serving quota
    burst: float         # bucket size

    def limit(self, window_s: float, slack: float) -> int:
        """Requests the edge lets through per window: never below what the quota allows."""
        return max(1, math.ceil(slack * (self.burst + self.rate * window_s)))


def credential_key(token: str) -> str:
    """The map key of a desk credential: lower-case hex SHA-256, as the HAProxy rule computes it."""
    return hashlib.sha256(token.encode()).hexdigest()


def has_short_window(window_s: float) -> bool:
    """Whether a window is long enough to be given the per-SHORT_S limit as well."""
    return int(window_s) > SHORT_S


def map_limits(rates: Mapping[str, DeskRate], window_s: float = 10.0, slack: float = 2.0) -> dict[str, int]:
    """The map's entries: each credential's limit per window, and (for a window longer than
    SHORT_S) its limit per SHORT_S under `<hash>_1s`. Both bound the same token bucket, so
    neither refuses a desk within its quota."""
    _check(window_s, slack)
    out: dict[str, int] = {}
    for k, r in rates.items():
        out[k] = r.limit(window_s, slack)
        if has_short_window(window_s):
            out[k + SHORT_KEY] = r.limit(SHORT_S, slack)
    return out


def rate_map(rates: Mapping[str, DeskRate], window_s: float = 10.0, slack: float = 2.0) -> str:
    """Map file content: `<key> <limit>` lines (`map_limits`), sorted."""
    return _map_text(map_limits(rates, window_s, slack))


def _map_text(limits: Mapping[str, int]) -> str:
    return "".join(f"{k} {v}\n" for k, v in sorted(limits.items()))


def map_commands(old: Mapping[str, DeskRate], new: Mapping[str, DeskRate], map_path: str,
                 window_s: float = 10.0, slack: float = 2.0) -> list[str]:
    """Runtime API commands turning the map for `old` into the map for `new` (no reload)."""
    return limit_commands(map_limits(old, window_s, slack), map_limits(new, window_s, slack), map_path)


def limit_commands(old: Mapping[str, int], new: Mapping[str, int], map_path: str) -> list[str]:
    """Runtime API commands turning a map of limits `old` into `new`: deletions first, then
    additions and changes, each key once."""
    cmds = [f"del map {map_path} {k}" for k in sorted(set(old) - set(new))]
    for k in sorted(new):
        if k not in old:
            cmds.append(f"add map {map_path} {k} {new[k]}")
        elif old[k] != new[k]:
            cmds.append(f"set map {map_path} {k} {new[k]}")
    return cmds


def parse_show_map(text: str) -> dict[str, int]:
    """The entries of HAProxy's `show map <file>` answer (`<ref> <key> <value>` a line)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("0x") and parts[2].isdigit():
            out[parts[1]] = int(parts[2])
    return out


def frontend_rules(map_path: str, window_s: float = 10.0, retry_after_s: int = 1, *,
                   storm_factor: int = STORM_FACTOR, storm_cap_per_s: int = STORM_CAP_PER_S,
                   hold_s: int = HOLD_S) -> str:
    """The `http-request` lines for Serve's `http_frontend` (see the module docstring)."""
    w = int(window_s)
    if w < 1 or w != window_s:
        raise ValueError(f"window_s must be a whole number of seconds >= 1; got {window_s}")
    if retry_after_s < 1:
        raise ValueError(f"retry_after_s must be >= 1; got {retry_after_s}")
    if storm_factor < 1:
        raise ValueError(f"storm_factor must be >= 1 (refusals per window, in limits); got {storm_factor}")
    if storm_cap_per_s < 1:
        raise ValueError(f"storm_cap_per_s must be >= 1 refusal a second; got {storm_cap_per_s}")
    if not 0 <= hold_s <= 30:
        raise ValueError(f"hold_s must be 0 to 30 seconds (0: no holding); got {hold_s}")
    answer = _answer(retry_after_s)
    short_track, short_over = "", ""
    if has_short_window(w):
        # The short window: its own table and limit; a credential whose map has no short entry
        # reads NO_LIMIT. Two `acl rf_over_now` lines: over either limit is over.
        short_track = (
            f"    http-request set-var(txn.rf_limit1) var(txn.rf_key),concat({SHORT_KEY}),map({map_path},{NO_LIMIT}) if rf_predict rf_known\n"
            f"    http-request track-sc1 var(txn.rf_key) table {SHORT_TABLE} if rf_predict rf_known\n")
        short_over = "    acl rf_over_now sc_gpc0_rate(1),sub(txn.rf_limit1) ge 0\n"
    held = "{ var(txn.rf_hold) -m bool }"   # the one decision to hold, read by both rules below
    storm, calm, hold = "", "", ""
    if hold_s:
        # A storm's refusal goes to one of the HOLDS backends at random, each holding it a
        # different time (`storm_backends`): the holds of a client's connections drift apart, so
        # their refusals reach HAProxy spread out, not all at once every hold_s.
        storm = (
            f"    http-request set-var(txn.rf_storm) var(txn.rf_limit),mul({storm_factor}) if rf_predict rf_known\n"
            "    acl rf_storm sc_gpc1_rate(0),sub(txn.rf_storm) gt 0\n"
            # The cap path also needs more refusals than the desk's limit: held passes count as
            # refusals, and a desk back within its quota sends no more than the limit in a window
            # (as the rate counter reads it), so its own held requests cannot keep its storm going.
            f"    acl rf_storm_cap sc_gpc1_rate(0) gt {storm_cap_per_s * w}\n"
            "    acl rf_beyond sc_gpc1_rate(0),sub(txn.rf_limit) gt 0\n"
            # Decided here, before a passed request is counted: `use_backend` is evaluated after
            # every http-request rule, when a request that just passed may read as over the limit.
            # While the credential storms, every request of it is held, those under its limit too:
            # its quota is spent many times over, and what it would pass lands on the replica that
            # serves the other desks (docs/serving.md, "the storming desk's passes").
            "    http-request set-var(txn.rf_hold) bool(1) if rf_predict rf_known rf_storm || "
            "rf_predict rf_known rf_storm_cap rf_beyond\n"
            # A pass held in a storm is a refusal like any other: counted, and not logged.
            f"    http-request sc-inc-gpc1(0) if rf_predict rf_known !rf_over {held}\n"
            f"    http-request set-log-level silent if rf_predict rf_known !rf_over {held}\n")
        calm = f" !{held}"
        hold = f"    use_backend {HOLD_BACKEND}%[rand({HOLDS})] if {held}\n"
    return (
        "    # rayfin: per-desk refusal at the ingress (serve_apps/haproxy_edge.py)\n"
        "    acl rf_predict path_end :predict\n"
        "    http-request set-var(txn.rf_key) req.hdr(authorization),word(2,' '),sha2(256),hex,lower if rf_predict\n"
        f"    http-request set-var(txn.rf_limit) var(txn.rf_key),map({map_path}) if rf_predict\n"
        "    acl rf_known var(txn.rf_limit) -m found\n"
        f"    http-request track-sc0 var(txn.rf_key) table {TABLE} if rf_predict rf_known\n"
        + short_track +
        "    acl rf_over_now sc_gpc0_rate(0),sub(txn.rf_limit) ge 0\n"
        + short_over +
        # Read off the counters once: HAProxy's threads may move them between two rules, and a
        # request read as over by one rule and under by the next would pass uncounted, or be
        # counted both ways. Every rule below reads the one decision.
        "    http-request set-var(txn.rf_over) bool(1) if rf_predict rf_known rf_over_now\n"
        "    acl rf_over var(txn.rf_over) -m bool\n"
        # A refusal is counted in the table (gpc1, `refusals`) and not logged line by line: with
        # Serve's metrics on, every logged request is one more line for the HAProxyManager's
        # Python collector to parse, which cost as much CPU per refusal as HAProxy itself.
        "    http-request sc-inc-gpc1(0) if rf_predict rf_known rf_over\n"
        "    http-request set-log-level silent if rf_predict rf_known rf_over\n"
        + storm +
        f"    http-request return status 429 {answer} if rf_predict rf_known rf_over{calm}\n"
        f"    http-request sc-inc-gpc0(0) if rf_predict rf_known !rf_over{calm}\n"
        + (f"    http-request sc-inc-gpc0(1) if rf_predict rf_known !rf_over{calm}\n" if short_over else "")
        + hold
    )


def _answer(retry_after_s: int) -> str:
    """What follows `return status 429` / `tarpit deny_status 429`: the edge's refusal."""
    body = '{"error":"rate limit exceeded","reason":"requests_per_s","refused_by":"edge"}'
    return (f"content-type application/json hdr Retry-After {retry_after_s} "
            f"hdr X-Rayfin-Edge haproxy string '{body}'")


def storm_backends(retry_after_s: int = 1, hold_s: int = HOLD_S) -> str:
    """The backends a storm's refusals are held in: HOLDS of them, holding 0.5 to 1.5 x hold_s
    (mean hold_s) before the same 429 as the frontend's; none with hold_s 0."""
    if not hold_s:
        return ""
    out = []
    for i in range(HOLDS):
        ms = round(1000 * hold_s * (0.5 + i / (HOLDS - 1)))
        out.append(f"backend {HOLD_BACKEND}{i}\n"
                   f"    timeout tarpit {ms}\n"
                   f"    http-request tarpit deny_status 429 {_answer(retry_after_s)}\n")
    return "".join(out)


def edge_backends(window_s: float = 10.0, retry_after_s: int = 1, hold_s: int = HOLD_S) -> str:
    """Every backend the frontend rules refer to: the table and the storm holds."""
    return table_backend(window_s) + storm_backends(retry_after_s, hold_s)


def table_backend(window_s: float = 10.0, size: int = 10_000) -> str:
    """The stick tables that count each credential's passed (and refused) requests: per window,
    and per SHORT_S for a longer window."""
    out = (f"backend {TABLE}\n"
           f"    stick-table type string len 64 size {size} expire {max(30, 3 * int(window_s))}s "
           f"store gpc0,gpc0_rate({int(window_s)}s),gpc1,gpc1_rate({int(window_s)}s)\n")
    if has_short_window(window_s):
        out += (f"backend {SHORT_TABLE}\n"
                f"    stick-table type string len 64 size {size} expire 30s store gpc0,gpc0_rate({SHORT_S}s)\n")
    return out


def patch_template(template: str, map_path: str, window_s: float = 10.0, retry_after_s: int = 1,
                   hold_s: int = HOLD_S) -> str:
    """Serve's HAProxy template with the rules in its frontend and the table appended."""
    if ANCHOR not in template:
        raise RuntimeError("Serve's HAProxy template has no line starting with "
                           f"{ANCHOR.strip()!r}; this Ray version lays it out differently: "
                           "to fix, update serve_apps/haproxy_edge.ANCHOR for it")
    rules = frontend_rules(map_path, window_s, retry_after_s, hold_s=hold_s)
    return template.replace(ANCHOR, rules + ANCHOR, 1) + "\n" + edge_backends(window_s, retry_after_s, hold_s)


def _check(window_s: float, slack: float) -> None:
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0; got {window_s}")
    if slack < 1:
        raise ValueError(f"slack must be >= 1 (below 1 the edge would refuse within quota); got {slack}")


def desk_rates(config) -> dict[str, DeskRate]:
    """Map entries from a RayfinConfig: each desk's credential hash and its serving rate/burst."""
    return {d.credential_sha256: DeskRate(float(d.serving.requests_per_s), float(d.serving.burst))
            for d in config.desks if getattr(d, "credential_sha256", None)}


def install_edge(run_dir: str, rates: Mapping[str, DeskRate], real_binary: str, python: str,
                 window_s: float = 10.0, slack: float = 2.0, hold_s: int = HOLD_S,
                 niceness: int | None = None) -> dict[str, str]:
    """Write the rate map and the wrapper into `run_dir`; the variables to set before Serve starts.
    `niceness` (`serve.replica_niceness`): what the wrapper sets before it becomes HAProxy, which
    Serve otherwise starts at the nice 15 of the Ray worker that runs it (serve_apps/priority.py)."""
    map_path = os.path.join(run_dir, MAP_FILE)
    write_map(map_path, rates, window_s, slack)
    script = os.path.join(run_dir, WRAPPER)
    with open(script, "w") as f:
        f.write(wrapper_script(python, real_binary, map_path, window_s, hold_s, niceness))
    os.chmod(script, 0o755)
    return {"RAY_SERVE_HAPROXY_BINARY_PATH": script, MAP_ENV: map_path}


def write_map(map_path: str, rates: Mapping[str, DeskRate], window_s: float = 10.0, slack: float = 2.0) -> None:
    """The map file, replaced whole (a reload never reads half a file)."""
    _write_limits(map_path, map_limits(rates, window_s, slack))


def _write_limits(map_path: str, limits: Mapping[str, int]) -> None:
    tmp = f"{map_path}.tmp"
    with open(tmp, "w") as f:
        f.write(_map_text(limits))
    os.replace(tmp, map_path)


# ---- runtime updates: quota changes reach a running HAProxy without a restart ---------------------

AdminCall = Callable[[str, str], str]     # (socket path, command) -> HAProxy's answer


def admin_target(address: str) -> tuple[int, str | tuple[str, int]]:
    """(socket family, address) of an HAProxy runtime API address, in HAProxy's own spelling:
    `unix@/path`, `ipv4@host:port`, or a bare socket path (what Serve's variable holds)."""
    if address.startswith("ipv4@"):
        host, _, port = address[len("ipv4@"):].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not an HAProxy ipv4@HOST:PORT address: {address!r}")
        return socket.AF_INET, (host, int(port))
    path = address[len("unix@"):] if address.startswith("unix@") else address
    if not path.startswith("/"):
        raise ValueError(f"not an HAProxy runtime API address (unix@/PATH or ipv4@HOST:PORT): {address!r}")
    return socket.AF_UNIX, path


def admin_call(sock_path: str, command: str, timeout_s: float = 2.0) -> str:
    """One command on HAProxy's admin socket (non-interactive mode: it answers, then closes).
    `sock_path`: a socket path, or an address as `admin_target` reads it."""
    family, target = admin_target(sock_path)
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(target)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def admin_sockets(socket_path: str) -> list[str]:
    """The admin sockets of the HAProxies Serve runs for `RAY_SERVE_HAPROXY_SOCKET_PATH`: Serve
    puts each under its node id (`<dir>/<node id>/<name>`); the path itself if it exists."""
    d, name = os.path.split(socket_path)
    found = sorted(glob.glob(os.path.join(glob.escape(d), "*", glob.escape(name))))
    return found + ([socket_path] if os.path.exists(socket_path) else [])


@dataclass(frozen=True)
class EdgeCounts:
    """One credential's counters in the edge's stick table: requests passed on (gpc0) and refused
    at the edge (gpc1) since its entry was created (entries expire after 3 windows idle)."""

    passed: int
    refused: int


def parse_show_table(text: str) -> dict[str, EdgeCounts]:
    """`show table rf_desk_passed` -> {credential hash: EdgeCounts}. Lines look like
    `0x55d0c8: key=<hash> use=0 exp=29000 shard=0 gpc0=110 gpc0_rate(10000)=110 gpc1=290`."""
    out: dict[str, EdgeCounts] = {}
    for line in text.splitlines():
        if line.startswith("#") or " key=" not in line:
            continue
        fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
        out[fields["key"]] = EdgeCounts(passed=int(fields.get("gpc0", 0)), refused=int(fields.get("gpc1", 0)))
    return out


def edge_counts(sockets: list[str], call: Callable[[str, str], str] | None = None,
                failed: dict[str, str] | None = None) -> dict[str, EdgeCounts]:
    """The edge's counters per credential hash, summed over the HAProxies behind `sockets` (one
    per node). What the silent refusals leave to count them by: they are not in the access log.
    With `failed` given, a socket that does not answer is recorded there ({socket: error}) and
    skipped, so one stale socket does not hide the others; without it, the error is raised."""
    call = call or admin_call
    total: dict[str, EdgeCounts] = {}
    for sock in sockets:
        try:
            answer = call(sock, f"show table {TABLE}")
        except OSError as exc:
            if failed is None:
                raise
            failed[sock] = f"{type(exc).__name__}: {exc}"
            continue
        for key, c in parse_show_table(answer).items():
            had = total.get(key, EdgeCounts(0, 0))
            total[key] = EdgeCounts(had.passed + c.passed, had.refused + c.refused)
    return total


def backend_name(app: str) -> str:
    """The HAProxy backend Serve writes for an HTTP application (Ray 2.60:
    `HAProxyManager._generate_backend_name` and `get_safe_name`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"http-{app}".replace("#", "-").replace("/", "."))


@dataclass(frozen=True)
class BackendState:
    """One backend in HAProxy's `show stat`: its replicas (primary servers) up and in all, and
    whether its backup (Serve's Python proxy, used only while no replica is up) is up."""

    primary_up: int
    primary: int
    backup_up: int

    @property
    def direct(self) -> bool:
        """Requests go straight to a replica's own HTTP server, not through the backup proxy."""
        return self.primary_up > 0


def backend_states(stat_csv: str) -> dict[str, BackendState]:
    """Per backend, from the CSV answer of `show stat` (header `# pxname,svname,...`). A server
    counts as up while its status reads UP (also "UP 1/2", up but failing checks); DOWN, "DOWN
    1/2" (rising), MAINT and "no check" do not."""
    lines = [ln for ln in stat_csv.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("#"):
        return {}
    cols = lines[0].lstrip("# ").split(",")
    try:
        px, sv, status, bck = (cols.index(c) for c in ("pxname", "svname", "status", "bck"))
    except ValueError:
        return {}
    counts: dict[str, list[int]] = {}
    for line in lines[1:]:
        f = line.split(",")
        if len(f) <= max(px, sv, status, bck) or f[sv] in ("FRONTEND", "BACKEND"):
            continue
        c = counts.setdefault(f[px], [0, 0, 0])
        up = f[status].startswith("UP")
        if f[bck] == "1":
            c[2] += up
        else:
            c[0] += up
            c[1] += 1
    return {name: BackendState(*c) for name, c in counts.items()}


def count_deltas(before: Mapping[str, EdgeCounts], now: Mapping[str, EdgeCounts]) -> dict[str, EdgeCounts]:
    """What each credential's counters rose by between two reads. A table entry expires after 3
    windows without requests and starts again from 0 when the desk comes back: a counter below
    its last reading counts from 0. Only credentials with something new are returned."""
    out: dict[str, EdgeCounts] = {}
    for key, c in now.items():
        b = before.get(key, EdgeCounts(0, 0))
        passed = c.passed - b.passed if c.passed >= b.passed else c.passed
        refused = c.refused - b.refused if c.refused >= b.refused else c.refused
        if passed or refused:
            out[key] = EdgeCounts(passed, refused)
    return out


class EdgeCountsPoller:
    """Turns the table's running counters into increments: `poll()` reads (`read`, e.g.
    `lambda: edge_counts(sockets)`) and returns what rose since the last poll. The first poll is
    the baseline and returns nothing: what the table held before this poller started was counted
    by whoever watched it then (a broker replaced by a redeploy), so it is not counted twice."""

    def __init__(self, read: Callable[[], dict[str, EdgeCounts]]) -> None:
        self._read = read
        self._last: dict[str, EdgeCounts] | None = None

    def poll(self) -> dict[str, EdgeCounts]:
        now = self._read()
        delta = {} if self._last is None else count_deltas(self._last, now)
        self._last = now
        return delta


def record_edge_counts(delta: Mapping[str, EdgeCounts], desks: Mapping[str, str], sink) -> None:
    """Increments to `rayfin_serve_edge_requests{desk, outcome=passed|refused}` on a MetricsSink;
    `desks`: credential hash -> desk name (a hash not in it is skipped: not a desk's)."""
    for key, c in delta.items():
        desk = desks.get(key)
        if desk is None:
            continue
        for outcome, n in (("passed", c.passed), ("refused", c.refused)):
            if n:
                sink.inc("rayfin_serve_edge_requests", n, {"desk": desk, "outcome": outcome})


@dataclass
class EdgeUpdate:
    """What `apply_rates` did: commands sent per socket, and the sockets it could not update
    (partial failure as a value: the map file is rewritten either way, so a reload catches up)."""

    map_path: str
    sent: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def apply_rates(map_path: str, rates: Mapping[str, DeskRate], sockets: list[str],
                window_s: float = 10.0, slack: float = 2.0, call: AdminCall = admin_call,
                write_file: bool = True) -> EdgeUpdate:
    """Make the edge refuse by `rates` now: rewrite the map file, then turn the map each running
    HAProxy holds (read back with `show map`, so whatever it loaded is the starting point) into
    the new one. The edge only refuses, so either order of this and admission's own change is
    safe: for a moment the edge may refuse by the old limit, never admit anything."""
    new = map_limits(rates, window_s, slack)
    if write_file:
        _write_limits(map_path, new)
    update = EdgeUpdate(map_path)
    for sock in sockets:
        try:
            live = parse_show_map(call(sock, f"show map {map_path}"))
            cmds = limit_commands(live, new, map_path)
            for cmd in cmds:
                answer = call(sock, cmd).strip()
                if answer:      # HAProxy answers a map command with nothing when it worked
                    raise RuntimeError(f"{cmd!r}: {answer}")
            update.sent[sock] = cmds
        except (OSError, RuntimeError, ValueError) as exc:
            update.failed[sock] = str(exc)
    return update


def apply_rates_here(rates: Mapping[str, DeskRate], environ: Mapping[str, str] | None = None,
                     call: AdminCall = admin_call) -> EdgeUpdate | None:
    """`apply_rates` for the cluster this process belongs to (the variables `install_edge` and
    the ingress set); None where no HAProxy edge was installed."""
    env = os.environ if environ is None else environ
    map_path = env.get(MAP_ENV)
    if not map_path or not os.path.isdir(os.path.dirname(map_path)):
        return None
    sockets = admin_sockets(env[SOCKET_ENV]) if env.get(SOCKET_ENV) else []
    return apply_rates(map_path, rates, sockets, call=call)


def apply_rates_at(admin: str, map_path: str, rates: Mapping[str, DeskRate],
                   call: AdminCall = admin_call) -> EdgeUpdate:
    """`apply_rates` for one HAProxy edge at a configured address (`serve.edge_runtime`: the
    KubeRay head pod's sidecar, reached on a shared volume or loopback), not found on this node.
    The map file is rewritten where this process sees its folder (a volume it shares with that
    HAProxy); elsewhere the runtime API alone carries the change."""
    return apply_rates(map_path, rates, [admin], call=call, write_file=os.path.isdir(os.path.dirname(map_path)))


# ---- the wrapper Serve runs as its HAProxy binary (RAY_SERVE_HAPROXY_BINARY_PATH) -------------

def wrapper_script(python: str, real_binary: str, map_path: str | None, window_s: float = 10.0,
                   hold_s: int = HOLD_S, niceness: int | None = None) -> str:
    """A shell script for RAY_SERVE_HAPROXY_BINARY_PATH: patch the -f config (with a map: the
    edge's rules), set the niceness (with one), then exec HAProxy."""
    q = shlex.quote
    nice = "" if niceness is None else f" --nice {int(niceness)}"
    rules = "" if map_path is None else f" --map {q(map_path)} --window {window_s:g} --hold {int(hold_s)}"
    return f"#!/bin/sh\nexec {q(python)} -m serve_apps.haproxy_edge --real {q(real_binary)}{rules}{nice} -- \"$@\"\n"


def install_niceness_wrapper(run_dir: str, real_binary: str, python: str, niceness: int) -> dict[str, str]:
    """Without the edge, the wrapper only sets HAProxy's niceness (`serve.replica_niceness`): at
    Ray's worker nice 15 it would lose its core to the replicas it forwards to, at 0, whenever
    they are busy (serve_apps/priority.py)."""
    script = os.path.join(run_dir, WRAPPER)
    with open(script, "w") as f:
        f.write(wrapper_script(python, real_binary, None, niceness=niceness))
    os.chmod(script, 0o755)
    return {"RAY_SERVE_HAPROXY_BINARY_PATH": script}


def patch_config_file(path: str, map_path: str, window_s: float = 10.0, hold_s: int = HOLD_S) -> bool:
    """Insert the rules into a rendered config in place; False if they are there already.

    A held refusal goes on through Serve's later http-request rules to its `use_backend`; with
    an ingress request router in the config those include a Lua call to Serve's Python router
    (and its 503 when that fails), which an immediate refusal never reaches. So with a router in
    the rendered config the storm is refused at once, not held."""
    with open(path) as f:
        text = f.read()
    if "acl rf_predict" in text:
        return False
    if ROUTER_ACTION in text:
        hold_s = 0
    with open(path, "w") as f:
        f.write(patch_template(text, map_path, window_s, hold_s=hold_s))
    return True


def main(argv: list[str] | None = None) -> None:
    """`python -m serve_apps.haproxy_edge --real BIN [--map PATH] [--nice N] -- <haproxy arguments>`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(prog="serve_apps.haproxy_edge")
    ap.add_argument("--real", required=True, help="the HAProxy binary to run")
    ap.add_argument("--map", default=None, help="the rate map file (rate_map); none: no edge rules")
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--hold", type=int, default=HOLD_S, help="seconds a storm's refusal is held (0: never)")
    ap.add_argument("--nice", type=int, default=None, help="niceness to run HAProxy at (serve.replica_niceness)")
    ns = ap.parse_args(argv[:split])
    rest = argv[split + 1:]
    for i, a in enumerate(rest[:-1] if ns.map else ()):
        if a == "-f":
            if not os.path.exists(ns.map):
                open(ns.map, "a").close()      # an empty map: nobody tracked until quotas arrive
            patch_config_file(rest[i + 1], ns.map, ns.window, ns.hold)
    if ns.nice is not None:
        # One thread here, and exec keeps it: HAProxy starts at this niceness.
        got = set_niceness(ns.nice)
        if got.refused:
            print(f"serve_apps.haproxy_edge: {got.refused}", file=sys.stderr)
    os.execv(ns.real, [ns.real, *rest])


if __name__ == "__main__":
    main()
