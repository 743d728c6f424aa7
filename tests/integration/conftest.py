"""One local multi-node Ray cluster per test run (configs/test.yaml: 2 nodes x 2 NVLink islands
x 4 simulated GPUs, one raylet per island), with the rayfin controller and the rayfin API (on
Serve, no models) deployed on it. Desk clients speak HTTP to the API, as a desk's machine does."""
from __future__ import annotations

import os
import time

import pytest

from rayfin.config import load_config
from rayfin.up import Running, bring_up, with_ledger

TOKENS = {d: f"{d}-demo-token" for d in ("equities", "fx", "rates", "risk", "quant", "admin")}


# The session cluster's controller keeps its ledger in a real PostgreSQL (the session's server,
# tests/conftest.py), so every integration test, controller kills included, runs on it.
# RAYFIN_TEST_LEDGER=sqlite runs them on the embedded SQLite ledger instead.
LEDGER_PASSWORD_ENV = "RAYFIN_TEST_LEDGER_PASSWORD"


@pytest.fixture(scope="session")
def ledger_target(request, tmp_path_factory) -> str:
    if os.environ.get("RAYFIN_TEST_LEDGER", "postgresql") == "sqlite":
        return str(tmp_path_factory.mktemp("ledger") / "ledger.db")
    server = request.getfixturevalue("postgres_server")
    # The controller actor reads it on the head node, whose processes inherit this environment.
    os.environ[LEDGER_PASSWORD_ENV] = server.password
    return server.create_database("rayfin_integration")


@pytest.fixture(scope="session")
def rayfin_env(ledger_target) -> Running:
    cfg = with_ledger(load_config("configs/test.yaml"), ledger_target, password_env=LEDGER_PASSWORD_ENV
                      if ledger_target.startswith("postgresql://") else None)
    from rayfin.cluster import free_port

    # Free ports, so a second Ray on this machine (another test run, a demo) cannot clash.
    run = bring_up(cfg, serve=False, dashboard=True, dashboard_port=free_port(), metrics_port=free_port(),
                   serve_port=free_port(), access_log=False)
    yield run
    run.shutdown()


@pytest.fixture(autouse=True)
def _driver_on_session_cluster(request):
    """Tests that use Ray directly (as the operator) run on the session cluster, even after a test
    module shut this process's Ray down to start a private cluster (the old Ray-driver SDK
    reconnected as a side effect; the HTTP SDK does not touch Ray)."""
    if "rayfin_env" in request.fixturenames:
        import ray

        env = request.getfixturevalue("rayfin_env")
        if not ray.is_initialized() or ray.get_runtime_context().gcs_address != env.address:
            if ray.is_initialized():
                ray.shutdown()
            ray.init(address=env.address, namespace=env.config.controller.namespace, log_to_driver=False,
                     logging_level="WARNING")
            # Handles do not survive a new connection: look the controller up again.
            env.controller = ray.get_actor(env.config.controller.name, namespace=env.config.controller.namespace)
    yield


@pytest.fixture(scope="session")
def connect_desk(rayfin_env):
    from rayfin.sdk import connect

    def _connect(desk: str | None, token: str | None = None):
        return connect(desk=desk, token=token or TOKENS[desk or "admin"], url=rayfin_env.api_url)

    return _connect


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


os.environ.setdefault("RAY_DEDUP_LOGS", "0")
