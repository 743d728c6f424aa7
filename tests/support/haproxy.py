"""A real HAProxy (the binary ray[serve] bundles) started from a config file for a live test."""
from __future__ import annotations

import socket
import subprocess
import time


def start_haproxy(binary: str, cfg: str, port: int, timeout_s: float = 10.0) -> subprocess.Popen:
    """`binary -f cfg -db` in the foreground, returned once `port` takes connections (or after
    `timeout_s`: the test's own requests then say what is wrong). The caller stops it."""
    proc = subprocess.Popen([binary, "-f", cfg, "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc
