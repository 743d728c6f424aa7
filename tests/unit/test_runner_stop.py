"""Whether a job was told to stop before it ended (rayfin.context: `stop_seen`), as a rank and a
gang report it in their polls: the controller keeps a run that ended without being told as
finished, even when a stop was asked for meanwhile (a preemption's or a resize's grace). No Ray:
the context, and a rank's and a gang's poll, without starting the job."""
from __future__ import annotations

import subprocess
import sys
import time

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


def test_a_job_reading_the_event_itself_is_told_too():
    ctx = _ctx()
    assert ctx.stop_event.is_set() is False and ctx.stop_event.wait(0) is False and not ctx.stop_seen
    ctx.stop_event.set()
    assert ctx.stop_event.asked() and not ctx.stop_seen      # the runner's look does not count
    assert ctx.stop_event.wait(0) is True and ctx.stop_seen


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


def test_a_command_asked_to_stop_while_it_starts_gets_its_sigterm(monkeypatch):
    monkeypatch.setattr(_Rank, "_island", staticmethod(lambda: ""))   # (Ray's runtime context would start Ray)
    monkeypatch.setattr(sys, "stdout", sys.stdout)      # start() tees them: put them back after
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    rank = _Rank(_ctx(), "entrypoint", f"{sys.executable} -c 'import time; time.sleep(30)'", 1 << 20, 1 << 16)
    rank.request_stop()                     # before the command exists: nothing to signal yet
    assert rank.poll(0)["stopped"] is False
    rank.start("127.0.0.1", 0, None)
    deadline = time.monotonic() + 30
    while rank.poll(0)["state"] not in ("SUCCEEDED", "FAILED") and time.monotonic() < deadline:
        time.sleep(0.05)
    out = rank.poll(0)
    assert (out["state"], out["stopped"]) == ("FAILED", True)    # SIGTERMed at its start, not after 30 s
    assert time.monotonic() < deadline


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


def test_a_gang_that_cannot_start_fails_rather_than_hanging(monkeypatch):
    """start() holds the gang's lock while it launches; a launch that raises fails the gang
    (`_fail` takes the lock again): LOST with why, and poll answers (it hung on its own lock)."""
    import threading

    def cannot(self):
        raise TimeoutError("workers not ready in 300 s")

    monkeypatch.setattr(_Gang, "_launch", cannot)
    monkeypatch.setattr(_Rank, "describe", lambda self: {"rank": self.ctx.rank})   # no Ray
    gang = _Gang("s", "j-1", "fx", "callable", b"", [("n0-i0", 2.0)], "pg",
                 [{"rank": 0, "gpus": 1.0}, {"rank": 1, "gpus": 1.0}], max_result_bytes=1 << 20)
    done = threading.Event()
    threading.Thread(target=lambda: (gang.start(), done.set()), daemon=True).start()
    assert done.wait(30), "start() hung on its own lock"
    out = gang.poll()
    assert out["state"] == "LOST" and "gang could not start: TimeoutError" in out["error"]


def test_a_ranks_poll_reports_its_last_checkpoints_age():
    rank = _Rank(_ctx(), "callable", b"", 1 << 20, 1 << 16)
    assert rank.ctx.checkpoint_age_s() is None and rank.poll(0)["checkpoint_age_s"] is None
    rank.ctx.report_checkpoint()              # the job saved one (rank 0's report counts for a gang)
    time.sleep(0.05)
    age = rank.poll(0)["checkpoint_age_s"]
    assert 0.04 <= age < 5.0
    rank.ctx.report_checkpoint()
    assert rank.poll(0)["checkpoint_age_s"] < age


def test_rank_zero_sees_a_checkpoint_written_to_its_folder(tmp_path):
    # A command cannot call report_checkpoint(): rank 0 sees a file of checkpoint_dir newer than
    # at its last look. What an earlier attempt left is the baseline, not a new checkpoint.
    import os

    from rayfin.runner import CheckpointWatch
    (tmp_path / "old.pt").write_bytes(b"attempt 0")
    os.utime(tmp_path / "old.pt", (1000.0, 1000.0))
    ctx = JobContext("j-1", "fx", 1.0, (("n0-i0", 1.0),), "pg", checkpoint_dir=str(tmp_path))
    watch = CheckpointWatch(str(tmp_path), every_s=2.0)
    watch.look(ctx, now=100.0)                       # baseline (at the rank's start)
    watch.look(ctx, now=103.0)
    assert ctx.checkpoint_mono is None               # nothing new
    (tmp_path / "step").mkdir()
    (tmp_path / "step" / "model.pt").write_bytes(b"attempt 1")   # a folder of files counts too
    watch.look(ctx, now=104.0)                       # too soon after the last look: not looked
    assert ctx.checkpoint_mono is None
    watch.look(ctx, now=105.5)
    assert ctx.checkpoint_mono == 103.0              # saved after the look at 103: never later than that
    (tmp_path / "step" / "model.pt").write_bytes(b"again")
    os.utime(tmp_path / "step" / "model.pt", (2e9, 2e9))
    watch.look(ctx, now=106.0, force=True)           # the run ended: looked at once
    assert ctx.checkpoint_mono == 105.5
    assert CheckpointWatch("", every_s=0).look(ctx) is None     # no folder: nothing to watch
    (tmp_path / "train.log").write_text("a log line")              # not a checkpoint: logs, temporaries,
    (tmp_path / "model.pt.tmp").write_bytes(b"half")               # hidden files, TensorBoard events
    (tmp_path / ".lock").write_bytes(b"")
    for f in ("train.log", "model.pt.tmp", ".lock"):
        os.utime(tmp_path / f, (3e9, 3e9))
    watch.look(ctx, now=110.0)
    assert ctx.checkpoint_mono == 105.5


def test_a_rank_watches_on_a_thread_of_its_own_and_looks_once_more_as_it_ends(tmp_path, monkeypatch):
    # The looks never run inside poll (a slow volume must not hold up the gang's monitor): a
    # thread looks every few seconds, and the job's own thread looks once more as the run ends,
    # so a checkpoint written just before returning counts.
    monkeypatch.setattr(_Rank, "_island", staticmethod(lambda: ""))
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    ckpt = tmp_path / "ckpt"
    cmd = f"{sys.executable} -c \"import os, time; time.sleep(1.5); open(os.path.join(os.environ['RAYFIN_CHECKPOINT_DIR'], 'm.pt'), 'w').write('x')\""
    rank = _Rank(JobContext("j-1", "fx", 1.0, (("n0-i0", 1.0),), "pg", checkpoint_dir=str(ckpt)),
                 "entrypoint", cmd, 1 << 20, 1 << 16)
    rank._checkpoints.every_s = 3600.0       # the thread's looks are far apart: only the last look can see it
    rank.start("127.0.0.1", 0, None)
    deadline = time.monotonic() + 30
    while rank.poll(0)["state"] not in ("SUCCEEDED", "FAILED") and time.monotonic() < deadline:
        time.sleep(0.05)
    out = rank.poll(0)
    assert out["state"] == "SUCCEEDED", out
    assert out["checkpoint_age_s"] is not None and out["checkpoint_age_s"] < 10


def test_only_rank_zero_watches(tmp_path):
    r1 = _Rank(JobContext("j-1", "fx", 1.0, (("n0-i0", 1.0),), "pg", rank=1, checkpoint_dir=str(tmp_path)),
               "callable", b"", 1 << 20, 1 << 16)
    r0 = _Rank(JobContext("j-1", "fx", 1.0, (("n0-i0", 1.0),), "pg", checkpoint_dir=str(tmp_path)),
               "callable", b"", 1 << 20, 1 << 16)
    assert r1._checkpoints.path == "" and r0._checkpoints.path == str(tmp_path)



def test_the_watch_thread_sees_a_checkpoint_while_the_job_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(_Rank, "_island", staticmethod(lambda: ""))
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    ckpt = tmp_path / "ckpt"
    cmd = (f"{sys.executable} -c \"import os, time; time.sleep(1.0); "
           f"open(os.path.join(os.environ['RAYFIN_CHECKPOINT_DIR'], 'm.pt'), 'w').write('x'); time.sleep(20)\"")
    rank = _Rank(JobContext("j-1", "fx", 1.0, (("n0-i0", 1.0),), "pg", checkpoint_dir=str(ckpt)),
                 "entrypoint", cmd, 1 << 20, 1 << 16)
    rank._checkpoints.every_s = 0.2
    rank.start("127.0.0.1", 0, None)
    try:
        deadline = time.monotonic() + 15
        while rank.poll(0)["checkpoint_age_s"] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        out = rank.poll(0)
        assert out["state"] == "RUNNING" and out["checkpoint_age_s"] is not None, out   # seen mid-run
    finally:
        rank.request_stop()
