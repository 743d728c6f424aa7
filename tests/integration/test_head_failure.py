"""The head's control plane dies mid-run (Ray's GCS server and the controller, SIGKILL) on a
cluster whose GCS keeps its state in a real Redis and whose ledger is a real PostgreSQL: the GCS
restarts from Redis, the controller comes back and reads its ledger, every accepted job ends
exactly once and no GPU stays reserved. Runs the chaos benchmark small, in its own process (its
own Ray cluster beside the session's)."""
from __future__ import annotations

import json
import subprocess
import sys


def test_head_kill_with_gcs_in_redis_and_ledger_in_postgresql(tmp_path):
    out = tmp_path / "chaos.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.chaos", "--config", "configs/test.yaml", "--jobs", "16",
                           "--kills", "1", "--head-kills", "1", "--node-losses", "0", "--head-outage-s", "2",
                           "--ledger", "postgresql", "--timeout", "300", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert (r["ledger"], r["gcs_fault_tolerance"]) == ("postgresql", True)
    assert r["recovery"]["head"]["n"] == 1 and r["recovery"]["controller"]["n"] == 1
    assert r["accepted"] > 0 and r["succeeded"] == r["accepted"]
    assert (r["lost"], r["duplicated"], r["leaked_gpus"]) == (0, 0, 0.0), r
    assert proc.returncode == 0
