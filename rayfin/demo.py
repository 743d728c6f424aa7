"""`make demo`: the embedded default end to end.

Brings up a local Ray cluster with simulated GPU nodes, the controller and the Serve apps;
submits a mixed workload from four desks (one refused over quota, one queued behind its own
desk's ceiling); shows progress; prints the per-desk table, a few HTTP inference calls and the
dashboard URL; shuts everything down and exits 0.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from rayfin.config import load_config
from rayfin.errors import QuotaExceeded
from rayfin.sdk import Client, Job, JobStatus, connect
from rayfin.tables import job_lines, usage_lines
from rayfin.up import bring_up, with_ledger
from serve_apps.demo import demo_calls


def _p(msg: str) -> None:
    print(msg, flush=True)


def workers_line(st: JobStatus) -> str:
    """How many workers a job ran and on which islands (from the rank layout on the job)."""
    ranks = st.info.get("ranks") or []
    on: dict[str, int] = {}
    for r in ranks:
        on[r["island"]] = on.get(r["island"], 0) + 1
    workers = len(ranks) or 1
    # GPUs the workers actually hold: what Ray put in each one's CUDA_VISIBLE_DEVICES.
    held = sum(len([g for g in (r.get("cuda_visible_devices") or "").split(",") if g]) for r in ranks)
    where = ", ".join(f"{n} on {i}" for i, n in on.items()) or "?"
    return (f"{workers} worker(s) x {st.gpus / workers:g} GPU, holding {held:g} of {st.gpus:g} reserved GPUs; "
            f"islands: {where}")


def run_demo(config_path: str | Path, serve: bool = True, timeout_s: float = 300.0) -> int:
    # lazy: the demo's jobs import torch (seconds), which no other `rayfin` command needs
    import jobs.train_signal as train_signal
    import jobs.var_mc as var_mc

    t0 = time.monotonic()
    ledger = Path(tempfile.mkdtemp(prefix="rayfin-demo-")) / "ledger.db"
    cfg = with_ledger(load_config(config_path), str(ledger))
    _p(f"starting a local Ray cluster: {len(cfg.cluster.nodes)} simulated GPU nodes, "
       f"{cfg.cluster.total_gpus} GPUs, desks {', '.join(cfg.desk_names)} ...")
    run = bring_up(cfg, serve=serve)
    try:
        for line in run.endpoint_lines():
            _p(line)
        _p(f"ready in {time.monotonic() - t0:.1f}s\n")
        clients = {d: connect(desk=d, token=f"{d}-demo-token", url=run.api_url) for d in cfg.desk_names}
        submitted: list[Job] = []

        def submit(desk: str, what: str, fn: Callable[[Client], Any]) -> None:
            try:
                job = fn(clients[desk])
                submitted.append(job)
                _p(f"  {desk:<9} {what:<44} -> {job.job_id}")
            except QuotaExceeded as exc:
                f = exc.to_wire()["fields"]
                _p(f"  {desk:<9} {what:<44} -> REFUSED QuotaExceeded(desk={f['desk']}, requested={f['requested']:g}, "
                   f"available={f['available']:g})")

        _p("submitting a mixed workload:")
        submit("risk", "overnight VaR, 4 workers (entrypoint)", lambda c: c.submit_entrypoint(
            "python -m jobs.var_mc --paths 200000 --options 300", gpus=4, workers="per_gpu", name="overnight-var",
            priority="critical"))
        submit("fx", "signal model DDP training, 2 workers x 1 GPU", lambda c: c.submit(
            train_signal.train, gpus=2, workers="per_gpu", comm="allreduce", name="fx-signal",
            kwargs={"steps": 300}))
        submit("equities", "back-test VaR, 4 workers x 1 GPU", lambda c: c.submit(
            var_mc.run_var, gpus=4, workers="per_gpu", comm="allreduce", name="eq-backtest",
            kwargs={"paths": 100000}))
        submit("equities", "large calibration, 10 GPUs (borrows 6)", lambda c: c.submit(
            train_signal.train, gpus=10, workers="per_gpu", name="eq-calibration", priority="batch",
            kwargs={"steps": 150}))
        submit("fx", "grid search, 12 GPUs (queued: fx ceiling 12)", lambda c: c.submit(
            train_signal.train, gpus=12, workers=6, name="fx-grid", priority="batch", kwargs={"steps": 100}))
        submit("rates", "curve fit, 16 GPUs (rates may hold 8)", lambda c: c.submit(
            train_signal.train, gpus=16, workers="per_gpu", name="rates-curve"))
        time.sleep(1.0)
        for job in submitted:
            st = job.status()
            if st.state.value == "PENDING":
                _p(f"  queued: {job.job_id}: {st.reason}")
        _p("\nprogress:")
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            states = [j.status() for j in submitted]
            line = "  " + "  ".join(f"{s.name}:{s.state.value[:4]}" + (f"({s.progress:.0%})" if s.state.value ==
                                                                            "RUNNING" else "") for s in states)
            if line != last:
                _p(f"{time.monotonic() - t0:6.1f}s {line}")
                last = line
            if all(s.done for s in states):
                break
            time.sleep(1.0)
        admin = connect(desk=None, token="admin-demo-token", url=run.api_url)
        _p("\njobs:")
        _p("\n".join(job_lines(admin.jobs())))
        _p("\nresults:")
        for job in submitted:
            st = job.status()
            if st.state.value == "SUCCEEDED":
                r = job.result(timeout=10)
                if isinstance(r, dict) and "output" in r:
                    r = r["output"].strip().splitlines()[-1][:160]
                _p(f"  {st.name}: {r}")
                _p(f"    {workers_line(st)}")
            else:
                _p(f"  {st.name}: {st.state.value}: {st.reason[:160]}")
        _p("\nper-desk GPUs:")
        _p("\n".join(usage_lines(admin.usage())))
        if run.serve_url:
            _p(f"\ninference over HTTP at {run.serve_url}:")
            for line in demo_calls(cfg, run.serve_url):
                _p("  " + line)
        _p(f"\ndashboard: {run.dashboard_url}")
        failed = [j for j in submitted if j.status().state.value != "SUCCEEDED"]
        _p(f"demo finished in {time.monotonic() - t0:.1f}s; {len(submitted) - len(failed)}/{len(submitted)} "
           "jobs succeeded")
        return 0 if not failed else 1
    finally:
        _p("shutting down the cluster ...")
        run.shutdown()
