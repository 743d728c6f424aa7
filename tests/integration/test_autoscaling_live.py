"""Slow (~65 s, runs in CI): a node of the right pool comes up before a
forecast burst on Ray's fake multi-node autoscaling cluster. Same code as
`python -m benchmarks.autoscaling_live`, with the burst 25 s after the start and 10 s long (the
request still goes out a lead time, 15 s, ahead of it, as with the demo's 40 s and 25 s, and
about 10 s after the head is up, when its autoscaler is running); it owns and kills its own `ray start` session, and
this test kills that session too if the benchmark does not (a timeout, a crash)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import procs

pytestmark = [
    pytest.mark.integration,
]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(420)     # the benchmark's own 300 s limit, then its stop, come first
def test_node_of_the_pool_is_up_before_the_forecast_burst(tmp_path):
    out, session_file = tmp_path / "live.json", tmp_path / "session"
    # A separate interpreter: it connects its own driver to the fake cluster it starts.
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.autoscaling_live", "--out", str(out),
                             "--session-file", str(session_file),
                             "--burst-in-s", "25", "--burst-s", "10"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)          # the benchmark kills its session on SIGTERM
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        raise AssertionError(f"benchmark timed out after 300 s: {stdout[-2000:]}{stderr[-2000:]}") from None
    finally:
        # Whatever happened to the benchmark (even a timeout of this test), neither it nor the
        # `ray start` session it began survives.
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if session_file.exists():
            left = procs.kill(procs.session(int(session_file.read_text())))
            assert not left, f"could not stop the ray start session: {left}"
    assert out.exists(), stdout[-2000:] + stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["node_ready_before_burst"], stdout[-2000:] + stderr[-2000:]
    assert rec["requested_at"] < rec["node_up_at"] < 0
    assert "released_at" in rec, [(x["t"], x["demand"], x["requested_gpus"], x["forecast"], x["sent"])
                                  for x in rec["log"]][-40:]
    assert rec["left_over_processes"] == 0
