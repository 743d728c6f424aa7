"""Every request and reply of the rayfin API, as pydantic models (the OpenAPI document is built
from them). Bytes travel as standard base64 in JSON: a callable's cloudpickled
`(fn, args, kwargs)` going in, a job's cloudpickled return value coming out. The API server
never unpickles either: only the job's own runner and the submitting client do."""
from __future__ import annotations

import base64
import binascii
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from rayfin.jobspec import MAX_ENTRYPOINT, JobSpec

DESK_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
B64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"

Priority = Literal["critical", "normal", "batch"]
Comm = Literal["none", "allreduce"]
State = Literal["PENDING", "ADMITTED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "PREEMPTED"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


def _body_error(allowed: str) -> PydanticCustomError:
    return PydanticCustomError("rayfin", "{allowed}", {"field": "body", "allowed": allowed})


class SubmitRequest(JobSpec):
    """A job for `desk`: a callable (`payload_b64`) or a command line (`entrypoint`).

    The submission model itself (`rayfin.jobspec.JobSpec`) in its wire form: the desk, and the
    payload as base64 or a command line. Every rule is JobSpec's, checked once as FastAPI reads
    the body; a refusal names the field as the caller sent it (`payload_b64`, `entrypoint`)."""

    desk: str = Field(..., pattern=DESK_PATTERN)
    payload: SkipJsonSchema[bytes | str] = Field(b"", exclude=True)     # set from the two below
    payload_b64: str | None = Field(None, pattern=B64_PATTERN,
                                    description="kind=callable: base64 of cloudpickle.dumps((fn, args, kwargs))")
    entrypoint: str | None = Field(None, min_length=1, max_length=MAX_ENTRYPOINT,
                                   description="kind=entrypoint: the command line to run")

    @model_validator(mode="before")
    @classmethod
    def _wire(cls, data: Any) -> Any:
        """`payload_b64` or `entrypoint`, as `kind` says, becomes JobSpec's `payload`."""
        if not isinstance(data, Mapping):
            return data                          # JobSpec refuses it, naming the field
        data = dict(data)
        if "payload" in data:
            raise PydanticCustomError("rayfin", "{allowed}", {"field": "payload", "allowed": "payload_b64 "
                                      "(kind callable) or entrypoint (kind entrypoint)"})
        kind, b64, command = data.get("kind"), data.pop("payload_b64", None), data.pop("entrypoint", None)
        if kind == "callable":
            if b64 is None or command is not None:
                raise _body_error("kind 'callable' needs payload_b64 and no entrypoint")
            data["payload"] = _decode(b64)
        elif kind == "entrypoint":
            if command is None or b64 is not None:
                raise _body_error("kind 'entrypoint' needs entrypoint and no payload_b64")
            data["payload"] = command
        workers = data.get("workers", 1)
        if isinstance(workers, int) and not isinstance(workers, bool) and workers < 1:
            raise PydanticCustomError("rayfin", "{allowed}", {"field": "workers", "value": workers,
                                                              "allowed": "a count >= 1 or 'per_gpu'"})
        return data


def _decode(payload_b64: Any) -> bytes:
    """Standard base64 to bytes; the size limit is the API's (`api.app.controller_spec`)."""
    if not isinstance(payload_b64, str):
        raise PydanticCustomError("rayfin", "{allowed}", {"field": "payload_b64", "allowed": "standard base64"})
    try:
        raw = base64.b64decode(payload_b64, validate=True)
    except (binascii.Error, ValueError):
        raise PydanticCustomError("rayfin", "{allowed}", {"field": "payload_b64", "allowed": "standard base64",
                                                          "value": payload_b64[:40]}) from None
    if not raw:
        raise PydanticCustomError("rayfin", "{allowed}", {"field": "payload_b64", "value": "",
                                                          "allowed": "a non-empty cloudpickled (fn, args, kwargs)"})
    return raw


class DeadlineAnswer(_Out):
    """The answer to a submission with a deadline (an infeasible one is refused: 422
    DeadlineInfeasible)."""

    verdict: Literal["admitted", "at_risk"]
    deadline: float
    eta: float | None = None
    deadline_iso: str = ""
    eta_iso: str | None = None
    reason: str = ""
    runtime_s: float | None = None
    runtime_source: str = ""


class JobView(_Out):
    job_id: str
    desk: str
    name: str = ""
    kind: str
    gpus: float
    priority: int = Field(..., description="0 critical, 1 normal, 2 batch")
    comm: str = "none"
    state: State
    submitted_at: float
    max_retries: int = 0
    attempts: int = 0
    reason: str = ""
    reason_code: str = Field("", description="why, as a code (rayfin.reasons.ReasonCode); `reason` says it in words")
    started_at: float | None = None
    finished_at: float | None = None
    placement: list[tuple[str, float]] = Field(default_factory=list, description="(island, GPUs) per bundle")
    preempt_deadline: float | None = None
    error: str = ""
    info: dict[str, Any] = Field(default_factory=dict)
    deadline: float | None = Field(None, description="when the job must be done (epoch seconds); null: none")
    eta: float | None = Field(None, description="the controller's latest estimate of the finish (epoch seconds)")
    expected_runtime_s: float | None = None
    deadline_status: Literal["on_track", "at_risk"] | None = Field(
        None, description="at_risk: the ETA is after the deadline (or cannot be estimated)")
    escalated: bool = Field(False, description="its slack ran out: scheduled as critical work")
    answer: DeadlineAnswer | None = Field(None, description="submit only: the answer to a deadline")


class ResultView(_Out):
    state: State
    reason: str = ""
    error: str = ""
    result_b64: str | None = Field(None, description="base64 of the cloudpickled return value")
    size: int = 0


class ResultsView(_Out):
    state: State
    reason: str = ""
    error: str = ""
    results_b64: list[str | None] = Field(default_factory=list, description="per rank, as result_b64")


class LogLine(_Out):
    rank: int
    ts: float = Field(0.0, description="when the controller received the line (Unix seconds)")
    text: str


class LogsView(_Out):
    lines: list[LogLine] = Field(default_factory=list)


class DecisionView(_Out):
    verdict: str
    code: str = Field("", description="the decision's reason code")
    reasons: list[str] = Field(default_factory=list)
    victims: list[str] = Field(default_factory=list)


class EventView(_Out):
    ts: float
    kind: str
    state: str = ""
    reason: str = ""
    reason_code: str = ""


class ExplainView(_Out):
    job: JobView
    decision: DecisionView | None = None
    events: list[EventView] = Field(default_factory=list)


class UsageRow(_Out):
    desk: str
    nominal: float
    max: float
    weight: float
    in_use: float
    serving: float
    borrowed: float
    lent: float
    queued: int
    queued_gpus: float
    running: int
    oldest_wait_s: float


class PoolRow(_Out):
    capacity: float
    lost: float = Field(..., description="GPUs on nodes that are down")
    outside: float = Field(0.0, description="GPUs held by work rayfin did not start (policing)")
    in_use: float
    free: float


class AuditEvent(_Out):
    seq: int
    ts: float
    job_id: str = ""
    desk: str = ""
    kind: str
    state: str = ""
    reason: str = ""
    reason_code: str = Field("", description="empty in events recorded before reasons had codes")
    data: dict[str, Any] = Field(default_factory=dict)


class ChargeRowView(_Out):
    """One row of a chargeback (rayfin.market.chargeback): GPU-hours and cost of a desk, job or model."""

    key: str = Field(description="the desk, job id or model (per `by`); TOTAL for the total row")
    gpu_hours: float
    batch_gpu_hours: float
    serving_gpu_hours: float
    borrowed_gpu_hours: float
    lent_gpu_hours: float
    preempted_gpu_hours: float
    cost: float


class ChargeFlowView(_Out):
    lender: str = Field(description="the desk that lent, or (unowned) / (unattributed)")
    borrower: str
    gpu_hours: float


class ChargebackView(_Out):
    since: float
    until: float
    by: Literal["desk", "job", "model"]
    rows: list[ChargeRowView]
    total: ChargeRowView
    flows: list[ChargeFlowView]


class Finding(_Out):
    """Work holding GPUs or desk pool / island resources that rayfin did not create, or a process
    on a real GPU that its Ray worker does not hold (`gpu_process`)."""

    kind: Literal["actor", "task", "placement_group", "gpu_process"]
    id: str
    name: str = ""
    node_id: str = ""
    island: str = ""
    resources: dict[str, float] = Field(default_factory=dict)
    gpus: float = 0.0
    ray_job_id: str = ""
    desk: str = ""
    rayfin_job_id: str = ""
    first_seen: float
    last_seen: float
    started_at: float | None = None
    stopped_at: float | None = None
    action: str = ""


class PolicingView(_Out):
    mode: str
    interval_s: float
    findings: list[Finding] = Field(default_factory=list, description="what holds resources now")
    outside_gpus: dict[str, float] = Field(default_factory=dict, description="island -> GPUs held outside rayfin")
    detected: int = 0
    stopped: int = 0


class WhoAmI(_Out):
    desk: str | None
    admin: bool


class ErrorBody(BaseModel):
    type: str = Field(..., description="the rayfin error class: InvalidRequest, Unauthorized, ...")
    message: str
    fields: dict[str, Any] = Field(default_factory=dict)


class ErrorReply(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok"]


__all__ = ["SubmitRequest", "JobView", "ResultView", "ResultsView", "LogLine", "LogsView", "ExplainView",
           "UsageRow", "PoolRow", "AuditEvent", "Finding", "PolicingView", "WhoAmI", "ErrorReply", "ErrorBody",
           "Health"]
