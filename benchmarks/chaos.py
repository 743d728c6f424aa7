"""Chaos benchmark: nothing accepted is lost, nothing runs twice, no GPU leaks.

    python -m benchmarks.chaos --jobs 200 --kills 10 --out result.json

On the local multi-node cluster (configs/local.yaml by default): submits `--jobs` short jobs
from every desk while killing the controller `--kills` times and removing and re-adding a
worker node (an NVLink island), then waits for every job to end. Each job appends its id to a
marker file when it starts, so a second start is seen.

JSON: {"accepted", "finished", "lost", "duplicated", "leaked_gpus", "recovery_p99_s", ...}
    lost         accepted jobs that never reached a terminal state or vanished from the ledger
    duplicated   jobs that started more often than their attempts (1 + requeues) allow
    leaked_gpus  GPUs still reserved by rayfin groups/runners once everything ended
    recovery_s   kill -> first answer from the restarted controller (p50/p99/max)
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def chaos_job(marker: str, job_tag: str, seconds: float) -> str:
    with open(marker, "a") as f:
        f.write(job_tag + "\n")
    time.sleep(seconds)
    return job_tag


def _ping(controller, timeout: float = 2.0):
    import ray

    try:
        return ray.get(controller.ping.remote(), timeout=timeout)["value"]
    except Exception:  # noqa: BLE001 - down or restarting
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--config", default="configs/local.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", default="chaos_result.json")
    a = ap.parse_args(argv)

    import ray

    from rayfin.config import load_config
    from rayfin.errors import QuotaExceeded
    from rayfin.sdk import connect
    from rayfin.up import bring_up, with_ledger

    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="rayfin-chaos-"))
    marker = str(work / "starts.txt")
    cfg = with_ledger(load_config(a.config), str(work / "ledger.db"))
    t0 = time.monotonic()
    from rayfin.cluster import free_port

    run = bring_up(cfg, serve=False, dashboard=True, dashboard_port=free_port(), metrics_port=free_port(),
                   serve_port=free_port(), access_log=False)
    print(f"cluster up in {time.monotonic() - t0:.1f}s ({cfg.cluster.total_gpus} GPUs)", flush=True)
    try:
        clients = {d.name: connect(d.name, f"{d.name}-demo-token", url=run.api_url) for d in cfg.desks}
        admin = connect(None, "admin-demo-token", url=run.api_url)
        accepted: dict[str, object] = {}
        refused = 0
        recoveries: list[float] = []
        chaos_log: list[str] = []

        def submitter() -> None:
            nonlocal refused
            desks = list(clients)
            for i in range(a.jobs):
                desk = desks[i % len(desks)]
                gpus = rng.choice([1, 1, 2, 2, 4])
                try:
                    job = clients[desk].submit(chaos_job, marker, f"j{i}", rng.uniform(0.5, 3.0), gpus=gpus,
                                               retries=3, name=f"chaos-{i}")
                    accepted[job.job_id] = job
                except QuotaExceeded:
                    refused += 1
                time.sleep(rng.uniform(0.0, 0.15))

        def chaos() -> None:
            victim_island = cfg.cluster.nodes[0].name + "-i0"
            for k in range(a.kills):
                time.sleep(rng.uniform(2.0, 5.0))
                before = _ping(run.controller)
                t = time.monotonic()
                ray.kill(run.controller, no_restart=False)
                while True:
                    after = _ping(run.controller)
                    if after is not None and (before is None or after["pid"] != before["pid"]):
                        break
                    time.sleep(0.05)
                recoveries.append(time.monotonic() - t)
                chaos_log.append(f"kill {k + 1}: recovered in {recoveries[-1]:.2f}s ({after['recovery']})")
                print(chaos_log[-1], flush=True)
                if k == a.kills // 2:
                    run.local.remove_island(victim_island, graceful=False)
                    chaos_log.append(f"removed node of island {victim_island}")
                    print(chaos_log[-1], flush=True)
                    time.sleep(8.0)
                    run.local.add_island(victim_island)
                    chaos_log.append(f"re-added node of island {victim_island}")
                    print(chaos_log[-1], flush=True)

        # Ray adds nodes only from the main thread (it installs signal handlers): chaos runs here.
        sub = threading.Thread(target=submitter, daemon=True)
        sub.start()
        chaos()
        sub.join()
        deadline = time.monotonic() + a.timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {j.job_id: j.job_id and admin.job(j.job_id).status().state.value for j in accepted.values()}
            if all(s in ("SUCCEEDED", "FAILED", "CANCELLED", "PREEMPTED") for s in states.values()):
                break
            time.sleep(2.0)
        statuses = {jid: admin.job(jid).status() for jid in accepted}
        starts = Path(marker).read_text().splitlines() if Path(marker).exists() else []
        counts: dict[str, int] = {}
        for tag in starts:
            counts[tag] = counts.get(tag, 0) + 1
        duplicated = 0
        for st in statuses.values():
            tag = "j" + st.name.split("-")[-1]
            if counts.get(tag, 0) > 1 + st.attempts:
                duplicated += 1
        finished = sum(1 for s in statuses.values() if s.state.terminal)
        time.sleep(2.0)
        leaked = _leaked_gpus(cfg)
        rec = np.array(recoveries) if recoveries else np.array([0.0])
        result = {
            "accepted": len(accepted), "refused_at_submit": refused, "finished": finished,
            "succeeded": sum(1 for s in statuses.values() if s.state.value == "SUCCEEDED"),
            "failed": sum(1 for s in statuses.values() if s.state.value == "FAILED"),
            "lost": len(accepted) - finished, "duplicated": duplicated, "leaked_gpus": leaked,
            "retried_jobs": sum(1 for s in statuses.values() if s.attempts > 0),
            "kills": len(recoveries), "recovery_p50_s": float(np.percentile(rec, 50)),
            "recovery_p99_s": float(np.percentile(rec, 99)), "recovery_max_s": float(rec.max()),
            "wall_s": time.monotonic() - t0, "chaos": chaos_log,
        }
        Path(a.out).write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in result.items() if k != "chaos"}, indent=2))
        ok = result["lost"] == 0 and result["duplicated"] == 0 and result["leaked_gpus"] == 0
        print("targets: lost = duplicated = leaked_gpus = 0:", "met" if ok else "MISSED")
        return 0 if ok else 1
    finally:
        run.shutdown()


def _leaked_gpus(cfg) -> float:
    """GPUs held by rayfin placement groups that are not REMOVED, plus GPUs not free in Ray."""
    import ray
    from ray.util.placement_group import placement_group_table

    held = 0.0
    for info in placement_group_table().values():
        if (info.get("name") or "").startswith("rayfin-job-") and info.get("state") not in ("REMOVED",):
            held += sum(b.get("GPU", 0.0) for b in info.get("bundles", {}).values())
    total = ray.cluster_resources().get("GPU", 0.0)
    free = ray.available_resources().get("GPU", 0.0)
    return max(held, total - free)


if __name__ == "__main__":
    raise SystemExit(main())
