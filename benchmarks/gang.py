"""Gang benchmark: data-parallel training over 1, 2, 4 and 8 workers, gang start-up, and the
time to tear a gang down after one rank fails.

    python -m benchmarks.gang --out result.json [--workers 1,2,4,8] [--steps 60] [--repeats 3]

On the local multi-node cluster (configs/test.yaml: the `quant` desk borrows across both pools),
through the SDK as a desk would: `jobs.train_signal.train` with DistributedDataParallel (gloo on
CPU; on a GPU machine the same command uses nccl). Per worker count and repeat it records
  steps_per_s / samples_per_s   rank 0's training throughput (global batch = batch x workers)
  start_s                       admission -> every worker running (ledger events 'admitted' -> 'started')
and, for a failing gang of the largest size,
  teardown_s                    the failing rank raises -> no worker actor of the job is alive
  failed_s                      the failing rank raises -> the job is FAILED in the ledger

Simulated GPUs share this machine's CPU cores: on a 2-core machine eight workers split two cores,
so throughput cannot grow with workers. The figures show the cost of the gang machinery (start-up,
all-reduce over gloo, teardown), not a speed-up; run the same command on a GPU machine for that.
Writes JSON, prints a summary, draws a PNG next to the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rayfin.cluster import free_port
from rayfin.config import load_config
from rayfin.sdk import connect
from rayfin.up import bring_up, with_ledger


def failing_rank(bad: int) -> int:
    """Every rank joins a barrier; rank `bad` raises first and says when (wall clock)."""
    import torch.distributed as dist

    from rayfin.runner import job_context  # in the Ray worker that runs this rank

    ctx = job_context()
    if ctx.rank == bad:
        time.sleep(1.0)   # let the others reach the barrier
        print(f"RAISE_AT {time.time():.6f}", flush=True)
        raise RuntimeError("rank fails on purpose")
    dist.barrier()
    return ctx.rank


def _spread(xs: list[float]) -> dict[str, float | None]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _event_ts(admin, job_id: str, kind: str) -> float | None:
    for e in admin.job(job_id).explain()["events"]:
        if e["kind"] == kind:
            return e["ts"]
    return None


def _alive_workers() -> int:
    from ray.util.state import list_actors

    return sum(1 for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10000, raise_on_missing_output=False)
               if a.class_name == "GangWorker")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gang", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/test.yaml")
    ap.add_argument("--desk", default="quant")
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="gang_result.json")
    a = ap.parse_args(argv)
    sizes = [int(w) for w in a.workers.split(",")]
    if any(w < 1 for w in sizes) or a.steps < 1 or a.repeats < 1:
        ap.error("--workers must be positive integers; --steps and --repeats >= 1")

    import jobs.train_signal as train_signal  # lazy: imports torch (seconds)

    work = Path(tempfile.mkdtemp(prefix="rayfin-gang-"))
    cfg = with_ledger(load_config(a.config), str(work / "ledger.db"))
    t0 = time.monotonic()
    run = bring_up(cfg, serve=False, dashboard=True, dashboard_port=free_port(), metrics_port=free_port(),
                   serve_port=free_port(), access_log=False)
    print(f"cluster up in {time.monotonic() - t0:.1f}s ({cfg.cluster.total_gpus} GPUs)", flush=True)
    out: dict = {"config": a.config, "steps": a.steps, "batch": a.batch, "repeats": a.repeats,
                 "cpu_cores": os.cpu_count(), "backend": None, "by_workers": {}, "teardown": {}}
    try:
        desk = connect(a.desk, f"{a.desk}-demo-token", url=run.api_url)
        admin = connect(None, "admin-demo-token", url=run.api_url)
        order = [w for _ in range(a.repeats) for w in sizes]   # interleaved: a noisy spell hits every size
        rows: dict[int, dict[str, list]] = {w: {"steps_per_s": [], "samples_per_s": [], "start_s": []} for w in sizes}
        for w in order:
            job = desk.submit(train_signal.train, gpus=w, workers="per_gpu", comm="allreduce", name=f"dp-{w}",
                              kwargs={"steps": a.steps, "batch": a.batch, "checkpoint_every": 0})
            res = job.results(timeout=900)
            r0 = res[0]
            out["backend"] = r0["backend"]
            admitted, started = _event_ts(admin, job.job_id, "admitted"), _event_ts(admin, job.job_id, "started")
            rows[w]["steps_per_s"].append(r0["steps_per_s"])
            rows[w]["samples_per_s"].append(r0["samples_per_s"])
            rows[w]["start_s"].append(None if admitted is None or started is None else started - admitted)
            print(f"  workers={w}: {r0['steps_per_s']} steps/s, {r0['samples_per_s']} samples/s, "
                  f"start {rows[w]['start_s'][-1]:.2f}s, backend {r0['backend']}", flush=True)
        for w in sizes:
            out["by_workers"][str(w)] = {k: _spread(v) for k, v in rows[w].items()}
        biggest = max(sizes)
        teardown, failed = [], []
        for _ in range(a.repeats if biggest > 1 else 0):
            job = desk.submit(failing_rank, biggest - 1, gpus=biggest, workers="per_gpu", name="fail-one")
            st = job.wait(timeout=600)
            gone_at = None
            for _ in range(600):
                if _alive_workers() == 0:
                    gone_at = time.time()
                    break
                time.sleep(0.1)
            raised = [float(ln.text.split()[1]) for ln in job.logs(rank=biggest - 1) if ln.text.startswith("RAISE_AT")]
            ended = _event_ts(admin, job.job_id, "failed")
            if raised and gone_at is not None:
                teardown.append(gone_at - raised[0])
            if raised and ended is not None:
                failed.append(ended - raised[0])
            print(f"  failing gang of {biggest}: {st.state.value}, workers gone "
                  f"{teardown[-1] if teardown else float('nan'):.2f}s after the raise", flush=True)
        out["teardown"] = {"workers": biggest, "teardown_s": _spread(teardown), "failed_s": _spread(failed)}
    finally:
        run.shutdown()
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({"backend": out["backend"], "cpu_cores": out["cpu_cores"],
                      "steps_per_s": {w: v["steps_per_s"]["median"] for w, v in out["by_workers"].items()},
                      "start_s": {w: v["start_s"]["median"] for w, v in out["by_workers"].items()},
                      "teardown_s": out["teardown"].get("teardown_s", {}).get("median")}, indent=1))
    _plot(out, Path(a.out).with_suffix(".png"))
    return 0


def _plot(out: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ws = sorted(int(w) for w in out["by_workers"])
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, label, col in ((ax[0], "samples_per_s", "samples/s (global batch)", "tab:blue"),
                                  (ax[0].twinx(), "steps_per_s", "steps/s", "tab:orange")):
        med = [out["by_workers"][str(w)][key]["median"] for w in ws]
        lo = [out["by_workers"][str(w)][key]["min"] for w in ws]
        hi = [out["by_workers"][str(w)][key]["max"] for w in ws]
        axis.errorbar(ws, med, yerr=[[m - low for m, low in zip(med, lo)], [h - m for m, h in zip(med, hi)]],
                      marker="o", capsize=3, color=col, label=label)
        axis.set_ylabel(label, color=col)
    ax[0].set_xlabel("workers (median, min-max over repeats)")
    ax[0].set_title(f"DDP throughput ({out['backend']}, {out['cpu_cores']} CPU cores)")
    start = [out["by_workers"][str(w)]["start_s"]["median"] for w in ws]
    ax[1].plot(ws, start, marker="o", label="admission -> all workers running")
    td = out["teardown"].get("teardown_s", {}).get("median")
    if td is not None:
        ax[1].axhline(td, color="red", linestyle="--", label=f"teardown after a failure ({out['teardown']['workers']} w)")
    ax[1].set_xlabel("workers")
    ax[1].set_ylabel("seconds")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
