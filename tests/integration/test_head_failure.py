"""The head node dies mid-run, as a head pod does: every process of it is SIGKILLed (raylet, GCS,
dashboard, monitors, node agents, the controller's worker) on a cluster whose GCS keeps its state
in a real Redis and whose ledger is a real PostgreSQL. A new head starts on the same GCS address:
its GCS reloads the cluster from Redis, the worker nodes' raylets (and the runners on them) stay
up and reconnect, Ray restarts the controller on the new head, and the controller reads its
ledger and re-adopts the running jobs. Every accepted job ends exactly once and no GPU stays
reserved. Runs the chaos benchmark small, in its own process (its own Ray cluster beside the
session's)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.support.cluster import clean_cluster_env


def small_config(tmp_path) -> str:
    """configs/test.yaml cut to its general pool (one node, two islands): a quicker cluster."""
    cfg = yaml.safe_load(open("configs/test.yaml"))
    cfg["cluster"]["racks"][0]["nodes"] = [n for n in cfg["cluster"]["racks"][0]["nodes"] if n["pool"] == "general"]
    cfg["desks"] = [d for d in cfg["desks"] if d["pools"] == ["general"]]
    cfg["controller"]["name"] = "rayfin-controller-head-test"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


# No gangs here: one whose workers are being created at the kill can be held 300 s by a Ray 2.60
# lease leak (ray-project/ray#66199), too long for CI; the chaos benchmark runs gangs through head kills.
@pytest.mark.timeout(600)
def test_head_kill_with_gcs_in_redis_and_ledger_in_postgresql(tmp_path):
    out = tmp_path / "chaos.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.chaos", "--config", small_config(tmp_path),
                           "--jobs", "8", "--no-gangs", "--kills", "0", "--head-kills", "1", "--node-losses", "0",
                           "--head-outage-s", "2", "--job-time-scale", "4", "--ledger", "postgresql", "--timeout", "360", "--out", str(out)],
                          capture_output=True, text=True, timeout=540, env=clean_cluster_env())
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert (r["ledger"], r["gcs_fault_tolerance"]) == ("postgresql", True)
    assert r["recovery"]["head"]["n"] == 1
    (head,) = [x for x in r["recovered"] if x["fault"] == "head"]
    assert head["killed_processes"] >= 6, head      # raylet, GCS, dashboard, monitors, agents, workers
    assert head["new_head_node"] and head["controller_moved"], head   # a new head; the controller on it
    assert head["worker_raylets_survived"], head     # the worker nodes outlive the head
    assert head["adopted"], "the head kill should find running jobs (on the worker nodes) to re-adopt"
    assert r["accepted"] > 0 and r["succeeded"] == r["accepted"]
    assert (r["lost"], r["duplicated"], r["leaked_gpus"]) == (0, 0, 0.0), r
    assert proc.returncode == 0
