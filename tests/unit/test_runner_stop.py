"""Whether a job was told to stop before it ended (rayfin.context: `stop_seen`), as a rank and a
gang report it in their polls: the controller keeps a run that ended without being told as
finished, even when a stop was asked for meanwhile (a preemption's or a resize's grace). No Ray:
the context, and a rank's and a gang's poll, without starting the job."""
from __future__ import annotations

import subprocess
import sys

from rayfin.context import JobContext
from rayfin.runner import _Gang, _Rank


def _ctx() -> JobContext:
    return JobContext("j-1", "fx", 1.0, (("n0-i0", 1.0),), "pg")


def test_asked_is_not_told_until_the_job_looks():
    ctx = _ctx()
    assert ctx.should_stop() is False and ctx.should_stop_all() is False and ctx.stop_seen is False
    ctx.stop_event.set()                    # rayfin asks (request_stop)
    assert ctx.stop_seen is False           # asked, not yet seen: a job returning now finished its work
    assert ctx.should_stop() is True and ctx.stop_seen is True


def test_should_stop_all_tells_the_job_too():
    ctx = _ctx()
    ctx.stop_event.set()
    assert ctx.should_stop_all() is True and ctx.stop_seen is True


def test_a_ranks_poll_says_whether_it_was_told():
    rank = _Rank(_ctx(), "callable", b"", 1 << 20, 1 << 16)
    assert rank.poll(0)["stopped"] is False
    rank.request_stop()                     # a callable is told only through should_stop
    assert rank.poll(0)["stopped"] is False
    rank.ctx.should_stop()
    assert rank.poll(0)["stopped"] is True


def test_a_command_is_told_by_its_sigterm():
    rank = _Rank(_ctx(), "entrypoint", "true", 1 << 20, 1 << 16)
    rank._proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        rank.request_stop()
        assert rank.poll(0)["stopped"] is True
        assert rank._proc.wait(10) != 0
    finally:
        rank._proc.kill()


def test_a_gang_was_told_when_any_rank_was():
    gang = object.__new__(_Gang)             # only its bookkeeping: no runner, no Ray
    gang.world_size, gang._offsets, gang._lock = 2, [0, 0], __import__("threading").Lock()
    gang._pending_logs, gang.rank_state, gang.results = [], ["RUNNING"] * 2, [None] * 2
    gang.rank_error, gang.rank_finished, gang.rank_stopped = [""] * 2, [None] * 2, [False] * 2
    gang._take(0, {"state": "SUCCEEDED", "stopped": False, "result": b"a"})
    gang._take(1, {"state": "SUCCEEDED", "stopped": False, "result": b"b"})
    assert not any(gang.rank_stopped)
    gang._take(1, {"state": "SUCCEEDED", "stopped": True, "result": b"b"})
    assert any(gang.rank_stopped)
    gang._take(0, {"state": "SUCCEEDED", "result": b"a"})    # a rank that says nothing: as if told
    assert gang.rank_stopped[0] is True
