"""`descendants`: the processes below a head raylet (its agents and workers), found from /proc,
so a head kill takes them too."""
from __future__ import annotations

import os
import subprocess
import sys

from rayfin.cluster import descendants


def _fake_proc(tmp_path, tree: dict[int, int]) -> str:
    for pid, ppid in tree.items():
        d = tmp_path / str(pid)
        d.mkdir()
        # the command may hold spaces and parentheses: the parent id follows the last ')'
        (d / "stat").write_text(f"{pid} (ray::Worker (x) y) S {ppid} 1 1 0 -1\n")
    (tmp_path / "self").mkdir()
    return str(tmp_path)


def test_descendants_walks_the_whole_tree(tmp_path):
    proc = _fake_proc(tmp_path, {10: 1, 11: 10, 12: 10, 13: 11, 14: 1, 15: 14})
    assert sorted(descendants(10, proc)) == [11, 12, 13]
    assert descendants(13, proc) == []
    assert descendants(99, str(tmp_path / "absent")) == []


def test_descendants_of_a_real_process():
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
                              "print(p.pid, flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(child.stdout.readline())
        assert {child.pid, grandchild} <= set(descendants(os.getpid()))
        assert grandchild in descendants(child.pid)
    finally:
        os.kill(grandchild, 9)
        child.kill()
        child.wait()
