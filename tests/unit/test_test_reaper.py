"""The test run's reaper (tests/support/procs.py): when the process it watches dies without
cleaning up (os._exit, as pytest-timeout's thread method does), what that process started is
stopped, and nothing else."""
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support import procs
from tests.support.cluster import wait_for

PROCS = Path(__file__).resolve().parents[1] / "support" / "procs.py"


def test_reaper_stops_what_a_dead_process_left_and_nothing_else(tmp_path):
    registry = tmp_path / "registry"
    registry.touch()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    # A parent that starts the reaper on itself, a child (in a new session, as servers are), a
    # grandchild, then dies at once without stopping any of them.
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, subprocess, sys, time
        subprocess.Popen([sys.executable, {str(PROCS)!r}, "--watch", str(os.getpid()),
                          "--registry", {str(registry)!r}], start_new_session=True)
        child = subprocess.Popen([sys.executable, "-c",
            "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "time.sleep(60)"], start_new_session=True)
        print(child.pid, flush=True)
        time.sleep(3)                    # the reaper samples the tree every second
        os._exit(1)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        left = wait_for(lambda: t if len(t := procs.tree(child)) == 2 else None, 10, 0.1,
                        what="the child and its child")
        parent.wait(30)
        wait_for(lambda: not [p for p in left if procs.alive(p)], 30, 0.2, what="the reaper to stop them")
        assert bystander.poll() is None                      # not started by the dead process: untouched
        wait_for(lambda: not registry.exists(), 10, 0.2, what="the reaper to finish")
    finally:
        bystander.kill()
        bystander.wait()
        procs.kill(procs.tree(parent.pid))
