"""Job functions the integration tests submit. Workers import them from the checkout (the test
run puts it on PYTHONPATH, tests/conftest.py), or the SDK ships them by value."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def hold(seconds: float, result: Any = "done") -> Any:
    """Run for `seconds`, returning `result`; "stopped" if rayfin asks the job to stop first
    (a preemption's grace period)."""
    from rayfin.runner import job_context

    ctx = job_context()
    deadline = time.time() + seconds
    while time.time() < deadline:
        if ctx is not None and ctx.should_stop():
            return "stopped"
        time.sleep(0.1)
    return result


def mark_and_sleep(marker: str, tag: str, first_s: float, retry_s: float = 0.5) -> str:
    """Append `tag` to `marker` (one line per start), then sleep: long the first time, short after."""
    p = Path(marker)
    seen = p.read_text().splitlines().count(tag) if p.exists() else 0
    with p.open("a") as f:
        f.write(tag + "\n")
    time.sleep(first_s if seen == 0 else retry_s)
    return tag


def hold_until(path: str, timeout_s: float = 300.0, result: Any = "done") -> Any:
    """Run until the test creates `path` (the job then succeeds with `result`), at most
    `timeout_s`: a job that stays busy exactly as long as the test needs it, however slow the
    machine. Jobs run on this machine (simulated nodes), so a file is the simplest signal."""
    deadline = time.time() + timeout_s
    while not Path(path).exists():
        if time.time() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.1)
    return result
