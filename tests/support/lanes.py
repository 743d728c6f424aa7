"""Two lanes for `pytest -n 2` (make test): every test on the session cluster runs in one xdist
worker, in collection order, so one session cluster starts and tests that hand on its state
(the supervisor's new controller handle) see it; the tests that start a cluster of their own
are scheduled file by file on whichever worker is free, with the unit and ledger tests.

(pytest-xdist's own `--dist loadgroup` does not group under pytest 9: it renames node ids, which
pytest 9 no longer reads. So the scheduler is ours: `tests/conftest.py` installs it.)"""
from __future__ import annotations

# Integration test files that start and stop a cluster (or Serve, or a `ray start`) of their own
# and do not use the session cluster (`rayfin_env`). tests/integration/conftest.py checks this
# list against the fixtures each test really uses, and fails the collection if it is wrong.
OWN_CLUSTER_FILES = frozenset({
    "test_autoscaling_live.py", "test_autoscaling_serve.py", "test_haproxy_edge_live.py",
    "test_haproxy_sidecar_live.py", "test_head_failure.py", "test_serve_gateway.py", "test_up_smoke.py",
})
SESSION_LANE = "tests/integration/<session cluster>"


def lane_of(nodeid: str) -> str:
    """The scheduling scope of a test: the session lane, or its own file."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("tests/integration/") and path.rsplit("/", 1)[-1] not in OWN_CLUSTER_FILES:
        return SESSION_LANE
    return path
