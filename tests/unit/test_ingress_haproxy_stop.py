"""A cluster's HAProxies that outlive it are found by their config file under the cluster's own
HAProxy directory, and stopped by pid (`rayfin up` stopped by SIGTERM to its own pid)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from serve_apps.ingress import haproxy_pids, remove_run_dir, stop_haproxies


def _fake_proc(tmp_path, table: dict[int, list[str]]) -> str:
    root = tmp_path / "proc"
    for pid, args in table.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes("\0".join(args).encode() + b"\0")
    (root / "self").mkdir()
    return str(root)


def test_finds_only_the_haproxies_on_this_clusters_config(tmp_path):
    mine, other = "/tmp/rfh-abc", "/tmp/rfh-abcd"          # a prefix of another cluster's directory
    proc = _fake_proc(tmp_path, {
        10: ["/x/haproxy", "-db", "-f", f"{mine}/node1/haproxy.cfg"],
        11: ["/x/haproxy", "-db", "-f", f"{mine}/node2/haproxy.cfg", "-sf", "10"],      # a reload
        12: ["/x/haproxy", "-db", "-f", f"{other}/node1/haproxy.cfg"],
        13: ["python", "-m", "pytest", f"{mine}/node1/haproxy.cfg"],                       # not its -f
        14: ["/x/haproxy", "-f", "/etc/haproxy/haproxy.cfg"],
    })
    assert haproxy_pids(mine, proc) == [10, 11]
    assert haproxy_pids(other, proc) == [12]


def test_stop_sends_term_then_kill_to_those_that_stay(tmp_path):
    proc = _fake_proc(tmp_path, {21: ["haproxy", "-f", "/tmp/rfh-x/n/haproxy.cfg"]})
    sent: list[tuple[int, int]] = []
    assert stop_haproxies("/tmp/rfh-x", proc, kill=lambda p, s: sent.append((p, s)), grace_s=0.1) == [21]
    assert sent == [(21, signal.SIGTERM), (21, signal.SIGKILL)]     # the fake one never exits


def test_remove_run_dir_stops_a_real_leftover_by_pid(tmp_path):
    run_dir = tmp_path / "rfh-test"
    (run_dir / "node").mkdir(parents=True)
    cfg = run_dir / "node" / "haproxy.cfg"
    cfg.write_text("")
    # stands in for an HAProxy that outlived its cluster: a process with `-f <run dir>/...`
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-f", str(cfg)])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # until the child has exec'd, /proc shows the parent's command line (a loaded host)
        deadline = time.monotonic() + 30
        while str(cfg).encode() not in Path(f"/proc/{leftover.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the stand-in never started"
            time.sleep(0.01)
        remove_run_dir({"RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(run_dir)})
        assert leftover.wait(timeout=10) == -signal.SIGTERM
        assert bystander.poll() is None and not run_dir.exists()
    finally:
        for p in (leftover, bystander):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
