"""Two lanes for `pytest -n 2` (make test): every integration test runs in one xdist worker, in
collection order, as a serial run would run it, so only one Ray cluster is ever starting or
running at a time (two clusters starting at once on two cores made Serve's proxy fail its
start-up checks); the tiers without Ray (unit, ledger, gpu) run in the other worker beside it,
and after them the few integration files that start neither Serve nor the session cluster
(`BESIDE_FILES`), so that the integration lane, the longer one, is shorter.

(pytest-xdist's own `--dist loadgroup` does not group under pytest 9: it renames node ids, which
pytest 9 no longer reads. So the scheduler is ours: `tests/conftest.py` installs it.)"""
from __future__ import annotations

# Integration test files that start and stop a cluster (or Serve, or a `ray start`) of their own
# and do not use the session cluster (`rayfin_env`). tests/integration/conftest.py checks this
# list against the fixtures each test really uses, and fails the collection if it is wrong: a
# test on the session cluster must not run between a file's own cluster start and stop.
OWN_CLUSTER_FILES = frozenset({
    "test_autoscaling_live.py", "test_autoscaling_serve.py", "test_haproxy_edge_live.py",
    "test_haproxy_sidecar_live.py", "test_head_failure.py", "test_serve_gateway.py", "test_up_smoke.py",
})
# Integration files (of OWN_CLUSTER_FILES) that start no Serve and whose cluster lives in a process
# of its own: they run in the other lane, after the tests without Ray (tests/conftest.py orders
# them last), beside the session cluster's tests rather than before them. The autoscaling test's
# `ray start` head with Ray's fake nodes is one (~60 s of the integration lane's ~15 minutes).
BESIDE_FILES = frozenset({"test_autoscaling_live.py"})
INTEGRATION_LANE = "tests/integration (Ray: one cluster at a time)"
NO_RAY_LANE = "tests without Ray (unit, ledger, gpu)"


def on_session_cluster(nodeid: str) -> bool:
    """Whether an integration test runs on the session cluster (not a cluster of its own)."""
    path = nodeid.split("::", 1)[0]
    return path.startswith("tests/integration/") and path.rsplit("/", 1)[-1] not in OWN_CLUSTER_FILES


def runs_beside(nodeid: str) -> bool:
    """Whether an integration test runs in the other lane, after the tests without Ray."""
    path = nodeid.split("::", 1)[0]
    return path.startswith("tests/integration/") and path.rsplit("/", 1)[-1] in BESIDE_FILES


def lane_of(nodeid: str) -> str:
    """The scheduling scope of a test: the integration lane or the lane without Ray."""
    if runs_beside(nodeid):
        return NO_RAY_LANE
    return INTEGRATION_LANE if nodeid.startswith("tests/integration/") else NO_RAY_LANE
