"""The predictive Serve policy scales a real deployment up ahead of a scripted load step.

The forecaster is seeded (policy_kwargs["initial_state"], as the controller would after a
restart) with a short synthetic history: a 120 s "day" in which load steps up to 8 ongoing
requests for 30 s. The step is placed ~20 s after the deployment starts; replicas must rise
before any request is sent, then the step itself is served.
"""
from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

ROOT = str(Path(__file__).resolve().parents[2])
HTTP_PORT = 16811
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
    import ray
    from ray import serve

    started = False
    if not ray.is_initialized():
        os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
        # address="local": a fresh instance, never a `ray start` cluster someone else left running
        ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="rayfin-autoscale-test",
                 runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
        started = True
    serve.start(http_options={"host": "127.0.0.1", "port": HTTP_PORT})
    try:
        yield serve
    finally:
        try:
            serve.delete("predictive")
        except Exception:
            pass
        if started:
            serve.shutdown()
            ray.shutdown()


def _replicas(serve, app: str) -> int:
    st = serve.status().applications[app].deployments["Pricer"]
    return sum(n for state, n in st.replica_states.items() if str(state).endswith("RUNNING"))


def test_predictive_policy_scales_up_before_the_load_step(serve_cluster):
    serve = serve_cluster
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
        async def __call__(self, request) -> str:
            import asyncio

            await asyncio.sleep(1.0)
            return "ok"

    # Requests go over HTTP, not through a handle: a handle's router threads outlive
    # ray.shutdown() and would auto-connect to another Ray instance on a shared machine.
    serve.run(Pricer.bind(), name="predictive", route_prefix="/predictive")
    step_at = t_deploy + burst_in
    seen = []
    scaled_at = None
    while time.time() < step_at:
        n = _replicas(serve, "predictive")
        seen.append((round(time.time() - t_deploy, 1), n))
        if n >= 3 and scaled_at is None:
            scaled_at = time.time()
        time.sleep(0.5)
    assert scaled_at is not None, f"no scale-up before the step; (s, replicas) = {seen}"
    lead = step_at - scaled_at
    assert lead > 0

    # The scripted step: 8 concurrent callers for a few seconds, all served.
    results, errors = [], []

    def caller():
        try:
            with httpx.Client(timeout=30) as client:
                for _ in range(3):
                    r = client.post(f"http://127.0.0.1:{HTTP_PORT}/predictive")
                    r.raise_for_status()
                    results.append(r.text)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    t0 = time.time()
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors and len(results) == 24
    # 24 one-second requests on >= 3 replicas of 4 slots each: about 3 s, not 24 / 4 = 6 s on one.
    assert time.time() - t0 < math.ceil(24 / 4) + 2
    print(f"scaled to >=3 replicas {lead:.1f}s before the step; trace {seen}")
