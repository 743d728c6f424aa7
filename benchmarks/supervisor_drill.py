"""`rayfin supervise` across a head kill: does it reconnect, and does the new connection work?

    python -m benchmarks.supervisor_drill [--config configs/test.yaml] [--outage 5]

Starts a local cluster with its GCS in a Redis of its own (rayfin.local_servers), runs `rayfin
supervise` as a separate command, kills the head (every head process, `LocalCluster.kill_head`),
starts a new head on the same GCS address after `--outage` seconds, and waits for the supervisor
to connect again; then kills the controller for good (`ray.kill`, no restart) and waits for the
reconnected supervisor to bring it back. Prints one JSON line with the timings. Takes a cluster
start (about a minute here), so it is a drill, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from rayfin.config import load_config
from rayfin.local_servers import RedisServer
from rayfin.supervisor import DEPLOY_KEY_ENV
from rayfin.up import bring_up

ROOT = Path(__file__).resolve().parents[1]


def _wait(pred: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.25)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.supervisor_drill", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "test.yaml"))
    ap.add_argument("--outage", type=float, default=5.0, help="seconds between the head kill and the new head")
    args = ap.parse_args(argv)
    import ray

    cfg = load_config(args.config)
    redis = RedisServer().start()
    run = bring_up(cfg, serve=False, api=False, supervise=False, gcs_redis=redis.address)
    lines: list[tuple[float, str]] = []
    tmp = tempfile.TemporaryDirectory(prefix="rayfin-drill-")
    cfg_file = Path(tmp.name) / "config.json"
    cfg_file.write_text(json.dumps(cfg.model_dump(mode="json")))
    env = dict(os.environ, **{DEPLOY_KEY_ENV: run.deploy_key or ""})
    sup = subprocess.Popen([sys.executable, "-m", "rayfin.cli", "supervise", "--config", str(cfg_file),
                            "--address", run.address, "--interval", "1"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def read() -> None:
        assert sup.stdout is not None
        for line in sup.stdout:
            lines.append((time.monotonic(), line.rstrip()))

    threading.Thread(target=read, daemon=True).start()
    out: dict[str, object] = {"outage_s": args.outage}
    try:
        if not _wait(lambda: any("supervising" in ln for _, ln in lines), 120):
            raise RuntimeError("the supervisor did not start")
        t_kill = time.monotonic()
        out["head_processes_killed"] = len(run.local.kill_head())
        time.sleep(args.outage)
        out["new_head_start_s"] = round(run.local.restart_head(), 1)
        reconnected = _wait(lambda: any("supervising" in ln for t, ln in lines if t > t_kill), 240)
        out["reconnected"] = reconnected
        if reconnected:
            first = min(t for t, ln in lines if t > t_kill and "supervising" in ln)
            out["reconnected_after_kill_s"] = round(first - t_kill, 1)
        # The new connection works: the controller killed for good is brought back through it.
        ray.shutdown()
        ray.init(address=run.address, namespace=cfg.controller.namespace, log_to_driver=False,
                 logging_level="WARNING")
        t_ctl = time.monotonic()
        ray.kill(ray.get_actor(cfg.controller.name, namespace=cfg.controller.namespace), no_restart=True)
        back = _wait(lambda: any("brought back" in ln for t, ln in lines if t > t_ctl), 240)
        out["controller_brought_back"] = back
        out["controller_back_s"] = round(time.monotonic() - t_ctl, 1) if back else None
        out["supervisor_log"] = [ln for _, ln in lines if not ln.startswith(("[", "***", "PC:", "    @"))][-8:]
    finally:
        sup.terminate()
        sup.wait(timeout=30)
        try:
            run.controller = ray.get_actor(cfg.controller.name, namespace=cfg.controller.namespace)
        except Exception:  # noqa: BLE001 - shutting down whatever is there
            pass
        run.shutdown()
        redis.stop()
        tmp.cleanup()
    print(json.dumps(out))
    return 0 if out.get("reconnected") and out.get("controller_brought_back") else 1


if __name__ == "__main__":
    sys.exit(main())
