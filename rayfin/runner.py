"""What runs inside a job's placement group: one worker process per gang rank.

A job of W workers has one bundle per worker (bundle i = rank i, ranks in topology order, see
placement.ranks). Rank 0 runs in the `JobRunner` actor, which is also the job's coordinator: it
is detached and named (`job-<key>-<tag>` in the desk's namespace) so a restarted controller finds it
again, and it starts one `GangWorker` actor for every other rank. The workers are owned by the
runner, so when the runner goes (released by the controller, or its node dies) Ray stops them
too: no worker outlives its job.

Every actor holds exactly its bundle's GPUs (Ray sets CUDA_VISIBLE_DEVICES) and gets the
torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR,
MASTER_PORT). Rank 0 binds the rendezvous port and the runner hands it to the others before any
rank starts (asking rank 0 for it while it sits inside `init_process_group` would deadlock).

All or nothing: the runner watches every rank on its own thread, so a failing rank stops the
whole gang within seconds even while the controller is down. Only the controller drives a
runner: every call carries a per-job secret, and the workers have no names to look them up by.
"""
from __future__ import annotations

import contextvars
import ctypes
import hashlib
import hmac
import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Sequence

import ray
import ray.util
from ray import cloudpickle
from ray.exceptions import RayError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rayfin.context import JobContext, job_context, set_job_context

_PR_SET_PDEATHSIG = 1
STOP_WAIT_S = 3.0        # after one rank fails: how long the others get to stop before they are killed
MONITOR_INTERVAL_S = 0.25
SETTLE_S = 1.0          # after a rank fails: wait this long for a peer's death to show before blaming it


class RunnerAccessDenied(PermissionError):
    """A call to a job's runner without the job's secret (only the controller holds it)."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6").prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def entrypoint_argv(command: str) -> list[str]:
    """Split a command line; a bare `python`/`python3` becomes this interpreter (the venv's)."""
    argv = shlex.split(command)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def _check(secret: str, given: str | None) -> None:
    if not secret or not isinstance(given, str) or not hmac.compare_digest(secret.encode(), given.encode()):
        raise RunnerAccessDenied("this job's runner answers only the rayfin controller")


PROVE_CONTEXT = b"rayfin-prove:"
MAX_NONCE_BYTES = 64


def proof(secret: str, nonce: bytes) -> str:
    """What a runner holding `secret` answers to the challenge `nonce` (JobRunner.prove): an
    HMAC under the secret, in its own domain (never the secret, nor a value `_check` accepts)."""
    if not isinstance(nonce, bytes) or not 0 < len(nonce) <= MAX_NONCE_BYTES:
        raise ValueError(f"a challenge is 1 to {MAX_NONCE_BYTES} bytes")
    return hmac.new(secret.encode(), PROVE_CONTEXT + nonce, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------------- logs
class LogBuffer:
    """The last `limit` bytes of a rank's output, with a running offset so a reader can ask for
    what came after what it already has."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1024, int(limit))
        self._chunks: list[str] = []
        self._size = 0
        self._start = 0          # offset of the first kept character
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            self._chunks.append(text)
            self._size += len(text)
            while self._size > self.limit and len(self._chunks) > 1:
                dropped = self._chunks.pop(0)
                self._size -= len(dropped)
                self._start += len(dropped)
            if self._size > self.limit:   # one huge chunk: keep its tail
                keep = self._chunks[0][-self.limit:]
                self._start += len(self._chunks[0]) - len(keep)
                self._chunks[0], self._size = keep, len(keep)

    @property
    def end(self) -> int:
        return self._start + self._size

    def read(self, offset: int, most: int = 256 * 1024) -> tuple[str, int]:
        """Text from `offset` (or the oldest kept, if that was dropped), at most `most` chars."""
        with self._lock:
            text = "".join(self._chunks)
            begin = max(0, offset - self._start)
            out = text[begin:begin + most]
            return out, self._start + begin + len(out)


class _Tee:
    """sys.stdout / sys.stderr of a rank's process: writes go to Ray's log file and the buffer."""

    def __init__(self, inner: Any, buffer: LogBuffer) -> None:
        self._inner, self._buffer = inner, buffer

    def write(self, text: str) -> int:
        self._buffer.write(text)
        return int(self._inner.write(text))

    def flush(self) -> None:
        self._inner.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# ---------------------------------------------------------------------------------- one rank
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port: int = s.getsockname()[1]
        return port


def _node_ip() -> str:
    return str(ray.util.get_node_ip_address())


def _wants_process_group(dist_backend: str | None, world_size: int, comm: str = "none") -> bool:
    """Initialise torch.distributed for a callable when torch is there: always for a gang or a job
    that declared `comm="allreduce"` (a one-GPU pool runs a per-GPU gang as one worker, and its
    code still calls the collectives), and otherwise for a single worker only if the job's code
    already imported torch (so plain jobs pay no import)."""
    if dist_backend is None:
        return False
    if world_size > 1 or comm == "allreduce":
        return importlib.util.find_spec("torch") is not None
    return "torch" in sys.modules


CHECKPOINT_LOOK_S = 2.0   # how often rank 0 looks at its checkpoint_dir for a new checkpoint
CHECKPOINT_LOOK_MAX = 4096   # files looked at per look, at most (a folder of many shards: the newest so far)
_NOT_CHECKPOINTS = (".tmp", ".log", ".partial", ".lock")   # suffixes of files that are not (yet) a checkpoint


def _counts(name: str) -> bool:
    return not (name.startswith(".") or name.endswith(_NOT_CHECKPOINTS) or name.startswith("events.out.tfevents"))


def _checkpoint_files(path: str, limit: int) -> Iterator[float]:
    """The modification times of the files in `path` and its sub-folders one level down that may
    be a checkpoint (`_counts`), at most `limit` of them; a file removed while looked at is skipped."""
    seen = 0
    with os.scandir(path) as it:
        for e in it:
            if not _counts(e.name):
                continue
            try:
                if e.is_dir(follow_symlinks=False):
                    with os.scandir(e.path) as sub:
                        files = [f for f in sub if _counts(f.name) and f.is_file(follow_symlinks=False)]
                elif e.is_file(follow_symlinks=False):
                    files = [e]
                else:
                    continue
                for f in files:
                    if seen >= limit:
                        return
                    seen += 1
                    yield f.stat().st_mtime
            except OSError:
                continue


def newest_mtime(path: str, limit: int = CHECKPOINT_LOOK_MAX) -> float | None:
    """The newest modification time of the files in `path` and its sub-folders one level down
    (a checkpoint is a file or a folder of files), leaving out hidden files, temporaries, logs
    and TensorBoard events; at most `limit` files looked at. None: no file, or no such folder."""
    try:
        return max(_checkpoint_files(path, limit), default=None)
    except OSError:
        return None


class CheckpointWatch:
    """Rank 0 sees its job's checkpoints without the job saying so: a file of `checkpoint_dir`
    newer than at the last look is a checkpoint saved since that look. The first look (at the
    rank's start) is the baseline: what earlier attempts left. The moment recorded is the previous
    look's, on this process's monotonic clock: the file system's clock (a shared volume's server)
    is never compared with ours, and the work at stake is not under-stated. A job that calls
    `JobContext.report_checkpoint()` is seen at once; a command, which cannot, is seen this way.
    Looks run on a thread of their own (`watch`), so a slow volume never holds up the rank's
    polls or the gang's monitor; the job's own thread takes a last look as the run ends, before
    the rank reports its end (a checkpoint saved in a preemption's grace counts)."""

    def __init__(self, path: str, every_s: float = CHECKPOINT_LOOK_S) -> None:
        self.path, self.every_s = path, every_s
        self._seen: float | None = None
        self._looked: float | None = None
        self._lock = threading.Lock()

    def watch(self, ctx: JobContext, done: Any, name: str) -> None:
        """On a daemon thread: the baseline, then a look every `every_s` until `done()` (nothing
        on the caller's thread: a hung volume must not hold up the rank's start)."""
        if not self.path:
            return

        def loop() -> None:
            self.look(ctx)
            while not done():
                time.sleep(self.every_s)
                if not done():
                    self.look(ctx)
        threading.Thread(target=loop, name=name, daemon=True).start()

    def last_look(self, ctx: JobContext, timeout_s: float = 5.0) -> None:
        """A forced look as the run ends, waited for at most `timeout_s` (a hung volume must not
        keep a finished job from reporting its end: it is then costed from its last look)."""
        if not self.path:
            return
        t = threading.Thread(target=self.look, args=(ctx,), kwargs={"force": True}, daemon=True,
                             name="rayfin-ckpt-last")
        try:      # never raises: it runs as the job's run ends, whose outcome it must not change
            t.start()
        except RuntimeError:   # no thread to be had: the job is costed from its last look
            return
        t.join(timeout_s)

    def look(self, ctx: JobContext, now: float | None = None, force: bool = False) -> None:
        """`force`: look even if the last look was less than `every_s` ago (the run ended)."""
        if not self.path:
            return
        with self._lock:
            now = time.monotonic() if now is None else now
            if not force and self._looked is not None and now - self._looked < self.every_s:
                return
            newest = newest_mtime(self.path)
            before, self._looked = self._looked, now
            if before is None:              # the baseline
                self._seen = newest
                return
            if newest is not None and (self._seen is None or newest > self._seen):
                self._seen = newest
                if ctx.checkpoint_mono is None or ctx.checkpoint_mono < before:
                    ctx.checkpoint_mono = before


class _Rank:
    """One rank's execution in its own process: the callable or the command, its output, its state."""

    def __init__(self, ctx: JobContext, kind: str, payload: bytes | str, max_result_bytes: int,
                 max_log_bytes: int, comm: str = "none") -> None:
        self.ctx = ctx
        self.kind = kind
        self.comm = comm
        self.payload = payload
        self.max_result_bytes = max_result_bytes
        self.logs = LogBuffer(max_log_bytes)
        self.state = "STARTING"
        self.result: bytes | None = None
        self.error = ""
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.raised_at: float | None = None    # when the job's code raised (orders a gang's failures)
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self.env: dict[str, str] = {}
        self._checkpoints = CheckpointWatch(ctx.checkpoint_dir if ctx.rank == 0 else "")

    def describe(self) -> dict[str, Any]:
        rc = ray.get_runtime_context()
        labels = rc.get_node_labels() or {}
        return {"rank": self.ctx.rank, "node_id": rc.get_node_id(), "island": labels.get("rayfin.io/island", ""),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "pid": os.getpid()}

    @staticmethod
    def _island() -> str:
        try:
            return str((ray.get_runtime_context().get_node_labels() or {}).get("rayfin.io/island", ""))
        except Exception:  # noqa: BLE001 - outside Ray (unit tests)
            return ""

    def prepare(self) -> dict[str, Any]:
        out = self.describe()
        if self.ctx.rank == 0:
            out["master_addr"], out["master_port"] = _node_ip(), _free_port()
        return out

    def start(self, master_addr: str, master_port: int, dist_backend: str | None) -> None:
        with self._lock:
            if self._thread is not None:
                return
            c = self.ctx
            self.env = {"RANK": str(c.rank), "WORLD_SIZE": str(c.world_size), "LOCAL_RANK": str(c.local_rank),
                        "LOCAL_WORLD_SIZE": str(c.local_world_size), "NODE_RANK": str(c.node_rank),
                        "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port),
                        "RAYFIN_JOB_ID": c.job_id, "RAYFIN_DESK": c.desk, "RAYFIN_ATTEMPT": str(c.attempt),
                        "RAYFIN_CHECKPOINT_DIR": c.checkpoint_dir, "RAYFIN_ISLAND": self._island(),
                        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
            os.environ.update(self.env)   # this process runs only this rank
            sys.stdout = _Tee(sys.__stdout__ if not isinstance(sys.stdout, _Tee) else sys.stdout._inner, self.logs)
            sys.stderr = _Tee(sys.__stderr__ if not isinstance(sys.stderr, _Tee) else sys.stderr._inner, self.logs)
            self.started_at = time.time()
            self._checkpoints.watch(self.ctx, lambda: self.state in ("SUCCEEDED", "FAILED"),
                                    f"rayfin-ckpt-{c.job_id}")   # first: the baseline, what earlier attempts left
            self.state = "RUNNING"
            # A copy of this context, so the job's own Ray calls join the job's trace.
            run = contextvars.copy_context().run
            self._thread = threading.Thread(target=run, args=(self._run, dist_backend),
                                            name=f"rayfin-job-{c.job_id}-r{c.rank}", daemon=True)
            self._thread.start()

    def poll(self, log_offset: int) -> dict[str, Any]:
        state = self.state   # before the logs: a finished rank's poll then carries all of its output
        text, offset = self.logs.read(log_offset)
        out = {"state": state, "error": self.error, "progress": self.ctx.progress, "logs": text,
               "log_offset": offset, "failed_at": self.raised_at, "stopped": self.ctx.stop_seen,
               "checkpoint_age_s": self.ctx.checkpoint_age_s()}
        if state in ("SUCCEEDED", "FAILED"):
            out["result"] = self.result
        return out

    def request_stop(self) -> None:
        with self._lock:    # with _run_entrypoint's start: a stop asked before the command exists reaches it
            self.ctx.stop_event.set()
            self._signal_stop()

    def _signal_stop(self) -> None:
        """SIGTERM to a running command, which tells it, once (a second signal means "exit now" to
        many programs, which would cost it its grace). Call with `_lock` held."""
        proc = self._proc
        if proc is not None and proc.poll() is None and not self.ctx.told:
            self.ctx.told = True
            proc.send_signal(signal.SIGTERM)

    def _run(self, dist_backend: str | None) -> None:
        set_job_context(self.ctx)
        try:
            if self.ctx.checkpoint_dir:
                Path(self.ctx.checkpoint_dir).mkdir(parents=True, exist_ok=True)
            value = self._run_entrypoint() if self.kind == "entrypoint" else self._run_callable(dist_backend)
            self._checkpoints.last_look(self.ctx)   # a checkpoint saved as it stopped (rank 0), before the end is reported
            blob = cloudpickle.dumps(value)
            if len(blob) > self.max_result_bytes:
                raise ValueError(f"result is {len(blob)} bytes; the limit is {self.max_result_bytes} "
                                 "(controller.max_result_bytes): write large outputs to storage and return a path")
            self.result = blob
            self.state = "SUCCEEDED"
        except BaseException as exc:  # the job's own failure: report it, never crash the runner
            self.raised_at = self.raised_at or time.time()
            self._checkpoints.last_look(self.ctx)
            tb = traceback.format_exc(limit=8)
            self.error = f"{type(exc).__name__}: {exc}\n{tb[-4000:]}"
            self.logs.write(tb)
            self.state = "FAILED"
        finally:
            self.finished_at = time.time()
            self.ctx.progress = 1.0 if self.state == "SUCCEEDED" else self.ctx.progress

    def _run_callable(self, dist_backend: str | None) -> Any:
        fn, args, kwargs = cloudpickle.loads(self.payload)
        if not _wants_process_group(dist_backend, self.ctx.world_size, self.comm):
            return fn(*args, **kwargs)
        import torch
        import torch.distributed as dist

        backend = dist_backend if dist_backend in ("gloo", "nccl") else (
            "nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(0)   # Ray's CUDA_VISIBLE_DEVICES: device 0 is this worker's first GPU
        dist.init_process_group(backend, init_method=f"tcp://{self.env['MASTER_ADDR']}:{self.env['MASTER_PORT']}",
                                rank=self.ctx.rank, world_size=self.ctx.world_size, timeout=timedelta(minutes=30))
        try:
            return fn(*args, **kwargs)
        except BaseException:
            self.raised_at = time.time()   # before the group goes: its peers fail right after this
            raise
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()

    def _run_entrypoint(self) -> dict[str, Any]:
        argv = entrypoint_argv(str(self.payload))
        env = dict(os.environ, **self.env)
        with self._lock:
            proc = self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                                 preexec_fn=_die_with_parent, text=True, bufsize=1)
            if self.ctx.stop_event.asked():    # asked to stop while it was starting
                self._signal_stop()
        tail: list[str] = []
        size = 0
        assert proc.stdout is not None
        for line in proc.stdout:
            self.logs.write(line)
            tail.append(line)
            size += len(line)
            while size > 16000 and len(tail) > 1:
                size -= len(tail.pop(0))
        rc = proc.wait()
        out = "".join(tail)[-16000:]
        if rc != 0:
            raise RuntimeError(f"entrypoint exited with code {rc}; output tail:\n{out[-2000:]}")
        return {"returncode": 0, "output": out}


def _context(job_id: str, desk: str, placement: Sequence[Sequence[Any]], pg_name: str, slot: dict[str, Any], world_size: int,
             checkpoint_dir: str, attempt: int) -> JobContext:
    return JobContext(job_id, desk, float(slot.get("gpus", 0.0)) * world_size,
                      tuple(tuple(p) for p in placement), pg_name, rank=int(slot["rank"]), world_size=world_size,
                      local_rank=int(slot.get("local_rank", 0)), local_world_size=int(slot.get("local_world_size", 1)),
                      node_rank=int(slot.get("node_rank", 0)), checkpoint_dir=checkpoint_dir, attempt=attempt)


class GangWorker:
    """Rank r >= 1 of a gang. Decorated with @ray.remote by the runner (kept plain for testing)."""

    def __init__(self, secret: str, job_id: str, desk: str, kind: str, payload: bytes | str,
                 placement: list[tuple[str, float]], placement_group_name: str, slot: dict[str, Any],
                 world_size: int, checkpoint_dir: str, attempt: int, max_result_bytes: int,
                 max_log_bytes: int) -> None:
        self._secret = secret
        ctx = _context(job_id, desk, placement, placement_group_name, slot, world_size, checkpoint_dir, attempt)
        self.rank = _Rank(ctx, kind, payload, max_result_bytes, max_log_bytes)

    def __repr__(self) -> str:  # the Ray dashboard's actor list
        c = self.rank.ctx
        return f"GangWorker(job={c.job_id}, desk={c.desk}, rank={c.rank}/{c.world_size})"

    def prepare(self, secret: str) -> dict[str, Any]:
        _check(self._secret, secret)
        return self.rank.prepare()

    def start(self, secret: str, master_addr: str, master_port: int, dist_backend: str | None) -> None:
        _check(self._secret, secret)
        self.rank.start(master_addr, master_port, dist_backend)

    def poll(self, secret: str, log_offset: int = 0) -> dict[str, Any]:
        _check(self._secret, secret)
        return self.rank.poll(log_offset)

    def request_stop(self, secret: str) -> None:
        _check(self._secret, secret)
        self.rank.request_stop()


# ---------------------------------------------------------------------------------- the runner
class _Gang:
    """Rank 0 and the gang's coordinator, inside the runner actor. A plain object, not the actor
    class itself: Ray lets any caller holding the actor's handle invoke every method the actor
    class has, underscored ones too, so the actor exposes only the secret-checked calls."""

    def __init__(self, secret: str, job_id: str, desk: str, kind: str, payload: bytes | str,
                 placement: list[tuple[str, float]], placement_group_name: str, slots: list[dict[str, Any]],
                 *, max_result_bytes: int, max_log_bytes: int = 1 << 20, priority: str = "normal",
                 dist_backend: str | None = "auto", checkpoint_dir: str = "", attempt: int = 0,
                 comm: str = "none") -> None:
        self._secret = secret
        self.priority = priority
        self.slots = [dict(s) for s in slots] or [{"rank": 0, "gpus": sum(g for _, g in placement)}]
        self.world_size = len(self.slots)
        self.dist_backend = dist_backend
        self._spec = (job_id, desk, kind, payload, [list(p) for p in placement], placement_group_name,
                      checkpoint_dir, attempt, max_result_bytes, max_log_bytes)
        ctx = _context(job_id, desk, placement, placement_group_name, self.slots[0], self.world_size,
                       checkpoint_dir, attempt)
        self.rank0 = _Rank(ctx, kind, payload, max_result_bytes, max_log_bytes, comm)
        self.ctx = ctx
        self.workers: list[Any] = []         # handles of ranks 1..W-1
        self.where: list[dict[str, Any]] = []
        self.state = "STARTING"
        self.error = ""
        self.results: list[bytes | None] = [None] * self.world_size
        self.rank_state = ["STARTING"] * self.world_size
        self.rank_error = [""] * self.world_size
        self.rank_finished: list[float | None] = [None] * self.world_size
        self.rank_stopped = [False] * self.world_size     # told to stop before it ended (_Rank.poll)
        self._offsets = [0] * self.world_size
        self._pending_logs: list[tuple[int, str]] = []
        self._lock = threading.RLock()     # start() holds it and may _fail(), which takes it too
        self._started = False
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    def start(self) -> dict[str, Any]:
        """Where the gang runs, and its state: LOST (with `error`) when its workers could not be
        brought up, so the controller never takes a gang that never ran for a running one."""
        with self._lock:
            if not self._started:
                self._started = True
                try:
                    self._launch()
                except Exception as exc:  # noqa: BLE001 - a rank that cannot start fails the gang
                    self._fail(-1, "LOST", f"gang could not start: {type(exc).__name__}: {str(exc)[:500]}")
            state, error = self.state, self.error
        return {**self.describe(), "state": state, "error": error}

    def describe(self) -> dict[str, Any]:
        info = self.rank0.describe()
        info["workers"] = self.where or [info]
        info["world_size"] = self.world_size
        return info

    def poll(self) -> dict[str, Any]:
        with self._lock:
            logs, self._pending_logs = self._pending_logs, []
            state = self.state
        out = {"state": state, "error": self.error, "progress": self.ctx.progress, "logs": logs,
               "rank_states": list(self.rank_state), "started_at": self.rank0.started_at,
               "finished_at": self.rank0.finished_at, "stopped": any(self.rank_stopped),
               "checkpoint_age_s": self.ctx.checkpoint_age_s()}   # rank 0's report (self.ctx is rank 0's)
        if state == "SUCCEEDED":
            out["result"] = self.results[0]
            out["results"] = list(self.results)
        elif state == "FAILED":
            out["result"] = self.results[0]
        return out

    # -- inside --
    def _launch(self) -> None:
        (job_id, desk, kind, payload, placement, pg_name, ckpt, attempt, max_result, max_log) = self._spec
        if self.world_size > 1:
            pg = ray.util.get_placement_group(pg_name)
            cls = ray.remote(GangWorker)
            for slot in self.slots[1:]:
                self.workers.append(cls.options(
                    num_cpus=0, num_gpus=float(slot["gpus"]), max_restarts=0, max_concurrency=4,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=slot["rank"]),
                ).remote(self._secret, job_id, desk, kind, payload, placement, pg_name, slot, self.world_size, ckpt,
                         attempt, max_result, max_log))
        me = self.rank0.prepare()
        others = ray.get([w.prepare.remote(self._secret) for w in self.workers], timeout=300)
        self.where = [me] + list(others)
        addr, port = me["master_addr"], me["master_port"]
        ray.get([w.start.remote(self._secret, addr, port, self.dist_backend) for w in self.workers], timeout=60)
        self.rank0.start(addr, port, self.dist_backend)
        if self._stopping.is_set():    # a stop asked while the workers were being made: they hear it too
            self._stop_all()
        self.state = "RUNNING"
        self.rank_state = ["RUNNING"] * self.world_size
        self._monitor = threading.Thread(target=self._watch, name=f"rayfin-gang-{job_id}", daemon=True)
        self._monitor.start()

    def _watch(self) -> None:
        try:
            self._watch_ranks()
        except Exception as exc:  # noqa: BLE001 - a broken watch must end the gang, not leave it RUNNING
            self._fail(-1, "LOST", f"gang monitor failed: {type(exc).__name__}: {str(exc)[:300]}")

    def _watch_ranks(self) -> None:
        """Poll every rank until the gang ends; the first failure stops the others."""
        while self.state == "RUNNING":
            dead = self._poll_ranks()
            failed = [r for r, s in enumerate(self.rank_state) if s == "FAILED"]
            if failed and not dead:
                # A dead peer often shows first as a collective error in the others: look again
                # before blaming the rank that merely noticed.
                time.sleep(SETTLE_S)
                dead = self._poll_ranks()
                failed = [r for r, s in enumerate(self.rank_state) if s == "FAILED"]
            if dead:
                r = min(dead)
                self._fail(r, "LOST", dead[r])
                return
            if failed:
                # The first to fail is the cause; the others usually fail after it, in a collective
                # whose peer went away.
                r = min(failed, key=lambda k: (self.rank_finished[k] or float("inf"), k))
                self._fail(r, "FAILED", self.rank_error[r] or "failed")
                return
            if all(s == "SUCCEEDED" for s in self.rank_state):
                with self._lock:
                    self.state = "SUCCEEDED"
                return
            time.sleep(MONITOR_INTERVAL_S)

    def _poll_ranks(self) -> dict[int, str]:
        """One poll of every running rank; returns the ranks whose worker died, with why."""
        refs = {w.poll.remote(self._secret, self._offsets[r + 1]): r + 1 for r, w in enumerate(self.workers)
                if self.rank_state[r + 1] == "RUNNING"}
        replies: dict[int, dict[str, Any]] = {0: self.rank0.poll(self._offsets[0])}
        dead: dict[int, str] = {}
        if refs:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=10)
            for ref in ready:
                r = refs[ref]
                try:
                    replies[r] = ray.get(ref)
                except RayError as exc:
                    where = self.where[r] if r < len(self.where) else {}
                    dead[r] = (f"worker died (pid {where.get('pid', '?')}): {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:300]}")
        for r, rep in sorted(replies.items()):
            self._take(r, rep)
        return dead

    def _take(self, rank: int, reply: dict[str, Any]) -> None:
        if reply.get("logs"):
            with self._lock:
                self._pending_logs.append((rank, reply["logs"]))
        self._offsets[rank] = reply.get("log_offset", self._offsets[rank])
        self.rank_state[rank] = reply["state"]
        self.rank_stopped[rank] = bool(reply.get("stopped", True))   # no word: as if told (as before)
        if reply["state"] in ("SUCCEEDED", "FAILED"):
            self.results[rank] = reply.get("result")
            self.rank_error[rank] = reply.get("error", "")
            self.rank_finished[rank] = reply.get("failed_at")

    def _fail(self, rank: int, state: str, error: str) -> None:
        """End the gang: tell every rank to stop, give them STOP_WAIT_S, then kill the workers."""
        if self.world_size == 1:
            self.error = error
        else:
            who = f"rank {rank}" if rank >= 0 else "gang"
            if 0 <= rank < len(self.where):
                who += f" on {self.where[rank].get('island', '?')}"
            self.error = f"{who} of {self.world_size}: {error}"
        self._stop_all()
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline and self.rank0.state == "RUNNING":
            time.sleep(0.05)
        for w in self.workers:
            try:
                ray.kill(w, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        with self._lock:
            self.state = state

    def _stop_all(self) -> None:
        self._stopping.set()
        self.rank0.request_stop()
        for w in self.workers:
            try:
                w.request_stop.remote(self._secret)
            except Exception:  # noqa: BLE001 - a dead worker needs no stop
                pass


class JobRunner:
    """The job's runner actor (rank 0 and the coordinator). Decorated with @ray.remote by the Ray
    backend. The controller calls `start`, `poll` and `request_stop`, each with the job's secret;
    `start` is idempotent, so a re-adopting controller can never run a job twice. Before it
    trusts an actor it found by name (another one may have taken the name first), the
    controller challenges it with `prove`, which shows the secret is held without sending it."""

    def __init__(self, secret: str, *args: Any, **kwargs: Any) -> None:
        self._secret = secret
        self._gang = _Gang(secret, *args, **kwargs)

    def __repr__(self) -> str:  # shown in the Ray dashboard's actor list
        g = self._gang
        return (f"JobRunner(job={g.ctx.job_id}, desk={g.ctx.desk}, priority={g.priority}, "
                f"gpus={g.ctx.gpus:g}, workers={g.world_size})")

    def prove(self, nonce: bytes) -> str:
        """HMAC(secret, b"rayfin-prove:" + nonce): shows the controller that this actor holds the
        job's secret, without the controller sending it. Open to anyone: the answer to a
        challenge reveals nothing that drives the runner (`_check` wants the secret itself)."""
        return proof(self._secret, nonce)

    def start(self, secret: str) -> dict[str, Any]:
        _check(self._secret, secret)
        return self._gang.start()

    def poll(self, secret: str) -> dict[str, Any]:
        _check(self._secret, secret)
        return self._gang.poll()

    def request_stop(self, secret: str) -> None:
        _check(self._secret, secret)
        self._gang._stop_all()


__all__ = ["GangWorker", "JobContext", "JobRunner", "LogBuffer", "RunnerAccessDenied", "entrypoint_argv",
           "job_context", "proof"]
