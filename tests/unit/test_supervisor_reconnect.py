"""`rayfin supervise` after a head death: the connection (a child process) ends, and a new one
connects to the same GCS address, with bounded, logged backoff. The connection seam is faked:
no Ray, no processes."""
from __future__ import annotations

import logging
import signal
import subprocess
import threading

import pytest

from rayfin.errors import RayfinError
from rayfin.supervisor import (LOST, Backoff, ChildConnection, connection_command, keep_connected, node_alive,
                               watch)


class FakeTime(threading.Event):
    """A clock that moves only when the code under test waits, or a connection runs."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0))
        self.now += timeout or 0
        return self.is_set()


def connections(t: FakeTime, runs: list[tuple[float, int]]):
    """run_once: each call lasts `seconds` and ends with `status`, in order."""
    it = iter(runs)
    calls = []

    def run_once() -> int:
        seconds, status = next(it)
        calls.append(t.now)
        t.now += seconds
        return status
    return run_once, calls


def test_reconnects_with_doubling_backoff_reset_by_a_healthy_connection(caplog):
    t = FakeTime()
    # head dies after 100 s up; two failed connects while it restarts; up again 40 s, dies; then stop
    run_once, calls = connections(t, [(100, LOST), (0.1, LOST), (0.1, LOST), (40, LOST), (0.1, LOST), (5, 0)])
    caplog.set_level(logging.WARNING, logger="rayfin.supervisor")
    rc = keep_connected(run_once, t, Backoff(first_s=1, max_s=30, give_up_s=600, healthy_s=30),
                        address="10.0.0.5:6379", clock=t.clock)
    assert rc == 0 and len(calls) == 6
    assert t.waits == [1, 2, 4, 1, 2]              # doubling; the 40 s connection started it over
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 5 and all("10.0.0.5:6379" in m and "reconnecting in" in m for m in msgs)
    assert "attempt 3" in msgs[2] and "attempt 1" in msgs[3]


def test_gives_up_when_the_cluster_stays_gone(caplog):
    t = FakeTime()
    run_once, calls = connections(t, [(0.5, LOST)] * 1000)
    caplog.set_level(logging.WARNING, logger="rayfin.supervisor")
    rc = keep_connected(run_once, t, Backoff(first_s=1, max_s=8, give_up_s=60, healthy_s=30), clock=t.clock)
    assert rc == LOST
    assert max(t.waits) == 8 and 60 <= t.now < 60 + 8 + 1    # capped waits, bounded in time
    assert len(calls) < 15
    assert "giving up" in caplog.records[-1].getMessage()


def test_stop_during_the_wait_ends_it_at_once():
    t = FakeTime()

    def run_once() -> int:
        t.set()          # SIGTERM arrives while this connection is failing
        return LOST
    assert keep_connected(run_once, t, Backoff(), clock=t.clock) == 0 and t.waits == []


def test_backoff_is_checked():
    with pytest.raises(ValueError):
        Backoff(first_s=10, max_s=1)


class FakeSupervisor:
    def __init__(self, script: list) -> None:
        self.script = iter(script)
        self.connected_now = True

    def connected(self) -> bool:
        return self.connected_now

    def check_once(self):
        step = next(self.script)
        if isinstance(step, BaseException):
            raise step
        if step == "disconnect":
            self.connected_now = False
            return None
        return step


def test_one_connection_ends_when_ray_fails_or_the_driver_is_detached():
    said: list[str] = []
    sup = FakeSupervisor([None, {"restart_s": 2.0}, RayfinError("ledger busy"), ConnectionError("GCS gone")])
    assert watch(sup, FakeTime(), 1.0, said.append) == LOST
    assert said[0] == "controller brought back in 2.0s" and said[1].startswith("restart failed")
    assert "ConnectionError" in said[2]
    sup = FakeSupervisor([None, "disconnect"])
    assert watch(sup, FakeTime(), 1.0, said.append) == LOST and said[-1] == "lost the cluster connection"


def test_child_connection_runs_the_one_connection_command_with_the_key_and_ends_it_on_stop():
    stop = threading.Event()
    started: list[tuple[list[str], dict]] = []

    class Proc:
        def __init__(self, cmd, env):
            started.append((cmd, env))
            self.terminated = False

        def wait(self, timeout=None):
            if self.terminated:
                return -15
            stop.set()                                   # SIGTERM to `rayfin supervise` meanwhile
            raise subprocess.TimeoutExpired("x", timeout)

        def send_signal(self, sig):
            assert sig == signal.SIGINT
            self.terminated = True

    cmd = connection_command("/etc/rayfin/config.yaml", "127.0.0.1:6379", 1.0)
    assert cmd[-8:] == ["supervise", "--one-connection", "--config", "/etc/rayfin/config.yaml", "--address",
                        "127.0.0.1:6379", "--interval", "1.0"]
    run_once = ChildConnection(cmd, "k" * 32, stop, popen=lambda c, env: Proc(c, env))
    assert run_once() == 0 and run_once.started == 1
    assert started[0][0] == cmd and started[0][1]["RAYFIN_DEPLOY_KEY"] == "k" * 32


def test_a_driver_attached_through_the_dead_head_is_not_connected():
    """After a head death the GCS is back at the same address, so the driver's GCS calls work,
    but the raylet it was attached through is dead in the node table: reconnect."""
    old_head, new_head, worker = "a" * 56, "b" * 56, "c" * 56
    nodes = [{"NodeID": old_head, "Alive": False}, {"NodeID": new_head, "Alive": True},
             {"NodeID": worker, "Alive": True}]
    assert not node_alive(old_head, nodes)
    assert node_alive(new_head, nodes) and node_alive(worker, nodes)
    assert not node_alive("d" * 56, nodes)
