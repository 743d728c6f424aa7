"""Observability on the shared local cluster: Ray's metrics endpoint carries rayfin's metrics with
desk tags after a job runs; `rayfin status` and `rayfin explain` print the controller's figures."""
from __future__ import annotations

import re
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import TOKENS, cli, cli_ok, wait_for
from tests.support.jobs import hold, hold_until


def scrape(url: str) -> dict[str, list[dict[str, str]]]:
    """Series name -> label sets (with the value under "__value__") of every rayfin series."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, list[dict[str, str]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("ray_rayfin_"):
                out.setdefault(s.name, []).append({**s.labels, "__value__": s.value})
    return out


@pytest.fixture
def cli_env(rayfin_env):
    """`rayfin` CLI commands in this process, pointed at the test cluster's API (exit code 0 asserted)."""

    def run(*argv: str) -> str:
        return cli_ok(rayfin_env.api_url, *argv)

    return run


POOLS = {"general": 8.0, "risk": 8.0}      # configs/test.yaml, every island up


def test_metrics_endpoint_has_rayfin_metrics_with_desk_tags(rayfin_env, connect_desk):
    fx = connect_desk("fx")
    job = fx.submit(hold, 0.5, gpus=1, name="metrics-probe")
    assert job.wait(timeout=60).state.value == "SUCCEEDED"
    assert rayfin_env.metrics_url and rayfin_env.metrics_url.endswith("/metrics")

    def seen():
        series = scrape(rayfin_env.metrics_url)
        finished = [s for s in series.get("ray_rayfin_jobs_finished_total", [])
                    if s.get("desk") == "fx" and s.get("state") == "SUCCEEDED"]
        # Gauges are published every few seconds: the pools' may still show GPUs that an earlier
        # module's work held outside rayfin (a second controller's groups) a moment ago.
        pools = {s["pool"]: s["__value__"] for s in series.get("ray_rayfin_pool_gpus_capacity", [])}
        return series if finished and "ray_rayfin_gpus_nominal" in series and pools == POOLS else None

    series = wait_for(seen, timeout=60, interval=1.0, what="rayfin metrics on Ray's endpoint")
    nominal = {s["desk"]: s["__value__"] for s in series["ray_rayfin_gpus_nominal"]}
    assert nominal == {"equities": 4.0, "fx": 4.0, "risk": 8.0, "quant": 0.0}
    for name in ("ray_rayfin_gpus_in_use", "ray_rayfin_gpus_borrowed", "ray_rayfin_gpus_lent",
                 "ray_rayfin_queue_depth", "ray_rayfin_queue_oldest_wait_seconds", "ray_rayfin_jobs_submitted_total",
                 "ray_rayfin_admissions_total"):
        assert any(s.get("desk") == "fx" for s in series.get(name, [])), name
    assert any(s.get("desk") == "fx" for s in series["ray_rayfin_job_duration_seconds_bucket"])
    steps = {s.get("step") for s in series["ray_rayfin_controller_cycle_ms_bucket"]}
    assert {"observe", "decide", "act", "total"} <= steps
    pools = {s["pool"]: s["__value__"] for s in series["ray_rayfin_pool_gpus_capacity"]}
    assert pools == POOLS


def _row(section: str, name: str) -> list[str]:
    (line,) = [ln for ln in section.splitlines() if ln.split() and ln.split()[0] == name]
    return line.split()


def test_status_prints_the_desk_table(rayfin_env, connect_desk, cli_env):
    admin = connect_desk(None)
    wait_for(lambda: all(r["in_use"] == 0 and r["queued"] == 0 for r in admin.usage().values()), timeout=60,
             what="an idle cluster")
    out = cli_env("status", "--token", TOKENS["admin"])
    table = admin.usage()
    assert "\x1b[" not in out                                            # --color never
    desks, pool_table = out.split("\n\n", 1)                          # desks table, then pools table
    for desk, r in table.items():
        cols = _row(desks, desk)
        # desk nominal in_use serving borrowed lent queued running done failed preempt
        assert [float(c) for c in cols[1:7]] == [r["nominal"], r["in_use"], r["serving"], r["borrowed"], r["lent"],
                                                 r["queued"]]
        assert int(cols[8]) == r.get("succeeded", 0) and int(cols[9]) == r.get("failed", 0)
    pools = admin.pools()
    for name, p in pools.items():
        cols = _row(pool_table, name)
        assert [float(c) for c in cols[1:5]] == [p["capacity"], p["lost"], p["in_use"], p["free"]]
    # a desk token sees only its own row
    mine = cli_env("status", "--token", TOKENS["fx"])
    assert _row(mine, "fx") and not [ln for ln in mine.splitlines() if ln.startswith("equities")]


def test_explain_says_why_a_job_waits_and_where_it_ran(rayfin_env, connect_desk, cli_env, tmp_path):
    fx = connect_desk("fx")
    wait_for(lambda: fx.usage()["in_use"] == 0, timeout=60, what="fx idle")
    # The big job fills fx's 4 GPUs until the test lets it finish (a file), not for a fixed time:
    # the small job must still be waiting when `rayfin explain` looks, however slow the machine.
    release = tmp_path / "release-big"
    big = fx.submit(hold_until, str(release), gpus=4, name="fills-fx")
    try:
        wait_for(lambda: big.status().state.value == "RUNNING", timeout=90, what="big job running")
        small = fx.submit(hold, 0.1, gpus=1, name="waits")
        wait_for(lambda: "fx" in ((st := small.status()).reason or "") and st.state.value == "PENDING",
                 timeout=60, what="small job waiting with a reason")
        out = cli_env("explain", small.job_id, "--token", TOKENS["fx"])
        info = fx.explain(small.job_id)
        assert big.status().state.value == "RUNNING"                        # still waiting behind it
        assert f"job {small.job_id} of desk fx: PENDING (1 GPUs)" in out
        assert f"now: {info['job']['reason']}" in out
        assert "last decision: wait: " + "; ".join(info["decision"]["reasons"]) in out
        assert re.search(r"\d\d:\d\d:\d\d submitted\s", out)
    finally:
        release.touch()
    assert small.wait(timeout=120).state.value == "SUCCEEDED"
    assert big.wait(timeout=120).state.value == "SUCCEEDED"
    out = cli_env("explain", big.job_id, "--token", TOKENS["fx"])
    assert f"job {big.job_id} of desk fx: SUCCEEDED (4 GPUs)" in out
    kinds = [ln.split()[1] for ln in out.splitlines() if re.match(r"\s+\d\d:\d\d:\d\d ", ln)]
    assert kinds[:4] == ["submitted", "admitted", "started", "succeeded"]
    assert "within nominal quota (4/4)" in out and "running on" in out
    # Another desk cannot explain fx's job: refused as not found, and nothing of it is printed.
    rc, out, err = cli(rayfin_env.api_url, "explain", big.job_id, "--token", TOKENS["equities"])
    assert rc == 1 and err.startswith("JobNotFound:"), (rc, out, err)
    assert out == ""
