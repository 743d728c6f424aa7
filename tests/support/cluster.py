"""What integration tests share: the desks' demo tokens, polling a condition with a deadline
(never a bare sleep: the 2-core CI machine is shared and slow), and the `rayfin` CLI run
in-process against an API URL."""
from __future__ import annotations

import contextlib
import io
import time
from typing import Any, Callable

TOKENS = {d: f"{d}-demo-token" for d in ("equities", "fx", "rates", "risk", "quant", "admin")}

# The environment variable that carries the session PostgreSQL's password to the controller.
LEDGER_PASSWORD_ENV = "RAYFIN_TEST_LEDGER_PASSWORD"


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2,
             what: str = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` s pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def cli(url: str, *argv: str) -> tuple[int, str, str]:
    """`rayfin ARGV[0] --url URL --color never ARGV[1:]` in this process: (exit code, stdout, stderr)."""
    from rayfin import cli as rayfin_cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = rayfin_cli.main([argv[0], "--url", url, "--color", "never", *argv[1:]])
    return rc, out.getvalue(), err.getvalue()


def cli_ok(url: str, *argv: str) -> str:
    """As `cli`, asserting exit code 0; returns stdout."""
    rc, out, err = cli(url, *argv)
    assert rc == 0, out + err
    return out


def clean_cluster_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a subprocess that starts a cluster of its own (`rayfin up`, the chaos
    benchmark): without another cluster's address, ingress and GCS settings, which a test in the
    same pytest worker may have left in os.environ."""
    import os

    out = dict(os.environ if env is None else env)
    out.pop("RAY_ADDRESS", None)
    for key in [k for k in out if k.startswith(("RAY_SERVE_", "RAYFIN_HAPROXY"))
                or k in ("RAY_REDIS_ADDRESS", "RAY_external_storage_namespace")]:
        del out[key]
    return out

