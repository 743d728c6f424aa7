"""The predictive Serve policy scales a real deployment up ahead of a scripted load step.

The forecaster is seeded (policy_kwargs["initial_state"], as the controller would after a
restart) with a short synthetic history: a 120 s "day" in which load steps up to 8 ongoing
requests for 30 s. The step is placed 25 s after the deployment starts. With no request sent,
Serve must decide on more replicas before the step's time (its replica count, starting ones
included, reaches 3: the policy's decision, whatever the machine's speed in starting them);
once they run, the step itself is served by at least three replicas at once.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import wait_for

pytestmark = pytest.mark.integration

ROOT = str(Path(__file__).resolve().parents[2])
SEASON_S = 120.0
BURST_S = 30.0


def _seed_state(now: float, burst_in_s: float) -> dict:
    from rayfin.forecast import ForecastParams, init, update

    p = ForecastParams(bin_s=5.0, season_s=SEASON_S, week_seasons=0, kernel_bins=0)
    start = (now + burst_in_s) % SEASON_S
    fs = init(p)
    t = now - 6 * SEASON_S
    while t < now - 1:
        phase = (t - start) % SEASON_S
        fs = update(fs, t, 8.0 if phase < BURST_S else 0.0)
        t += 1.0
    return fs.to_dict()


@pytest.fixture(scope="module")
def serve_cluster():
    """A private Ray instance with Serve on a free port: (serve, http port). The session
    cluster's Serve (if a test before connected this process to it) is left alone; tests that
    need the session cluster reconnect to it (tests/integration/conftest.py)."""
    import ray
    from ray import serve

    from rayfin.cluster import free_port

    if ray.is_initialized():
        ray.shutdown()
    os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    # address="local": a fresh instance, never a `ray start` cluster someone else left running
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="rayfin-autoscale-test",
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield serve, port
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _replicas(serve, app: str) -> tuple[int, int]:
    """(replicas running, replicas Serve has decided on: starting or running)."""
    app_status = serve.status().applications.get(app)
    if app_status is None or "Pricer" not in app_status.deployments:
        return 0, 0
    states = {str(state).rsplit(".", 1)[-1]: n for state, n in app_status.deployments["Pricer"].replica_states.items()}
    return states.get("RUNNING", 0), sum(n for st, n in states.items() if st in ("STARTING", "RUNNING", "PENDING_MIGRATION"))


def test_predictive_policy_scales_up_before_the_load_step(serve_cluster):
    serve, port = serve_cluster
    from serve_apps.autoscaling_policy import predictive_autoscaling_config

    burst_in = 25.0
    t_deploy = time.time()
    cfg = predictive_autoscaling_config(
        min_replicas=1, max_replicas=4, target_ongoing_requests=2.0, look_back_period_s=2.0,
        desk="fx", lead_time_s=15.0, quantile=0.9, downscale_hold_s=30.0,
        forecast={"bin_s": 5.0, "season_s": SEASON_S, "week_seasons": 0, "kernel_bins": 0},
        initial_state=_seed_state(t_deploy, burst_in))

    @serve.deployment(autoscaling_config=cfg, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4)
    class Pricer:
        async def __call__(self, request) -> dict:
            import asyncio

            t0 = time.time()
            await asyncio.sleep(1.0)
            return {"replica": os.getpid(), "start": t0, "end": time.time()}

    # Watch the replica counts from before the deployment exists: serve.run returns only once
    # the app runs, which on a loaded machine can be late.
    seen: list[tuple[float, int, int]] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            try:
                running, decided = _replicas(serve, "predictive")
                seen.append((time.time(), running, decided))
            except Exception:  # noqa: BLE001 - the app not there yet
                pass
            stop.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    step_at = t_deploy + burst_in
    try:
        # Requests go over HTTP, not through a handle: a handle's router threads outlive
        # ray.shutdown() and would auto-connect to another Ray instance on a shared machine.
        serve.run(Pricer.bind(), name="predictive", route_prefix="/predictive")
        # No request is sent until three replicas run; the deadline only bounds a broken run.
        wait_for(lambda: any(r >= 3 for _, r, _ in seen), 180, 0.5, what="three replicas running")
    finally:
        stop.set()
        watcher.join(5)
    trace = [(round(t - t_deploy, 1), r, d) for t, r, d in seen]
    decided_at = next(t for t, _, d in seen if d >= 3)
    # The forecast, not load, scaled it, and ahead of the step (a lead that can come out negative).
    lead = step_at - decided_at
    assert lead > 0, f"Serve decided on 3 replicas {-lead:.1f}s after the step; (s, running, decided) = {trace}"

    # The scripted step: 8 concurrent callers, 3 one-second requests each, all served.
    results, errors = [], []

    def caller():
        try:
            with httpx.Client(timeout=60) as client:
                for _ in range(3):
                    r = client.post(f"http://127.0.0.1:{port}/predictive")
                    r.raise_for_status()
                    results.append(r.json())
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors and len(results) == 24, errors
    # Served by the scaled-up deployment, not one replica: at least three replicas answered, and
    # at some moment more requests ran than one replica's 4 slots allow.
    assert len({r["replica"] for r in results}) >= 3, results
    peak = max(sum(1 for o in results if o["start"] <= r["start"] < o["end"]) for r in results)
    assert peak > 4, f"at most {peak} requests at once"
    print(f"decided on >=3 replicas {lead:.1f}s before the step; peak {peak} at once; trace {trace}")
