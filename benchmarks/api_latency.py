"""Request latency of the rayfin API over HTTP next to the old Ray-driver path, on one cluster in
one run.

    python -m benchmarks.api_latency --rounds 20 --per-round 100 --out api_latency.json [--plot api_latency.png]

Both paths answer the same two calls of one desk against the same controller:
    status   a job's status (`Job.status()`)
    usage    the desk's usage row (`Client.usage()`)
  http   the SDK over HTTP: httpx (keep-alive) -> Serve (HAProxy ingress) -> the API replica ->
         the controller actor (what desks use now)
  ray    a Ray driver calling the controller actor (what the SDK did before: `ray.get` on the
         actor method, the reply turned into the same JobStatus)
Rounds alternate the two paths (ABAB, order flipped every round) so that a noisy spell of the
shared machine falls on both alike. Reports median and p99 of every sample, and the spread of
per-round medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from rayfin.cluster import free_port
from rayfin.config import load_config
from rayfin.sdk import JobStatus, connect
from rayfin.up import bring_up, with_ledger


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def summarize(samples: dict[str, dict[str, list[float]]], round_medians: dict[str, dict[str, list[float]]]):
    out = {}
    for call, by_path in samples.items():
        out[call] = {}
        for path, xs in by_path.items():
            rm = round_medians[call][path]
            out[call][path] = {"n": len(xs), "median_ms": _pct(xs, 50), "p99_ms": _pct(xs, 99),
                               "mean_ms": statistics.fmean(xs), "round_median_min_ms": min(rm),
                               "round_median_max_ms": max(rm)}
        out[call]["median_ratio_http_over_ray"] = out[call]["http"]["median_ms"] / out[call]["ray"]["median_ms"]
        out[call]["p99_ratio_http_over_ray"] = out[call]["http"]["p99_ms"] / out[call]["ray"]["p99_ms"]
    return out


def plot(result: dict, path: str) -> None:
    """Per-round medians of each path and call (the spread across rounds), p50 and p99 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = list(result["round_medians_ms"])
    fig, axes = plt.subplots(1, len(calls), figsize=(5 * len(calls), 4))
    for ax, call in zip(np.atleast_1d(axes), calls):
        rm = result["round_medians_ms"][call]
        ax.boxplot([rm["http"], rm["ray"]], tick_labels=["HTTP API", "Ray driver"])
        for x, route in enumerate(("http", "ray"), start=1):
            row = result["summary"][call][route]
            ax.scatter([x], [row["p99_ms"]], marker="v", color="red", label="p99 (all samples)" if x == 1 else None)
        ax.set_title(f"{call}: per-round median latency (ms)")
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/test.yaml")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--out", default="api_latency.json")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--plot-from", default=None, help="only draw --plot from a result JSON of an earlier run")
    a = ap.parse_args(argv)
    if a.plot_from:
        plot(json.loads(Path(a.plot_from).read_text()), a.plot or "api_latency.png")
        return 0

    import ray

    work = Path(tempfile.mkdtemp(prefix="rayfin-apilat-"))
    cfg = with_ledger(load_config(a.config), str(work / "ledger.db"))
    run = bring_up(cfg, serve=False, dashboard=True, dashboard_port=free_port(), metrics_port=free_port(),
                   serve_port=free_port(), access_log=False)
    try:
        token = "fx-demo-token"
        client = connect("fx", token, url=run.api_url)
        job = client.submit_entrypoint("python -V", gpus=1, name="latency-probe")
        job.wait(timeout=120)
        ctl = run.controller

        def ray_status():
            return JobStatus.from_public(ray.get(ctl.status.remote(token, job.job_id))["value"])

        def ray_usage():
            return ray.get(ctl.usage.remote(token, "fx"))["value"]["fx"]

        paths = {"status": {"http": job.status, "ray": ray_status},
                 "usage": {"http": client.usage, "ray": ray_usage}}
        for call in paths.values():               # warm both paths (connections, handles, imports)
            for fn in call.values():
                for _ in range(20):
                    fn()
        samples = {c: {"http": [], "ray": []} for c in paths}
        medians = {c: {"http": [], "ray": []} for c in paths}
        for r in range(a.rounds):
            order = ["http", "ray"] if r % 2 == 0 else ["ray", "http"]
            for call, fns in paths.items():
                for path in order:
                    xs = []
                    for _ in range(a.per_round):
                        t = time.perf_counter()
                        fns[path]()
                        xs.append((time.perf_counter() - t) * 1000)
                    samples[call][path] += xs
                    medians[call][path].append(statistics.median(xs))
        result = {"config": a.config, "rounds": a.rounds, "per_round": a.per_round,
                  "machine": "shared 2-core dev machine (other sessions running)", "summary": summarize(samples, medians),
                  "round_medians_ms": medians}
    finally:
        run.shutdown()
    Path(a.out).write_text(json.dumps(result, indent=2))
    for call, row in result["summary"].items():
        h, r = row["http"], row["ray"]
        print(f"{call:<7} http median {h['median_ms']:.2f} ms p99 {h['p99_ms']:.2f} ms (round medians "
              f"{h['round_median_min_ms']:.2f}-{h['round_median_max_ms']:.2f}) | ray median {r['median_ms']:.2f} ms "
              f"p99 {r['p99_ms']:.2f} ms (round medians {r['round_median_min_ms']:.2f}-{r['round_median_max_ms']:.2f})"
              f" | http/ray median x{row['median_ratio_http_over_ray']:.2f} p99 x{row['p99_ratio_http_over_ray']:.2f}")
    if a.plot:
        plot(result, a.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
