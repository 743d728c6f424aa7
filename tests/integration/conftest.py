"""One local multi-node Ray cluster per test run (configs/test.yaml: 2 nodes x 2 NVLink islands
x 4 simulated GPUs, one raylet per island), with the rayfin controller and the rayfin API (on
Serve, no models) deployed on it. Desk clients speak HTTP to the API, as a desk's machine does."""
from __future__ import annotations

import atexit
import logging
import os
import threading

import pytest

from rayfin.config import load_config
from rayfin.up import Running, bring_up, with_ledger
from tests.support.cluster import LEDGER_PASSWORD_ENV, TOKENS
from tests.support.lanes import on_session_cluster

log = logging.getLogger("tests.integration")

# The session cluster's controller keeps its ledger in a real PostgreSQL (the session's server,
# tests/conftest.py), so every integration test, controller kills included, runs on it.
# RAYFIN_TEST_LEDGER=sqlite runs them on the embedded SQLite ledger instead.


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
    stop = _stopper(run)
    atexit.register(stop)            # if the session ends without its teardown (an interrupt in it)
    try:
        yield run
    finally:
        stop()
        atexit.unregister(stop)


def _stopper(run: Running):
    """Stop the session cluster once, from the fixture's teardown or at exit, whichever comes
    first. A test may have left this process on a private cluster: reconnect first, so the
    controller and Serve are stopped on the cluster they run on. Whatever survives this (or a
    process killed before it could run) is stopped by the reaper (tests/conftest.py)."""
    done = threading.Lock()

    def stop() -> None:
        if not done.acquire(blocking=False):
            return
        try:
            _connect(run)
        except Exception as exc:  # noqa: BLE001 - shutting down: stop what can be stopped
            log.warning("session cluster unreachable at teardown: %s", exc)
        run.shutdown()

    return stop


def _connect(env: Running) -> None:
    """This process's Ray driver on the session cluster, with a fresh controller handle."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().gcs_address == env.address:
        return
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address=env.address, namespace=env.config.controller.namespace, log_to_driver=False,
             logging_level="WARNING")
    # Handles do not survive a new connection: look the controller up again.
    env.controller = ray.get_actor(env.config.controller.name, namespace=env.config.controller.namespace)


@pytest.fixture(autouse=True)
def _driver_on_session_cluster(request):
    """Tests that use Ray directly (as the operator) run on the session cluster, even after a test
    module shut this process's Ray down to start a private cluster (the old Ray-driver SDK
    reconnected as a side effect; the HTTP SDK does not touch Ray)."""
    if "rayfin_env" in request.fixturenames:
        _connect(request.getfixturevalue("rayfin_env"))
    yield


@pytest.fixture(scope="session")
def connect_desk(rayfin_env):
    from rayfin.sdk import connect

    def _connect(desk: str | None, token: str | None = None):
        return connect(desk=desk, token=token or TOKENS[desk or "admin"], url=rayfin_env.api_url)

    return _connect


def pytest_collection_modifyitems(items):
    """Mark integration tests, and check tests/support/lanes.py's list of files that start a
    cluster of their own: a test on the session cluster must not sit in such a file, nor the
    other way round (the list says which tests may run while the session cluster is down)."""
    wrong = []
    for item in items:
        if "integration" not in str(item.fspath):
            continue
        item.add_marker(pytest.mark.integration)
        on_session = "rayfin_env" in getattr(item, "fixturenames", ())
        if on_session != on_session_cluster(item.nodeid):
            wrong.append(item.nodeid)
    if wrong:
        raise pytest.UsageError("tests/support/lanes.py: OWN_CLUSTER_FILES is wrong for "
                                + ", ".join(wrong[:5]) + ": list a file there exactly when its tests "
                                "do not use the session cluster (rayfin_env)")


os.environ.setdefault("RAY_DEDUP_LOGS", "0")
