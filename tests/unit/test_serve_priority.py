"""serve_apps/priority.py: serving replicas set every thread of theirs to serve.replica_niceness."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from serve_apps import priority
from serve_apps.priority import Niceness, set_niceness

# A child process (the test process's own niceness stays as it is): two threads started before
# the call, one after; then each thread's niceness as Linux keeps it.
CHILD = r"""
import json, os, sys, threading
from serve_apps.priority import set_niceness
stop = threading.Event()
before = [threading.Thread(target=stop.wait) for _ in range(2)]
for t in before: t.start()
target = os.getpriority(os.PRIO_PROCESS, 0) + 3
got = set_niceness(target)
after = threading.Thread(target=stop.wait); after.start()
nice = {t: os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")}
stop.set()
print(json.dumps({"target": target, "got": got.as_dict(), "nice": nice}))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux keeps a niceness per thread")
def test_every_thread_of_the_process_gets_the_niceness_and_later_threads_inherit_it():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), check=True)
    r = json.loads(out.stdout)
    assert r["got"]["threads"] >= 3 and r["got"]["changed"] == r["got"]["threads"]
    assert r["got"]["refused"] is None
    assert set(r["nice"].values()) == {r["target"]}          # the started threads and the later one


def test_none_leaves_the_process_alone(monkeypatch):
    monkeypatch.setattr(priority.os, "setpriority", lambda *a: pytest.fail("set a niceness"))
    assert set_niceness(None) == Niceness(None, 0, 0)


def test_a_refused_niceness_is_reported_with_what_to_do_and_serving_goes_on(monkeypatch, caplog):
    def refuse(*a):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(priority.os, "getpriority", lambda *a: 15)
    monkeypatch.setattr(priority.os, "setpriority", refuse)
    monkeypatch.setattr(priority, "_threads", lambda: [11, 12])
    monkeypatch.setattr(priority, "_warned", set())
    got = set_niceness(0)
    assert got.changed == 0 and got.threads == 2
    assert "CAP_SYS_NICE" in got.refused and "serve.replica_niceness" in got.refused
    assert "CAP_SYS_NICE" in caplog.text
    caplog.clear()
    set_niceness(0)
    assert "CAP_SYS_NICE" not in caplog.text                   # logged once per process


def test_threads_already_at_the_niceness_are_left_as_they_are(monkeypatch):
    seen: list = []
    monkeypatch.setattr(priority, "_threads", lambda: [1, 2, 3])
    monkeypatch.setattr(priority.os, "getpriority", lambda which, tid: 0 if tid != 2 else 15)
    monkeypatch.setattr(priority.os, "setpriority", lambda which, tid, n: seen.append((tid, n)))
    assert set_niceness(0) == Niceness(0, 3, 1)
    assert seen == [(2, 0)]


def test_the_config_names_the_field_and_its_range():
    from tests.support.builders import config

    assert config(serve={"enabled": True}).serve.replica_niceness == 0
    assert config(serve={"enabled": True, "replica_niceness": None}).serve.replica_niceness is None
    with pytest.raises(Exception, match="replica_niceness"):
        config(serve={"enabled": True, "replica_niceness": 20})


def test_refused_below_the_rlimit_floor_it_goes_as_low_as_the_limit_allows(monkeypatch):
    """RLIMIT_NICE soft 10 allows 10: a replica at 15 asked for 0 ends at 10, and says why."""
    calls: list = []

    def setp(which, tid, n):
        if n < 10:
            raise PermissionError(13, "Permission denied")
        calls.append((tid, n))

    monkeypatch.setattr(priority, "_threads", lambda: [7, 8])
    monkeypatch.setattr(priority.os, "getpriority", lambda which, tid: 15)
    monkeypatch.setattr(priority.os, "setpriority", setp)
    monkeypatch.setattr(priority, "_floor", lambda: 10)
    monkeypatch.setattr(priority, "_warned", set())
    got = set_niceness(0)
    assert calls == [(7, 10), (8, 10)] and got.changed == 2
    assert "RLIMIT_NICE allows 10" in got.refused


def test_the_niceness_reaches_the_ingress_through_the_environment():
    from serve_apps import ingress
    from serve_apps.priority import NICENESS_ENV, niceness_from_env

    assert niceness_from_env({NICENESS_ENV: "0"}) == 0 and niceness_from_env({}) is None
    assert niceness_from_env({NICENESS_ENV: "x"}) is None
    env: dict = {}
    ingress.install("proxy", env, lambda: 0, niceness=0)
    assert env[NICENESS_ENV] == "0"                  # Serve's proxy reads it in rayfin's callback
    ingress.install("proxy", env, lambda: 0, niceness=None)
    assert NICENESS_ENV not in env


def test_the_proxy_callback_sets_the_niceness_it_is_given(monkeypatch):
    from serve_apps import edge_asgi
    from serve_apps.priority import NICENESS_ENV

    seen: list = []
    monkeypatch.setattr(edge_asgi, "set_niceness", lambda n: seen.append(n))
    monkeypatch.setenv(NICENESS_ENV, "0")
    assert edge_asgi.proxy_middlewares()
    monkeypatch.delenv(NICENESS_ENV)
    edge_asgi.proxy_middlewares()
    assert seen == [0, None]


def test_a_deployment_holds_its_niceness_at_start_and_at_every_health_check(monkeypatch):
    # The mixin rayfin's Serve deployments share: the constructor's pass, then Serve's health
    # check re-applies the same target (threads started since are brought to it).
    calls = []
    monkeypatch.setattr(priority, "set_niceness", lambda t: calls.append(t) or Niceness(t, 4, len(calls)))

    class Deployment(priority.AtNiceness):
        def __init__(self, niceness):
            self.hold_niceness(niceness)

    d = Deployment(0)
    assert calls == [0] and d.niceness == 0 and d.priority == Niceness(0, 4, 1)
    d.check_health()
    assert calls == [0, 0] and d.priority == Niceness(0, 4, 2)
    assert Deployment(None).priority == Niceness(None, 4, 3)    # None passes through (leave as is)
    from serve_apps.model_server import ModelServer
    from serve_apps.deployments import Gateway, QuotaBroker
    for cls in (ModelServer, QuotaBroker, Gateway):              # Serve finds the health check on each
        assert issubclass(cls.func_or_class, priority.AtNiceness)
        assert cls.func_or_class.check_health is priority.AtNiceness.check_health
