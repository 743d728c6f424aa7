"""What runs inside a job's placement group: one detached `JobRunner` actor per job.

The runner holds the GPUs of the job's first bundle (Ray sets CUDA_VISIBLE_DEVICES for it) and
runs either a pickled Python callable or a command line. It is detached and named
(`job-<id>` in the desk's namespace) so a controller restart can find it again, and `start()`
is idempotent so a re-adopting controller can never run a job twice.

Inside a callable, `rayfin.job_context()` gives the job id, desk, GPUs and placement group, and
`should_stop()` turns true when the job is being preempted or cancelled (grace period).
"""
from __future__ import annotations

import contextvars
import ctypes
import hmac
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

_CONTEXT: "JobContext | None" = None
_PR_SET_PDEATHSIG = 1


@dataclass
class JobContext:
    job_id: str
    desk: str
    gpus: float
    placement: tuple[tuple[str, float], ...]
    placement_group_name: str
    stop_event: threading.Event = field(default_factory=threading.Event, repr=False)
    progress: float = 0.0

    def should_stop(self) -> bool:
        """True once rayfin asked this job to stop (preemption grace or cancel)."""
        return self.stop_event.is_set()

    def report_progress(self, fraction: float) -> None:
        """Report progress in [0, 1]; `rayfin watch` and `job.status()` show it."""
        self.progress = max(0.0, min(1.0, float(fraction)))

    @property
    def placement_group(self):
        import ray.util

        return ray.util.get_placement_group(self.placement_group_name)


def job_context() -> JobContext | None:
    """The context of the rayfin job this code runs in, or None outside a job."""
    return _CONTEXT


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


class JobRunner:
    """Runs one job. Decorated with @ray.remote by the Ray backend (kept plain for testing)."""

    def __init__(self, job_id: str, desk: str, kind: str, payload: bytes | str, gpus: float,
                 placement: list[tuple[str, float]], placement_group_name: str, max_result_bytes: int,
                 priority: str = "normal", secret: str | None = None) -> None:
        self.priority = priority
        # Only the controller holds this job's secret: start, poll (the result) and request_stop
        # refuse any other caller, e.g. another desk's code that found this actor by name.
        self._secret = secret
        self.ctx = JobContext(job_id, desk, gpus, tuple(tuple(p) for p in placement), placement_group_name)
        self.kind = kind
        self.payload = payload
        self.max_result_bytes = max_result_bytes
        self.state = "STARTING"
        self.result: bytes | None = None
        self.error = ""
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # shown in the Ray dashboard's actor list
        return (f"JobRunner(job={self.ctx.job_id}, desk={self.ctx.desk}, priority={self.priority}, "
                f"gpus={self.ctx.gpus:g})")

    def _check(self, secret: str | None, action: str) -> None:
        if self._secret is not None and not (isinstance(secret, str)
                                             and hmac.compare_digest(secret.encode(), self._secret.encode())):
            raise PermissionError(f"{action} of job {self.ctx.job_id} refused: only rayfin's controller may "
                                  "drive a job's runner; use the rayfin API")

    def start(self, secret: str | None = None) -> dict[str, Any]:
        self._check(secret, "start")
        with self._lock:
            if self._thread is None:
                self.started_at = time.time()
                self.state = "RUNNING"
                # Run in a copy of this context so the job's own Ray calls join the job's trace.
                ctx = contextvars.copy_context()
                self._thread = threading.Thread(target=ctx.run, args=(self._run,), name=f"rayfin-job-{self.ctx.job_id}",
                                                daemon=True)
                self._thread.start()
        return self.describe()

    def describe(self) -> dict[str, Any]:
        import ray

        rc = ray.get_runtime_context()
        labels = rc.get_node_labels() or {}
        return {
            "node_id": rc.get_node_id(),
            "island": labels.get("rayfin.io/island", ""),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "pid": os.getpid(),
        }

    def poll(self, secret: str | None = None) -> dict[str, Any]:
        self._check(secret, "poll")
        out = {"state": self.state, "error": self.error, "progress": self.ctx.progress,
               "started_at": self.started_at, "finished_at": self.finished_at}
        if self.state in ("SUCCEEDED", "FAILED"):
            out["result"] = self.result
        return out

    def request_stop(self, secret: str | None = None) -> None:
        self._check(secret, "request_stop")
        self.ctx.stop_event.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    # -- execution --
    def _run(self) -> None:
        global _CONTEXT
        # Ray lets a caller invoke any method by name, private ones too: only start's thread runs it.
        if threading.current_thread() is not self._thread:
            raise PermissionError("only the runner's own job thread runs the job")
        _CONTEXT = self.ctx
        try:
            value = self._run_entrypoint() if self.kind == "entrypoint" else self._run_callable()
            from ray import cloudpickle

            blob = cloudpickle.dumps(value)
            if len(blob) > self.max_result_bytes:
                raise ValueError(f"result is {len(blob)} bytes; the limit is {self.max_result_bytes} "
                                 "(controller.max_result_bytes): write large outputs to storage and return a path")
            self.result = blob
            self.state = "SUCCEEDED"
        except BaseException as exc:  # the job's own failure: report it, never crash the runner
            tb = traceback.format_exc(limit=8)
            self.error = f"{type(exc).__name__}: {exc}\n{tb[-4000:]}"
            self.state = "FAILED"
        finally:
            self.finished_at = time.time()
            self.ctx.progress = 1.0 if self.state == "SUCCEEDED" else self.ctx.progress

    def _run_callable(self) -> Any:
        if threading.current_thread() is not self._thread:
            raise PermissionError("only the runner's own job thread runs the job")
        from ray import cloudpickle

        fn, args, kwargs = cloudpickle.loads(self.payload)
        return fn(*args, **kwargs)

    def _run_entrypoint(self) -> dict[str, Any]:
        if threading.current_thread() is not self._thread:
            raise PermissionError("only the runner's own job thread runs the job")
        argv = entrypoint_argv(str(self.payload))
        env = dict(os.environ, RAYFIN_JOB_ID=self.ctx.job_id, RAYFIN_DESK=self.ctx.desk)
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                      preexec_fn=_die_with_parent, text=True)
        out, _ = self._proc.communicate()
        tail = (out or "")[-16000:]
        if self._proc.returncode != 0:
            raise RuntimeError(f"entrypoint exited with code {self._proc.returncode}; output tail:\n{tail[-2000:]}")
        return {"returncode": 0, "output": tail}
