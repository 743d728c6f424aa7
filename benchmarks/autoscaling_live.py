"""Live demo: capacity ahead of a forecast burst on a real local autoscaling cluster.

    python -m benchmarks.autoscaling_live --out live.json

Starts `RAY_FAKE_CLUSTER=1 ray start --head` (Ray's fake multi-node provider) with GPU worker
node types per pool, on free ports, in a new session we own (`--session-file` names it for a
caller that must be able to stop it whatever happens to this process); seeds the planner with a short synthetic history
(a 120 s "day" with an 8-GPU burst in pool fx), then runs the controller loop once a second:
`step(...)` -> `RayAutoscalerAdapter.apply(...)` -> `request_resources`. It records when the
request went out, when a node of pool fx joined, when the burst started, and when the request
was released. Every process of the session is killed at the end, also on SIGTERM (never `ray stop`).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A driver talking to a `ray start` cluster needs token auth; Ray reads this when it is imported,
# so it is set before anything below imports Ray.
os.environ.setdefault("RAY_AUTH_MODE", "token")

from rayfin.autoscale import AutoscaleState, Observations, parse_autoscaling, step  # noqa: E402
from rayfin.cluster import free_port_range  # noqa: E402
from rayfin.controller.autoscale_ray import RayAutoscalerAdapter  # noqa: E402
from rayfin.forecast import ForecastParams, init, update  # noqa: E402

SEASON_S = 120.0
BURST_S = 25.0
HEAD_PORTS = 8           # GCS, client server, node manager, object manager, metrics, agent x2, runtime env
WORKER_PORTS = 100


def fake_cluster_config(gcs: str) -> dict:
    def worker(pool: str) -> dict:
        return {"resources": {"CPU": 1, "GPU": 4, f"rayfin_pool_{pool}": 4}, "node_config": {},
                "min_workers": 0, "max_workers": 2}

    return {
        "cluster_name": "rayfin-fake", "max_workers": 4, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.25,
        "provider": {"type": "fake_multinode", "gcs_address": gcs, "disable_launch_config_check": True},
        "auth": {"ssh_user": "nobody"}, "docker": {},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu_fx": worker("fx"), "gpu_risk": worker("risk")},
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def start_head(workdir: Path, ip: str, port: int, worker_port: int) -> subprocess.Popen:
    """`ray start --head` on ports port..port+7 with workers on worker_port..worker_port+99."""
    cfg = workdir / "autoscaling.json"
    cfg.write_text(json.dumps(fake_cluster_config(f"{ip}:{port}")))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "token"}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}", "--num-cpus=1",
           "--num-gpus=0", "--include-dashboard=false", f"--autoscaling-config={cfg}",
           f"--ray-client-server-port={port + 1}", f"--node-manager-port={port + 2}",
           f"--object-manager-port={port + 3}", f"--metrics-export-port={port + 4}",
           f"--dashboard-agent-listen-port={port + 5}", f"--dashboard-agent-grpc-port={port + 6}",
           f"--runtime-env-agent-port={port + 7}", f"--min-worker-port={worker_port}",
           f"--max-worker-port={worker_port + WORKER_PORTS - 1}", "--block"]
    log = open(workdir / "head.log", "w")
    # A new session: every Ray process it starts (incl. fake worker nodes) carries its id.
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _zombie(pid: int) -> bool:
    """Dead, waiting for its parent to reap it (state Z): holds nothing but its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return False
    return text[text.rindex(")") + 2:].split()[0] == "Z"     # after "pid (comm) "; comm may hold spaces


def session_pids(sid: int) -> list[int]:
    """The live processes of session `sid`. A zombie is not one: a process killed with its parent
    waits, dead, for init to reap it, which took more than the kill's grace on a loaded machine
    (a fresh clone's suite counted 6 and failed the live test; tests/support/procs.session, which
    skips them, found none left)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == sid and not _zombie(int(d)):
                    out.append(int(d))
            except OSError:
                pass
    return out


def kill_session(sid: int, grace_s: float = 5.0) -> int:
    pids = session_pids(sid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + grace_s
        while time.time() < deadline and session_pids(sid):
            time.sleep(0.2)
        pids = session_pids(sid)
        if not pids:
            break
    return len(pids)


def seeded_state(now: float, burst_in_s: float, burst_s: float = BURST_S):
    p = ForecastParams(bin_s=5.0, season_s=SEASON_S, week_seasons=0, kernel_bins=0)
    start = (now + burst_in_s) % SEASON_S
    fs = init(p)
    t = now - 5 * SEASON_S
    while t < now - 1:
        fs = update(fs, t, 8.0 if (t - start) % SEASON_S < burst_s else 0.0)
        t += 1.0
    return AutoscaleState(forecasts={"pool/fx": fs})


def pool_nodes(ray, pool: str) -> int:
    return sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(f"rayfin_pool_{pool}", 0) > 0)


def run(out: Path, burst_in_s: float = 40.0, lead_s: float = 15.0, budget_s: float = 150.0,
        session_file: Path | None = None, burst_s: float = BURST_S) -> dict:
    import ray

    ip = ray.util.get_node_ip_address()
    workdir = Path(tempfile.mkdtemp(prefix="rayfin-live-"))
    t0 = time.time()
    port = free_port_range(HEAD_PORTS)
    head = start_head(workdir, ip, port, free_port_range(WORKER_PORTS))
    if session_file is not None:
        session_file.write_text(str(head.pid))     # its own session: the session id is its pid
    rec: dict = {"workdir": str(workdir), "port": port}
    try:
        deadline = time.time() + 60
        while True:
            try:
                ray.init(address=f"{ip}:{port}", namespace="rayfin-live", log_to_driver=False)
                break
            except Exception:  # noqa: BLE001 - head still starting
                if time.time() > deadline or head.poll() is not None:
                    raise
                time.sleep(1.0)
        rec["head_up_s"] = round(time.time() - t0, 2)
        settings = parse_autoscaling({
            "release_after_s": 5, "quantile": 0.9,
            "forecast": {"bin_s": 5, "season_s": SEASON_S, "week_seasons": 0, "kernel_bins": 0},
            "pools": {"fx": {"lead_time_s": lead_s, "max_gpus": 8}}})
        now = time.time()
        state = seeded_state(now, burst_in_s, burst_s)
        burst_at, burst_end = now + burst_in_s, now + burst_in_s + burst_s
        adapter = RayAutoscalerAdapter()
        log = []
        while time.time() < now + budget_s:
            t = time.time()
            demand = 8.0 if burst_at <= t < burst_end else 0.0
            req, state = step(state, Observations({"fx": demand}), t, settings)
            sent = adapter.apply(req).sent
            nodes = pool_nodes(ray, "fx")
            gpus = req.pools["fx"].gpus
            log.append({"t": round(t - burst_at, 1), "demand": demand, "requested_gpus": gpus,
                        "forecast": round(req.pools["fx"].forecast_gpus, 2), "fx_nodes": nodes, "sent": sent})
            if sent and gpus > 0 and "requested_at" not in rec:
                rec["requested_at"] = round(t - burst_at, 1)
            if nodes and "node_up_at" not in rec:
                rec["node_up_at"] = round(t - burst_at, 1)
            if sent and gpus == 0 and "requested_at" in rec and "released_at" not in rec:
                rec["released_at"] = round(t - burst_at, 1)
            if "released_at" in rec and t > burst_end + 5:
                break
            time.sleep(max(0.0, 1.0 - (time.time() - t)))
        adapter.release()
        rec.update({"times_relative_to_burst_s": True, "lead_time_s": lead_s, "burst_s": burst_s,
                    "node_ready_before_burst": rec.get("node_up_at", 1e9) < 0, "log": log})
    finally:
        try:
            ray.shutdown()
        finally:
            kill_session(head.pid)
            try:
                head.wait(5)  # reap `ray start` itself so it does not linger as a zombie
            except subprocess.TimeoutExpired:
                pass
            rec["left_over_processes"] = len(session_pids(head.pid))
            rec["total_s"] = round(time.time() - t0, 2)
    out.write_text(json.dumps(rec, indent=2))
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="autoscaling_live.json")
    ap.add_argument("--burst-in-s", type=float, default=40.0)
    ap.add_argument("--lead-s", type=float, default=15.0)
    ap.add_argument("--burst-s", type=float, default=BURST_S, help="how long the burst lasts")
    ap.add_argument("--session-file", type=Path, default=None,
                    help="write the `ray start` session's id here as soon as it starts")
    args = ap.parse_args(argv)
    # SIGTERM (a caller's timeout) unwinds through run()'s finally, which kills the session.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    rec = run(Path(args.out), args.burst_in_s, args.lead_s, session_file=args.session_file, burst_s=args.burst_s)
    print(json.dumps({k: v for k, v in rec.items() if k != "log"}, indent=2))
    return 0 if rec.get("node_ready_before_burst") else 1


if __name__ == "__main__":
    sys.exit(main())
