"""A job of desk fx whose code finds risk's runners through Ray (`list_named_actors`) and calls
their methods cannot stop, read or alter a risk job: the risk job succeeds with its own result."""
from __future__ import annotations

from tests.support.cluster import wait_for
from tests.support.jobs import hold


def meddle(namespace: str = "rayfin-desk-risk") -> dict[str, str]:
    """Hostile desk code: every method of every runner of another desk, with and without a guess."""
    import ray

    out: dict[str, str] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] != namespace:
            continue
        handle = ray.get_actor(entry["name"], namespace=namespace)
        # Every method the handle exposes (Ray lets a caller invoke underscored ones too), with no
        # secret and with a guessed one.
        exposed = sorted(m for m in dir(handle) if not m.startswith("__") and hasattr(getattr(handle, m), "remote"))
        out[f"{entry['name']}.methods"] = "refused: PermissionError: " + ",".join(exposed)
        for method, args in [(m, a) for m in exposed for a in ((), ("0" * 64,))]:
            key = f"{entry['name']}.{method}{'(guess)' if args else ''}"
            try:
                ray.get(getattr(handle, method).remote(*args), timeout=30)
                out[key] = "ALLOWED"
            except Exception as exc:  # noqa: BLE001 - what Ray hands back is the point
                out[key] = f"refused: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return out


def test_fx_code_cannot_stop_read_or_alter_a_risk_job(connect_desk):
    risk, fx = connect_desk("risk"), connect_desk("fx")
    victim = risk.submit(hold, 12.0, "risk's own answer", gpus=2, name="victim")
    wait_for(lambda: victim.status().state.value == "RUNNING", 90, what="risk job running")
    report = fx.submit(meddle, gpus=1, name="meddler").result(timeout=120)
    assert any(victim.job_id in k for k in report), report                 # it did find risk's runner
    assert not [k for k, v in report.items() if v == "ALLOWED"], report    # and every call was refused
    assert all(v.startswith("refused") for v in report.values()), report
    # With a guessed secret the runner itself refuses; with none, Ray refuses the call (the secret
    # is a required argument).
    guessed = {k: v for k, v in report.items() if k.endswith("(guess)")}
    assert guessed and all("RunnerAccessDenied" in v or "PermissionError" in v for v in guessed.values()), report
    methods = [v for k, v in report.items() if k.endswith(".methods")]
    assert methods and all(m.endswith("poll,request_stop,start") for m in methods), methods   # nothing else
    assert victim.result(timeout=120) == "risk's own answer"                # never stopped, result its own
    st = victim.status()
    assert st.state.value == "SUCCEEDED" and st.attempts == 0
