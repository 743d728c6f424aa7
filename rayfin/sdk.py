"""The Python SDK a desk quant uses. It speaks only HTTP to the rayfin API (`rayfin up` prints
its URL on the `api:` line): no Ray token, no Ray driver, no `import ray`.

    client = rayfin.connect(desk="fx", token="...", url="http://127.0.0.1:8000/api")
    job = client.submit(price_book, book_id, gpus=2, priority="normal", name="fx-book-7")
    job.status().state        # "PENDING" / "ADMITTED" / "RUNNING" / ...
    value = job.result(timeout=600)
    client.usage()            # the desk's quota and what it holds

    # A deadline ("HH:MM" or "open-30m" need the controller's `calendar:`): the answer comes back
    # at once, admitted or at risk with the ETA; an infeasible one raises DeadlineInfeasible.
    job = client.submit(run_var, deadline="open-30m", expected_runtime_s=3600)
    job.answer                # DeadlineAnswer(verdict="at_risk", eta=..., deadline=..., reason=...)

Arguments are checked here first with the same `JobSpec` model the API and the controller use
(a clear `InvalidRequest` naming the field), so a bad call never reaches the network. Refusals arrive as typed errors with fields
(`QuotaExceeded.desk/.requested/.available`, `Unauthorized`, `UnknownDesk`, `JobNotFound`),
rebuilt from the API's JSON error body; the HTTP status is only the envelope.
"""
from __future__ import annotations

import base64
import functools
import importlib.metadata
import json
import os
import pickle
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

import cloudpickle
import httpx

from rayfin.errors import (ControllerUnavailable, InvalidRequest, JobFailed, JobTimeout, RayfinError, Unauthorized,
                           from_wire)
from rayfin.jobspec import JobSpec
from rayfin.market.errors import DeadlineInfeasible  # noqa: F401 - registered for from_wire, re-exported
from rayfin.policy.model import JobState, Priority

DEFAULT_URL = "http://127.0.0.1:8000/api"
UP_STATE = Path("~/.rayfin/up.json")
HOW_TO_AUTH = "pass token=... to rayfin.connect or set $RAYFIN_TOKEN (CLI: --token or $RAYFIN_TOKEN)"
Workers = int | Literal["per_gpu"] | tuple[int, int]   # (min, max): an elastic gang


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
    deadline: datetime | None = None     # UTC; None: no deadline
    eta: datetime | None = None          # the controller's latest estimate of the finish
    deadline_status: str | None = None   # "on_track" or "at_risk"
    escalated: bool = False              # its slack ran out: scheduled as critical

    @classmethod
    def from_public(cls, d: dict[str, Any]) -> "JobStatus":
        info = d.get("info") or {}
        return cls(d["job_id"], d["desk"], d.get("name", ""), JobState(d["state"]), d.get("reason", ""),
                   d["gpus"], Priority(d["priority"]).label, [tuple(p) for p in d.get("placement", [])],
                   d["submitted_at"], d.get("started_at"), d.get("finished_at"), d.get("attempts", 0),
                   float(info.get("progress", 0.0)), str(info.get("cuda_visible_devices", "")), info,
                   _utc(d.get("deadline")), _utc(d.get("eta")), d.get("deadline_status"), bool(d.get("escalated")))

    @property
    def done(self) -> bool:
        return self.state.terminal


def _utc(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(float(t), timezone.utc)


@dataclass(frozen=True)
class DeadlineAnswer:
    """The controller's answer to a submission with a deadline: "admitted" (the ETA is before
    it) or "at_risk" (after it, or no runtime to estimate from). Infeasible raises instead."""

    verdict: str
    deadline: datetime
    eta: datetime | None
    reason: str = ""

    @classmethod
    def from_reply(cls, d: dict[str, Any] | None) -> "DeadlineAnswer | None":
        if not d:
            return None
        deadline = _utc(d["deadline"])
        assert deadline is not None
        return cls(d["verdict"], deadline, _utc(d.get("eta")), d.get("reason", ""))

    def __str__(self) -> str:
        eta = "no ETA" if self.eta is None else f"ETA {self.eta:%Y-%m-%d %H:%M:%S}Z"
        return f"{self.verdict}: {eta}, deadline {self.deadline:%Y-%m-%d %H:%M:%S}Z ({self.reason})"


@functools.lru_cache(maxsize=1)
def _installed_top_level_names() -> frozenset[str]:
    """Importable names of installed distributions (scanning them is slow: once per process)."""
    return frozenset(importlib.metadata.packages_distributions())


def _ships_by_value(module_name: str | None) -> bool:
    """A function from a module that is not part of an installed distribution (a quant's script,
    a notebook, a test file) cannot be imported on the workers: ship its code by value."""
    if not module_name or module_name == "__main__":
        return False  # cloudpickle already pickles __main__ by value
    top = module_name.split(".")[0]
    return top not in _installed_top_level_names() and top not in sys.stdlib_module_names


def _pickle_job(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is not None and _ships_by_value(module.__name__):
        cloudpickle.register_pickle_by_value(module)
        try:
            blob: bytes = cloudpickle.dumps((fn, args, kwargs))
            return blob
        finally:
            cloudpickle.unregister_pickle_by_value(module)
    plain: bytes = cloudpickle.dumps((fn, args, kwargs))
    return plain


def _unpickle(blob_b64: str | None) -> Any:
    # The job's own return value, produced by the job's runner for this desk: trusted by its submitter.
    return None if blob_b64 is None else pickle.loads(base64.b64decode(blob_b64))


@dataclass(frozen=True)
class LogLine:
    rank: int
    ts: float
    text: str

    def __str__(self) -> str:
        return f"[rank {self.rank}] {self.text}"


@dataclass(frozen=True)
class ChargebackRow:
    """One desk's, job's or model's GPU-hours and cost (`key` TOTAL: the total row)."""

    key: str
    gpu_hours: float
    batch_gpu_hours: float
    serving_gpu_hours: float
    borrowed_gpu_hours: float
    lent_gpu_hours: float
    preempted_gpu_hours: float
    cost: float

    @classmethod
    def from_view(cls, d: dict[str, Any]) -> "ChargebackRow":
        return cls(str(d["key"]), *(float(d[f]) for f in _CHARGE_NUMBERS))


_CHARGE_NUMBERS = ("gpu_hours", "batch_gpu_hours", "serving_gpu_hours", "borrowed_gpu_hours", "lent_gpu_hours",
                   "preempted_gpu_hours", "cost")


@dataclass(frozen=True)
class ChargebackFlow:
    """GPU-hours `lender` lent to `borrower` (lender "(unowned)": GPUs no desk is guaranteed)."""

    lender: str
    borrower: str
    gpu_hours: float


@dataclass(frozen=True)
class Chargeback:
    since: float
    until: float
    by: str
    rows: tuple[ChargebackRow, ...]
    total: ChargebackRow
    flows: tuple[ChargebackFlow, ...]

    @classmethod
    def from_view(cls, d: dict[str, Any]) -> "Chargeback":
        return cls(float(d["since"]), float(d["until"]), str(d["by"]),
                   tuple(ChargebackRow.from_view(r) for r in d["rows"]), ChargebackRow.from_view(d["total"]),
                   tuple(ChargebackFlow(str(f["lender"]), str(f["borrower"]), float(f["gpu_hours"]))
                         for f in d["flows"]))

    def row(self, key: str) -> ChargebackRow | None:
        return next((r for r in self.rows if r.key == key), None)


def _epoch(t: float | datetime | None) -> float | None:
    if isinstance(t, datetime):
        return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()
    return t


class Job:
    """Handle to a submitted job."""

    def __init__(self, client: "Client", job_id: str, answer: DeadlineAnswer | None = None) -> None:
        self._client = client
        self.job_id = job_id
        self.answer = answer    # the answer to a deadline at submit; None without one

    def __repr__(self) -> str:
        return f"Job({self.job_id!r})"

    def status(self) -> JobStatus:
        return JobStatus.from_public(self._client._request("GET", f"/v1/jobs/{self.job_id}"))

    def cancel(self) -> JobStatus:
        return self._client.cancel(self.job_id)

    def explain(self) -> dict[str, Any]:
        return self._client.explain(self.job_id)

    def wait(self, timeout: float | None = None, poll_s: float = 0.2) -> JobStatus:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status()
            if st.done:
                return st
            if timeout is not None and deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(job_id=self.job_id, timeout_s=timeout)
            time.sleep(poll_s)

    def result(self, timeout: float | None = None) -> Any:
        """The job's return value (for an entrypoint: its exit code and output tail).
        Raises JobFailed if it ended FAILED, CANCELLED or PREEMPTED; JobTimeout after `timeout`."""
        self.wait(timeout)
        r = self._client._request("GET", f"/v1/jobs/{self.job_id}/result")
        self._raise_unless_succeeded(r)
        return _unpickle(r.get("result_b64"))

    def results(self, timeout: float | None = None) -> list[Any]:
        """Each worker's (rank's) return value, in rank order."""
        self.wait(timeout)
        r = self._client._request("GET", f"/v1/jobs/{self.job_id}/results")
        self._raise_unless_succeeded(r)
        return [_unpickle(b) for b in r.get("results_b64") or []]

    def logs(self, rank: int | None = None, tail: int | None = None) -> list[LogLine]:
        """The job's output lines (every rank's, or one rank's), the last `tail` when given. Kept
        in the ledger, bounded per rank (controller.max_log_bytes): readable after the job ended."""
        params = {k: v for k, v in (("rank", rank), ("tail", tail)) if v is not None}
        lines = self._client._request("GET", f"/v1/jobs/{self.job_id}/logs", params=params)["lines"]
        return [LogLine(int(d["rank"]), float(d.get("ts") or 0.0), d["text"]) for d in lines]

    def _raise_unless_succeeded(self, r: dict[str, Any]) -> None:
        if r["state"] != JobState.SUCCEEDED.value:
            why = r.get("error") or r.get("reason") or ""
            raise JobFailed(f"job {self.job_id} ended {r['state']}: {why}", job_id=self.job_id, state=r["state"],
                            reason=why)


class Client:
    """A desk's (or, with `desk=None` and the admin token, the operator's) session with the API."""

    def __init__(self, desk: str | None, token: str | None, url: str, *, timeout_s: float = 120.0,
                 retry_s: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self.desk = desk
        self.url = url.rstrip("/")
        self.retry_s = retry_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                 body: dict[str, Any] | None = None) -> Any:
        """One API call. While the controller restarts (503) or the API is briefly unreachable the
        call is retried for `retry_s`: every call is idempotent (a submission carries its id)."""
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                resp = self._http.request(method, path, params=params, json=body)
            except httpx.TransportError as exc:
                err: RayfinError = ControllerUnavailable(address=self.url, reason=f"{type(exc).__name__}: {exc}"[:200])
            else:
                if resp.status_code < 400:
                    return resp.json()
                err = _error_from(resp, self.url)
            if not isinstance(err, ControllerUnavailable) or time.monotonic() >= deadline:
                raise err
            time.sleep(0.5)

    # -- submit --
    def submit(self, fn: Callable[..., Any], *args: Any, gpus: int = 1, priority: str = "normal",
               name: str | None = None, comm: str = "none", retries: int | None = None,
               kwargs: dict[str, Any] | None = None, workers: Workers = 1,
               dist_backend: str | None = "auto", deadline: datetime | str | None = None,
               expected_runtime_s: float | None = None) -> Job:
        """Run `fn(*args, **kwargs)` on `gpus` GPUs of this desk's pool. Returns at once.
        `workers`: processes (ranks) to run it in, a count or "per_gpu", or `(min, max)` for an
        elastic gang (`gpus` is what it holds at max: it starts at min or more, grows into idle
        GPUs and shrinks back when other work waits, restarting from its checkpoint at each
        resize, so it must checkpoint: `job_context().checkpoint_dir`); `dist_backend`: the
        torch.distributed backend they join ("auto", "gloo", "nccl", or None).
        `deadline`: an aware datetime, "HH:MM" in the calendar's zone, or "open-30m" / "close+2h"
        (the string forms need the controller's `calendar:`); `expected_runtime_s`: the runtime if
        known (else the desk's history). With a deadline, `job.answer` says admitted or at_risk
        with the ETA; one no schedule can meet raises `DeadlineInfeasible` (earliest_finish)."""
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
                             "name": name or default_name(fn), "comm": comm, "retries": retries,
                             "workers": workers, "dist_backend": dist_backend, "deadline": deadline,
                             "expected_runtime_s": expected_runtime_s})

    def submit_entrypoint(self, command: str, *, gpus: int = 1, priority: str = "normal", name: str | None = None,
                          comm: str = "none", retries: int | None = None, workers: Workers = 1,
                          dist_backend: str | None = "auto", deadline: datetime | str | None = None,
                          expected_runtime_s: float | None = None) -> Job:
        """Run a command line (e.g. "python -m jobs.var_mc --paths 100000") on `gpus` GPUs
        (`deadline`, `expected_runtime_s`: as for `submit`)."""
        return self._submit({"kind": "entrypoint", "payload": command, "gpus": gpus, "priority": priority,
                             "name": name or "entrypoint", "comm": comm, "retries": retries, "workers": workers,
                             "dist_backend": dist_backend, "deadline": deadline,
                             "expected_runtime_s": expected_runtime_s})

    def _submit(self, fields: dict[str, Any]) -> Job:
        # Checked whole before the desk, so a bad argument is named even on an admin client.
        requested_workers = fields["workers"]
        spec = JobSpec.parse(fields)
        if not self.desk:
            raise InvalidRequest(field="desk", value=None, allowed="connect(desk=...) to submit work for a desk")
        # The client proposes the id: a submission retried after a controller restart is idempotent.
        body = spec_body(spec, self.desk, f"{self.desk}-{secrets.token_hex(6)}", requested_workers)
        reply = self._request("POST", "/v1/jobs", body=body)
        return Job(self, reply["job_id"], DeadlineAnswer.from_reply(reply.get("answer")))

    # -- jobs --
    def job(self, job_id: str) -> Job:
        self._request("GET", f"/v1/jobs/{job_id}")
        return Job(self, job_id)

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.from_public(self._request("POST", f"/v1/jobs/{job_id}/cancel"))

    def explain(self, job_id: str) -> dict[str, Any]:
        view: dict[str, Any] = self._request("GET", f"/v1/jobs/{job_id}/explain")
        return view

    def jobs(self, states: list[str] | None = None, desk: str | None = None) -> list[JobStatus]:
        params: dict[str, Any] = {"limit": 10_000}
        if desk or self.desk:
            params["desk"] = desk or self.desk
        if states:
            params["state"] = list(states)
        return [JobStatus.from_public(d) for d in self._request("GET", "/v1/jobs", params=params)]

    # -- views --
    def usage(self) -> dict[str, Any]:
        """This desk's row (nominal, in_use, borrowed, queued, ...); for an admin client with no
        desk, the whole table keyed by desk."""
        table: dict[str, Any] = self._request("GET", "/v1/usage", params={"desk": self.desk} if self.desk else None)
        return table[self.desk] if self.desk else table

    def pools(self) -> dict[str, dict[str, float]]:
        """GPUs per node pool: capacity, lost (nodes down), outside (held by work rayfin did not
        start), in use, free."""
        pools: dict[str, dict[str, float]] = self._request("GET", "/v1/pools")
        return pools

    def audit(self, since: float | None = None, until: float | None = None, *, desk: str | None = None,
              limit: int = 1000) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("desk", desk or self.desk), ("since", since), ("until", until),
                                    ("limit", limit)) if v is not None}
        rows: list[dict[str, Any]] = self._request("GET", "/v1/audit", params=params)
        return rows

    def chargeback(self, since: float | datetime, until: float | datetime | None = None, *,
                   by: Literal["desk", "job", "model"] = "desk", desk: str | None = None) -> Chargeback:
        """GPU-hours per desk / job / model over [since, until) (epoch seconds or aware datetimes;
        naive = UTC; until None: now): batch and serving, borrowed and lent (to and from whom, in
        `flows`), preempted, and cost at the configured rates; the same numbers as `rayfin
        chargeback`. A desk client sees its own rows and what others borrowed from it."""
        params = {k: v for k, v in (("since", _epoch(since)), ("until", _epoch(until)), ("by", by),
                                    ("desk", desk or self.desk)) if v is not None}
        return Chargeback.from_view(self._request("GET", "/v1/chargeback", params=params))

    def policing(self) -> dict[str, Any]:
        """GPU use found outside rayfin: what holds GPUs now, and what was stopped."""
        view: dict[str, Any] = self._request("GET", "/v1/policing")
        return view


def default_name(fn: Callable[..., Any]) -> str:
    """A job's name when the caller gives none: the function's, made a valid name (`_step` ->
    `step`, `<lambda>` -> `lambda`), so a name the caller never chose is never refused."""
    raw = re.sub(r"[^A-Za-z0-9_.:-]", "", str(getattr(fn, "__name__", "") or ""))
    return raw.lstrip("_.:-")[:128] or "job"


def spec_body(spec: JobSpec, desk: str, job_id: str, workers: Any = None) -> dict[str, Any]:
    """The API's request body for a validated spec (`rayfin.api.models.SubmitRequest`: the same
    JobSpec in its wire form)."""
    body: dict[str, Any] = {"desk": desk, "kind": spec.kind, "gpus": spec.gpus, "name": spec.name or None,
                            "comm": spec.comm.value, "retries": spec.retries, "job_id": job_id,
                            "priority": spec.priority.label if spec.priority is not None else None,
                            "workers": workers if workers == "per_gpu" else spec.workers,
                            "dist_backend": spec.dist_backend}
    # Only when set, so an API without deadlines (which refuses unknown fields) takes a plain job.
    if spec.min_workers is not None:
        body["min_workers"] = spec.min_workers
    if spec.deadline is not None:
        body["deadline"] = spec.deadline
    if spec.expected_runtime_s is not None:
        body["expected_runtime_s"] = spec.expected_runtime_s
    if isinstance(spec.payload, str):
        body["entrypoint"] = spec.payload
    else:
        body["payload_b64"] = base64.b64encode(spec.payload).decode()
    return body


def _error_from(resp: httpx.Response, url: str) -> RayfinError:
    try:
        payload = resp.json()["error"]
        if isinstance(payload, dict) and "type" in payload:
            return from_wire(payload)
    except (ValueError, KeyError, TypeError):
        pass
    if resp.status_code >= 500:
        return ControllerUnavailable(address=url, reason=f"HTTP {resp.status_code}: {resp.text[:200]}")
    return RayfinError(f"HTTP {resp.status_code} from {url}: {resp.text[:200]}")


def default_url() -> str:
    """$RAYFIN_URL, else the `api:` URL of the `rayfin up` running on this machine, else the default."""
    if os.environ.get("RAYFIN_URL"):
        return os.environ["RAYFIN_URL"]
    try:
        api = json.loads(UP_STATE.expanduser().read_text()).get("api")
    except (OSError, ValueError):
        api = None
    return api or DEFAULT_URL


def connect(desk: str | None, token: str | None = None, url: str | None = None, *, timeout_s: float = 120.0,
            retry_s: float = 60.0, transport: httpx.BaseTransport | None = None) -> Client:
    """Connect to the rayfin API. `token` defaults to $RAYFIN_TOKEN, `url` to $RAYFIN_URL (else
    the one `rayfin up` printed on its `api:` line). `desk=None` with the admin token: the
    operator's view of every desk. Authenticates now: a bad token or desk fails here."""
    if desk is not None and (not isinstance(desk, str) or not desk):
        raise InvalidRequest(field="desk", value=desk, allowed="the name of a configured desk (None: admin view)")
    token = token if token is not None else os.environ.get("RAYFIN_TOKEN")
    if not token:
        raise Unauthorized(f"no credential: {HOW_TO_AUTH}", desk=desk, action="connect")
    client = Client(desk, token, url or default_url(), timeout_s=timeout_s, retry_s=retry_s, transport=transport)
    try:
        client.usage()
    except Unauthorized as exc:
        client.close()
        raise type(exc)(f"{exc.message}; to fix: {HOW_TO_AUTH}", desk=getattr(exc, "desk", desk),
                        action=getattr(exc, "action", "connect")) from None
    except BaseException:
        client.close()
        raise
    return client


__all__ = ["connect", "default_url", "Client", "DeadlineAnswer", "DeadlineInfeasible", "Job", "JobStatus", "RayfinError"]
