"""The Python SDK a desk quant uses.

    client = rayfin.connect(desk="fx", token="...", address="auto")
    job = client.submit(price_book, book_id, gpus=2, priority="normal", name="fx-book-7")
    job.status().state        # "PENDING" / "ADMITTED" / "RUNNING" / ...
    value = job.result(timeout=600)
    client.usage()            # the desk's quota and what it holds

Arguments are checked here first (clear `InvalidRequest` naming the field), then again by the
controller, which is the authority. Refusals arrive as typed errors with fields
(`QuotaExceeded.desk/.requested/.available`, `Unauthorized`, `UnknownDesk`, `JobNotFound`).
"""
from __future__ import annotations

import functools
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from rayfin.controller.validate import (validate_dist_backend, validate_entrypoint, validate_gpus, validate_priority,
                                       validate_workers)
from rayfin.errors import (ControllerUnavailable, InvalidRequest, JobFailed, JobTimeout, RayfinError, from_wire)
from rayfin.policy.model import CommProfile, JobState


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    desk: str
    name: str
    state: JobState
    reason: str
    gpus: float
    priority: str
    placement: list[tuple[str, float]]
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    progress: float
    cuda_visible_devices: str
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_public(cls, d: dict[str, Any]) -> "JobStatus":
        from rayfin.policy.model import Priority

        info = d.get("info") or {}
        return cls(d["job_id"], d["desk"], d.get("name", ""), JobState(d["state"]), d.get("reason", ""),
                   d["gpus"], Priority(d["priority"]).label, [tuple(p) for p in d.get("placement", [])],
                   d["submitted_at"], d.get("started_at"), d.get("finished_at"), d.get("attempts", 0),
                   float(info.get("progress", 0.0)), str(info.get("cuda_visible_devices", "")), info)

    @property
    def done(self) -> bool:
        return self.state.terminal


@dataclass(frozen=True)
class LogLine:
    rank: int
    ts: float
    text: str

    def __str__(self) -> str:
        return f"[rank {self.rank}] {self.text}"


@functools.lru_cache(maxsize=1)
def _installed_top_level_names() -> frozenset[str]:
    """Importable names of installed distributions (scanning them is slow: once per process)."""
    import importlib.metadata

    return frozenset(importlib.metadata.packages_distributions())


def _ships_by_value(module_name: str | None) -> bool:
    """A function from a module that is not part of an installed distribution (a quant's script,
    a notebook, a test file) cannot be imported on the workers: ship its code by value."""
    if not module_name or module_name == "__main__":
        return False  # cloudpickle already pickles __main__ by value
    top = module_name.split(".")[0]
    return top not in _installed_top_level_names() and top not in sys.stdlib_module_names


def _pickle_job(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    from ray import cloudpickle

    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is not None and _ships_by_value(module.__name__):
        cloudpickle.register_pickle_by_value(module)
        try:
            return cloudpickle.dumps((fn, args, kwargs))
        finally:
            cloudpickle.unregister_pickle_by_value(module)
    return cloudpickle.dumps((fn, args, kwargs))


class Job:
    """Handle to a submitted job."""

    def __init__(self, client: "Client", job_id: str) -> None:
        self._client = client
        self.job_id = job_id

    def __repr__(self) -> str:
        return f"Job({self.job_id!r})"

    def status(self) -> JobStatus:
        return JobStatus.from_public(self._client._call("status", self.job_id))

    def cancel(self) -> JobStatus:
        return JobStatus.from_public(self._client._call("cancel", self.job_id))

    def explain(self) -> dict[str, Any]:
        return self._client._call("explain", self.job_id)

    def wait(self, timeout: float | None = None, poll_s: float = 0.2) -> JobStatus:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status()
            if st.done:
                return st
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(job_id=self.job_id, timeout_s=timeout)
            time.sleep(poll_s)

    def result(self, timeout: float | None = None) -> Any:
        """The job's return value (for an entrypoint: its exit code and output tail).
        Raises JobFailed if it ended FAILED, CANCELLED or PREEMPTED; JobTimeout after `timeout`."""
        from ray import cloudpickle

        self.wait(timeout)
        r = self._client._call("result", self.job_id)
        if r["state"] != JobState.SUCCEEDED.value:
            raise JobFailed(f"job {self.job_id} ended {r['state']}: {r['error'] or r['reason']}",
                            job_id=self.job_id, state=r["state"], reason=r["error"] or r["reason"])
        return cloudpickle.loads(r["result"]) if r["result"] is not None else None

    def results(self, timeout: float | None = None) -> list[Any]:
        """Every rank's return value, in rank order (one element for a one-worker job).
        Raises like `result()`."""
        from ray import cloudpickle

        self.wait(timeout)
        r = self._client._call("results", self.job_id)
        if r["state"] != JobState.SUCCEEDED.value:
            raise JobFailed(f"job {self.job_id} ended {r['state']}: {r['error'] or r['reason']}",
                            job_id=self.job_id, state=r["state"], reason=r["error"] or r["reason"])
        return [None if b is None else cloudpickle.loads(b) for b in r["results"]]

    def logs(self, rank: int | None = None, tail: int | None = None) -> list[LogLine]:
        """The job's output lines (every rank's, or one rank's), the last `tail` when given. Kept
        in the ledger, bounded per rank (controller.max_log_bytes): readable after the job ended."""
        reply = self._client._call("logs", self.job_id, rank, tail)
        return [LogLine(int(d["rank"]), float(d["ts"]), d["text"]) for d in reply["lines"]]


class Client:
    def __init__(self, desk: str, token: str | None, controller: Any, address: str | None) -> None:
        self.desk = desk
        self._token = token
        self._controller = controller
        self.address = address

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray
        from ray.exceptions import RayActorError

        try:
            reply = ray.get(getattr(self._controller, method).remote(self._token, *args, **kwargs), timeout=120)
        except RayActorError as exc:
            raise ControllerUnavailable(address=self.address, reason=str(exc)[:200]) from None
        if not reply["ok"]:
            raise from_wire(reply["error"])
        return reply["value"]

    # -- submit --
    def submit(self, fn: Callable[..., Any], *args: Any, gpus: int = 1, workers: int | str = 1,
               priority: str = "normal", name: str | None = None, comm: str = "none", retries: int | None = None,
               dist_backend: str | None = "auto", kwargs: dict[str, Any] | None = None) -> Job:
        """Run `fn(*args, **kwargs)` on `gpus` GPUs of this desk's pool. Returns at once.

        `workers` processes run `fn`, each on gpus / workers GPUs inside one NVLink island
        (`"per_gpu"`: one per GPU), with ranks in topology order and the torchrun variables set.
        With torch installed, each worker joins the default process group before `fn` runs (nccl
        with CUDA, else gloo; `dist_backend=None` turns that off). `result()` is rank 0's value,
        `results()` every rank's."""
        if not callable(fn):
            raise InvalidRequest(field="fn", value=repr(fn)[:80], allowed="a Python callable")
        try:
            payload = _pickle_job(fn, args, kwargs or {})
        except Exception as exc:  # noqa: BLE001 - anything pickling raises is the caller's mistake
            raise InvalidRequest(f"fn or its arguments cannot be pickled ({type(exc).__name__}: {exc}); "
                                 "to fix: pass plain data, define fn at module level, open files and "
                                 "connections inside fn", field="fn", value=getattr(fn, "__name__", repr(fn)[:80]),
                                 allowed="a picklable callable and arguments") from None
        return self._submit({"kind": "callable", "payload": payload, "gpus": gpus, "priority": priority,
                             "name": name or getattr(fn, "__name__", "job"), "comm": comm, "retries": retries,
                             "workers": workers, "dist_backend": dist_backend})

    def submit_entrypoint(self, command: str, *, gpus: int = 1, workers: int | str = 1, priority: str = "normal",
                          name: str | None = None, comm: str = "none", retries: int | None = None) -> Job:
        """Run a command line (e.g. "python -m jobs.var_mc --paths 100000") on `gpus` GPUs, once per
        worker, with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR and
        MASTER_PORT set as torchrun sets them (`init_process_group("env://")` works unchanged)."""
        validate_entrypoint(command)
        return self._submit({"kind": "entrypoint", "payload": command, "gpus": gpus, "priority": priority,
                             "name": name or "entrypoint", "comm": comm, "retries": retries, "workers": workers,
                             "dist_backend": None})

    def _submit(self, spec: dict[str, Any]) -> Job:
        if not self.desk:
            raise InvalidRequest(field="desk", value=None, allowed="connect(desk=...) to submit work for a desk")
        validate_workers(spec["workers"], validate_gpus(spec["gpus"]))
        validate_dist_backend(spec["dist_backend"])
        spec["priority"] = validate_priority(spec["priority"]).label
        try:
            CommProfile(spec["comm"])
        except ValueError:
            raise InvalidRequest(field="comm", value=spec["comm"],
                                 allowed="one of " + ", ".join(c.value for c in CommProfile)) from None
        # The client proposes the id: a submission retried after a controller restart is idempotent.
        spec["job_id"] = f"{self.desk}-{secrets.token_hex(6)}"
        return Job(self, self._call("submit", self.desk, spec)["job_id"])

    # -- views --
    def job(self, job_id: str) -> Job:
        self._call("status", job_id)
        return Job(self, job_id)

    def jobs(self, states: list[str] | None = None) -> list[JobStatus]:
        return [JobStatus.from_public(d) for d in self._call("jobs", self.desk, states)]

    def usage(self) -> dict[str, Any]:
        """This desk's row (nominal, in_use, borrowed, queued, ...); for an admin client with no
        desk, the whole table keyed by desk."""
        table = self._call("usage", self.desk)
        return table[self.desk] if self.desk else table

    def pools(self) -> dict[str, dict[str, float]]:
        """GPUs per node pool: capacity, lost (nodes down), in use, free."""
        return self._call("pools")

    def audit(self, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        return self._call("audit", self.desk, since, until)


def _use_ray_token_if_present() -> None:
    """As `ray start` does: with RAY_AUTH_MODE unset, a Ray token on this machine
    (~/.ray/auth_token or RAY_AUTH_TOKEN) means the cluster expects it."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:  # an older Ray without token auth
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def connect(desk: str | None, token: str | None = None, address: str | None = None, *,
            controller_name: str = "rayfin-controller", namespace: str = "rayfin") -> Client:
    """Connect to a running rayfin (started by `rayfin up`). `token` defaults to $RAYFIN_TOKEN,
    `address` to $RAY_ADDRESS or "auto"."""
    import ray

    if desk is not None and (not isinstance(desk, str) or not desk):
        raise InvalidRequest(field="desk", value=desk, allowed="the name of a configured desk (None: admin view)")
    token = token if token is not None else os.environ.get("RAYFIN_TOKEN")
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    if not ray.is_initialized():
        _use_ray_token_if_present()
        try:
            ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ControllerUnavailable(address=address, reason=str(exc)[:200]) from None
    try:
        controller = ray.get_actor(controller_name, namespace=namespace)
    except ValueError:
        raise ControllerUnavailable(address=address, reason=f"no actor {controller_name!r} in namespace "
                                                             f"{namespace!r}") from None
    client = Client(desk, token, controller, address)
    client.usage()  # authenticates now: a bad token or desk fails here, not on first submit
    return client


__all__ = ["connect", "Client", "Job", "JobStatus", "LogLine", "RayfinError"]
