"""HAProxy's `show stat` read for whether each application is served straight by its replicas
(serve_apps/haproxy_edge.backend_states, serve_apps/ingress.wait_for_direct_routes)."""
from __future__ import annotations

from serve_apps import ingress
from serve_apps.haproxy_edge import BackendState, backend_name, backend_states

HEADER = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,"
          "status,weight,act,bck,chkfail,chkdown,lastchg,downtime\n")


def row(px, sv, status, bck):
    return f"{px},{sv},0,0,0,0,,0,0,0,,0,,0,0,0,0,{status},1,{1 - bck},{bck},0,0,5,0\n"


def stat(*rows):
    return HEADER + "".join(rows)


def test_backend_names_follow_serves_spelling():
    assert backend_name("rayfin-model-option-pricer") == "http-rayfin-model-option-pricer"
    assert backend_name("a/b#c d") == "http-a.b-c_d"


def test_replicas_up_are_counted_apart_from_the_backup_proxy():
    text = stat(row("http_frontend", "FRONTEND", "OPEN", 0),
                row("http-app", "replica1", "UP", 0), row("http-app", "replica2", "DOWN 1/2", 0),
                row("http-app", "fallback", "UP", 1), row("http-app", "BACKEND", "UP", 0),
                row("http-cold", "replica1", "DOWN", 0), row("http-cold", "fallback", "UP", 1),
                row("http-failing", "replica1", "UP 1/2", 0), row("http-maint", "replica1", "MAINT", 0))
    got = backend_states(text)
    assert got["http-app"] == BackendState(primary_up=1, primary=2, backup_up=1) and got["http-app"].direct
    assert got["http-cold"] == BackendState(0, 1, 1) and not got["http-cold"].direct   # served by the backup
    assert got["http-failing"].direct                  # still up while it fails fewer checks than `fall`
    assert not got["http-maint"].direct
    assert "http_frontend" not in got
    assert backend_states("") == {} and backend_states("Unknown command\n") == {}


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_the_wait_ends_when_every_haproxy_routes_every_app_to_a_replica():
    clock = Clock()
    answers = {"/s1": [stat(row("http-a", "r", "DOWN", 0), row("http-b", "r", "UP", 0)),
                       stat(row("http-a", "r", "UP", 0), row("http-b", "r", "UP", 0))],
               "/s2": [stat(row("http-a", "r", "UP", 0), row("http-b", "r", "UP", 0))]}

    def call(sock, command):
        assert command == "show stat"
        got = answers[sock]
        return got.pop(0) if len(got) > 1 else got[0]

    r = ingress.wait_for_direct_routes(["a", "b"], lambda: ["/s1", "/s2"], call=call, timeout_s=10, poll_s=0.5,
                                       clock=clock, sleep=clock.sleep)
    assert r.ready and r.reason == "direct" and r.waited_s == 0.5          # one poll with /s1 still cold
    assert r.backends["http-a"]["/s1"]["primary_up"] == 1


def test_the_wait_gives_up_and_says_which_backend_is_still_on_the_proxy():
    clock = Clock()
    cold = stat(row("http-a", "r", "UP", 0), row("http-b", "r", "DOWN", 0), row("http-b", "f", "UP", 1))
    r = ingress.wait_for_direct_routes(["a", "b"], lambda: ["/s1"], call=lambda s, c: cold, timeout_s=2,
                                       poll_s=0.5, clock=clock, sleep=clock.sleep)
    assert not r.ready and r.reason == "timeout" and r.waited_s >= 2
    assert r.backends["http-b"]["/s1"] == {"primary_up": 0, "primary": 1, "backup_up": 1}
    # No HAProxy to ask (none started yet, or none on this machine): not ready, said so.
    r = ingress.wait_for_direct_routes(["a"], lambda: [], timeout_s=1, poll_s=0.5, clock=clock, sleep=clock.sleep)
    assert not r.ready and r.reason == "no_admin_socket"

    def refused(sock, command):
        raise ConnectionRefusedError(sock)
    r = ingress.wait_for_direct_routes(["a"], lambda: ["/s1"], call=refused, timeout_s=1, poll_s=0.5,
                                       clock=clock, sleep=clock.sleep)
    assert not r.ready and r.backends == {"http-a": {"/s1": None}}
