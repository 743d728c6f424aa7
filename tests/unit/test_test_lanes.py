"""The two lanes of `make test` (tests/support/lanes.py): which worker runs which test."""
from tests.support.lanes import (BESIDE_FILES, INTEGRATION_LANE, NO_RAY_LANE, OWN_CLUSTER_FILES, lane_of,
                                 on_session_cluster, runs_beside)


def test_integration_tests_share_one_lane_but_those_beside_it():
    assert lane_of("tests/integration/test_gang.py::test_x") == INTEGRATION_LANE
    assert lane_of("tests/integration/test_up_smoke.py::test_x") == INTEGRATION_LANE
    assert lane_of("tests/integration/test_autoscaling_live.py::test_x") == NO_RAY_LANE
    assert lane_of("tests/unit/test_policy.py::test_x") == NO_RAY_LANE
    assert lane_of("tests/ledger/test_contract.py::test_x[sqlite]") == NO_RAY_LANE


def test_a_test_beside_the_lane_starts_its_own_cluster_never_the_sessions():
    # one on the session cluster, or one that starts Serve, would run beside the session cluster
    assert BESIDE_FILES <= OWN_CLUSTER_FILES
    assert not BESIDE_FILES & {"test_up_smoke.py", "test_serve_gateway.py", "test_head_failure.py",
                               "test_autoscaling_serve.py", "test_haproxy_edge_live.py"}
    for name in BESIDE_FILES:
        nodeid = f"tests/integration/{name}::test_x"
        assert runs_beside(nodeid) and not on_session_cluster(nodeid)
    assert not runs_beside("tests/unit/test_autoscaling_live.py::test_x")
