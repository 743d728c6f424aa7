"""Slow (~90 s, runs in CI): a node of the right pool comes up before a
forecast burst on Ray's fake multi-node autoscaling cluster. Same code as
`python -m benchmarks.autoscaling_live`; it owns and kills its own `ray start` session."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
import json

import pytest

pytestmark = [
    pytest.mark.integration,
]

ROOT = Path(__file__).resolve().parents[2]


def test_node_of_the_pool_is_up_before_the_forecast_burst(tmp_path):
    out = tmp_path / "live.json"
    # A separate interpreter: it connects its own driver to the fake cluster it starts.
    proc = subprocess.run([sys.executable, "-m", "benchmarks.autoscaling_live", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    rec = json.loads(out.read_text())
    assert rec["node_ready_before_burst"], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert rec["requested_at"] < rec["node_up_at"] < 0
    assert "released_at" in rec, [(x["t"], x["demand"], x["requested_gpus"], x["forecast"], x["sent"])
                                  for x in rec["log"]][-40:]
    assert rec["left_over_processes"] == 0
