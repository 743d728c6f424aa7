"""Benchmark of the serving gateway: throughput cost, isolation under a flood, quota accuracy.

    python -m benchmarks.serve_quota --out result.json [--trace PATH --rate-scale 0.5]

Starts a private Ray cluster and Serve on loopback, deploys one option-pricer model reachable
both through the gateway and directly (/direct/option-pricer: a plain model deployment with no
gate, its own application), then measures ("through the gateway" is, with --layout gated, the
default, the model's own gated application at /v1/models/option-pricer:predict: quota, auth and
validation in the model replica; with --layout hop, the old gateway -> model hop):

- gateway_throughput_ratio: closed-loop requests/s through the gateway / directly, same
  concurrency, rounds alternated (direct, gateway, direct, ...) so machine noise hits both;
- quiet_p99_alone_ms, quiet_p99_flood_ms, quiet_p99_ratio: open-loop Poisson arrivals of a
  "quiet" desk at half its quota, alone, then while a "flood" desk sends at 10x its quota;
- flood_admitted <= flood_allowed = burst + rate * (flood duration);
- with --trace: arrivals replayed from an inference trace (arrival_time_s column), time-scaled
  by --rate-scale, requests dealt to desks round-robin; accepted / refused per desk.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import aiohttp

from rayfin.config import hash_token, parse_config
from serve_apps.schemas import example_body
from rayfin.cluster import free_port

PRICER = "/v1/models/option-pricer:predict"
DIRECT = "/direct/option-pricer"




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
        "serve": {"port": port, "gateway_replicas": args.gateway_replicas, "models": [
            {"name": "option-pricer", "kind": "option_pricer", "owner": "bench", "num_cpus_per_replica": 0,
             "max_batch_size": 32, "batch_wait_timeout_s": 0.002}]},
    })


def auth(desk: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {desk}-bench-token", "Content-Type": "application/json"}


BODY = json.dumps(example_body("option_pricer")).encode()


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
                    t0: float, results: list) -> None:
    """Send one request at each time (seconds after t0), without waiting for earlier ones."""
    async def one(at: float):
        await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
        sent = time.perf_counter()
        try:
            async with session.post(url, data=BODY, headers=headers) as r:
                await r.read()
                results.append((sent, r.status, time.perf_counter() - sent))
        except (aiohttp.ClientError, asyncio.TimeoutError):
            results.append((sent, 0, time.perf_counter() - sent))

    await asyncio.gather(*[one(at) for at in times])


def poisson(rate: float, seconds: float, rng: random.Random) -> list[float]:
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append(t)


def p99_ms(results: list) -> float:
    lat = sorted(x[2] for x in results if x[1] == 200)
    if not lat:
        return float("nan")
    return 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]


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
        for _ in range(20):
            await closed_loop(s, DIRECT, {"Content-Type": "application/json"}, 4, 0.05)
            await closed_loop(s, PRICER, auth("bench"), 4, 0.05)
            break
        direct, gateway = [], []
        for _ in range(args.rounds):
            direct.append(await closed_loop(s, DIRECT, {"Content-Type": "application/json"}, args.concurrency,
                                            args.round_s))
            gateway.append(await closed_loop(s, PRICER, auth("bench"), args.concurrency, args.round_s))
        d_rps = sum(r["requests"] for r in direct) / (args.rounds * args.round_s)
        g_rps = sum(r["requests"] for r in gateway) / (args.rounds * args.round_s)
        out["throughput"] = {"concurrency": args.concurrency, "rounds": args.rounds, "round_s": args.round_s,
                             "direct_rps": [round(r["rps"], 1) for r in direct],
                             "gateway_rps": [round(r["rps"], 1) for r in gateway],
                             "gateway_codes": [r["codes"] for r in gateway]}
        out["gateway_throughput_ratio"] = g_rps / d_rps
        print("throughput", out["throughput"], flush=True)

        rng = random.Random(args.seed)
        quiet_times = poisson(args.quiet_rate / 2, args.phase_s, rng)
        alone: list = []
        await open_loop(s, PRICER, auth("quiet"), quiet_times, time.perf_counter() + 0.05, alone)
        print("quiet alone", _codes(alone), p99_ms(alone), flush=True)
        await asyncio.sleep(1.0)

        flood_times = poisson(args.flood_rate * 10, args.phase_s, rng)
        quiet_times2 = poisson(args.quiet_rate / 2, args.phase_s, rng)
        with_flood: list = []
        flood: list = []
        t0 = time.perf_counter() + 0.05
        await asyncio.gather(open_loop(s, PRICER, auth("quiet"), quiet_times2, t0, with_flood),
                             open_loop(s, PRICER, auth("flood"), flood_times, t0, flood))
        sent = [x[0] for x in flood]
        flood_span = max(sent) - min(sent) if sent else 0.0
        out["quiet"] = {"rate": args.quiet_rate / 2, "quota": args.quiet_rate,
                        "alone_codes": _codes(alone), "flood_codes": _codes(with_flood),
                        "alone_p50_ms": _p50(alone), "flood_p50_ms": _p50(with_flood)}
        out["quiet_p99_alone_ms"] = p99_ms(alone)
        out["quiet_p99_flood_ms"] = p99_ms(with_flood)
        out["quiet_p99_ratio"] = out["quiet_p99_flood_ms"] / out["quiet_p99_alone_ms"]
        out["flood"] = {"offered_rps": args.flood_rate * 10, "quota_rps": args.flood_rate, "burst": args.flood_burst,
                        "sent": len(flood), "span_s": round(flood_span, 3), "codes": _codes(flood)}
        out["flood_admitted"] = sum(1 for x in flood if x[1] == 200)
        print("flood", out["flood"], "quiet", _codes(with_flood), p99_ms(with_flood), flush=True)
        out["flood_allowed"] = int(args.flood_burst + args.flood_rate * flood_span)

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
                                             "refused": sum(1 for x in r if x[1] == 429),
                                             "other": sum(1 for x in r if x[1] not in (200, 429)),
                                             "p99_ms": p99_ms(r)} for d, r in per.items()}}
    return out


def _codes(results: list) -> dict:
    codes: dict = {}
    for x in results:
        codes[str(x[1])] = codes.get(str(x[1]), 0) + 1
    return codes


def _p50(results: list) -> float:
    lat = [x[2] for x in results if x[1] == 200]
    return round(1000 * statistics.median(lat), 2) if lat else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="result.json")
    p.add_argument("--trace", default=None, help="inference trace CSV with an arrival_time_s column")
    p.add_argument("--rate-scale", type=float, default=1.0, help="divide trace arrival times by this (2 = twice as fast)")
    p.add_argument("--trace-s", type=float, default=20.0, help="seconds of (scaled) trace to replay")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round-s", type=float, default=5.0)
    p.add_argument("--phase-s", type=float, default=20.0)
    p.add_argument("--quiet-rate", type=float, default=10.0)
    p.add_argument("--quiet-burst", type=int, default=10)
    p.add_argument("--flood-rate", type=float, default=5.0)
    p.add_argument("--flood-burst", type=int, default=5)
    p.add_argument("--gateway-replicas", type=int, default=2 if (os.cpu_count() or 1) >= 4 else 1)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--layout", choices=("gated", "hop"), default="gated",
                   help="gated: each model's replica admits and predicts (default); hop: gateway -> model")
    args = p.parse_args(argv)

    import ray
    from ray import serve

    from serve_apps.deploy import deploy_from_config

    port = free_port()
    config = bench_config(args, port)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        started = time.time()
        info = deploy_from_config(config, http_port=port, expose_models_http=True, access_log=False,
                                  layout=args.layout)
        result = asyncio.run(measure(info["url"], args))
    finally:
        serve.shutdown()
        ray.shutdown()
    result["setup"] = {"layout": args.layout, "gateway_replicas": args.gateway_replicas, "cpus": os.cpu_count(),
                       "load_avg_1m": os.getloadavg()[0], "wall_s": round(time.time() - started, 1),
                       "targets": {"gateway_throughput_ratio": ">= 0.9", "quiet_p99_ratio": "<= 1.25",
                                   "flood_admitted": "<= flood_allowed"}}
    Path(args.out).write_text(json.dumps(result, indent=2))
    ok = {"gateway_throughput_ratio": result["gateway_throughput_ratio"] >= 0.9,
          "quiet_p99_ratio": result["quiet_p99_ratio"] <= 1.25,
          "flood": result["flood_admitted"] <= result["flood_allowed"]}
    print(f"gateway_throughput_ratio {result['gateway_throughput_ratio']:.3f} (target >= 0.9) "
          f"direct {result['throughput']['direct_rps']} gateway {result['throughput']['gateway_rps']} req/s")
    print(f"quiet p99 alone {result['quiet_p99_alone_ms']:.1f} ms, with flood {result['quiet_p99_flood_ms']:.1f} ms, "
          f"ratio {result['quiet_p99_ratio']:.3f} (target <= 1.25)")
    print(f"flood admitted {result['flood_admitted']} of {result['flood']['sent']} sent; allowed "
          f"{result['flood_allowed']} (burst + rate x {result['flood']['span_s']} s)")
    if "trace" in result:
        for d, c in result["trace"]["per_desk"].items():
            print(f"trace {d}: accepted {c['accepted']} refused {c['refused']} other {c['other']}")
    print("targets met:", ok, f"(load avg {result['setup']['load_avg_1m']:.1f} on {os.cpu_count()} cpus)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
