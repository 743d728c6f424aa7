"""GPU use outside rayfin on the real cluster: a job of desk fx starts `@ray.remote(num_gpus=4)`
tasks itself. The controller's patrol finds them through Ray's state API, stops them, fails the
job that started them, audits and counts it, and while they ran `rayfin status` showed their
GPUs as taken."""
from __future__ import annotations

import time
import urllib.request

from tests.support.cluster import TOKENS, cli_ok, wait_for


def grab_gpus_outside_rayfin(marker: str, n: int = 2, hold_s: float = 120.0) -> str:
    """Desk code that bypasses rayfin: plain Ray tasks asking for whole GPU nodes."""
    import ray

    @ray.remote(num_gpus=4)
    def hog(path: str, i: int) -> str:
        with open(path, "a") as f:
            f.write(f"start {i} {time.time()}\n")
        time.sleep(hold_s)
        with open(path, "a") as f:
            f.write(f"done {i}\n")
        return "done"

    return ",".join(ray.get([hog.remote(marker, i) for i in range(n)]))


def test_gpu_tasks_started_outside_rayfin_are_found_stopped_audited_counted(rayfin_env, connect_desk, tmp_path):
    fx, admin = connect_desk("fx"), connect_desk(None)
    wait_for(lambda: all(p["outside"] == 0 for p in admin.pools().values()), 60, what="nothing held outside")
    marker = tmp_path / "hogs.txt"
    job = fx.submit(grab_gpus_outside_rayfin, str(marker), gpus=1, name="bypass")
    t_submit = time.time()
    # While they run, rayfin counts their GPUs as taken: in the API and in `rayfin status`.
    try:
        held = wait_for(lambda: (p := admin.pools()) and sum(r["outside"] for r in p.values()) >= 4 and p, 90,
                        interval=0.1, what="GPUs held outside rayfin counted as taken")
    except AssertionError:
        raise AssertionError(f"job: {job.status()}; policing: {admin.policing()}; pools: {admin.pools()}; "
                             f"hogs: {marker.read_text() if marker.exists() else 'never started'}") from None
    assert all(r["capacity"] == r["lost"] + r["outside"] + r["in_use"] + r["free"] for r in held.values())
    status = cli_ok(rayfin_env.api_url, "status", "--token", TOKENS["admin"])
    assert "outside rayfin (enforce)" in status
    view = admin.policing()
    assert view["findings"] and {f["desk"] for f in view["findings"]} == {"fx"}
    assert {f["rayfin_job_id"] for f in view["findings"]} == {job.job_id}
    # Stopped: the job that started them fails with the policing reason, the tasks never finish.
    st = job.wait(timeout=60)
    assert st.state.value == "FAILED" and st.reason.startswith("policing:")
    wait_for(lambda: all(p["outside"] == 0 for p in admin.pools().values()), 60, what="GPUs freed")
    found = [e for e in admin.audit(since=t_submit) if e["kind"] == "outside_found"]
    assert found and all(e["desk"] == "fx" and e["job_id"] == job.job_id for e in found)
    assert {e["data"]["kind"] for e in found} == {"task"} and all(e["data"]["gpus"] == 4 for e in found)

    def all_stopped():       # each finding's stop is audited on the sweep that no longer sees it
        s = [e for e in admin.audit(since=t_submit) if e["kind"] == "outside_stopped"]
        return s if {e["data"]["id"] for e in s} >= {e["data"]["id"] for e in found} else None

    stopped = wait_for(all_stopped, 30, what="every finding's stop audited")
    assert "done" not in (marker.read_text() if marker.exists() else "")
    # fx sees what its own code did; another desk does not.
    assert connect_desk("equities").policing()["findings"] == []
    detect = [e["data"]["detect_s"] for e in found if e["data"]["detect_s"] is not None]
    stop = [e["data"]["stop_s"] for e in stopped]
    print(f"\npolicing: detect_s={detect} stop_s={stop}")

    def counted():
        with urllib.request.urlopen(rayfin_env.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        return [ln for ln in text.splitlines()
                if ln.startswith("ray_rayfin_outside_findings") and 'desk="fx"' in ln and 'kind="task"' in ln]

    assert wait_for(counted, 60, interval=1.0, what="the finding counted in the metric")

