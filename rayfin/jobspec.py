"""`JobSpec`: a job submission, one pydantic model for every edge that takes one.

The SDK builds one before anything goes on the wire, the HTTP API builds one from its request
body, and the controller takes one (or a mapping it validates into one) in `submit`; the same
rules apply wherever a spec is checked, and a refusal is the same `InvalidRequest` naming the
field, the value and what is allowed. Imports no Ray and nothing from the controller, so the
SDK stays light.
"""
from __future__ import annotations

import math
import re
import shlex
from datetime import datetime
from typing import Annotated, Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator, model_validator
from pydantic_core import PydanticCustomError

from placement.ranks import WorkerRuleError, worker_count
from rayfin.errors import InvalidRequest
from rayfin.policy.model import CommProfile, Priority

MAX_GPUS_PER_JOB = 4096
MAX_NAME = 128
MAX_ENTRYPOINT = 8192
MAX_PAYLOAD = 256 * 1024 * 1024
MAX_RETRIES = 100
JOB_ID_PATTERN = r"^[a-z][a-z0-9-]{0,31}-[0-9a-f]{8,32}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
JOB_ID_RE = re.compile(JOB_ID_PATTERN)
NAME_RE = re.compile(NAME_PATTERN)
DIST_BACKENDS = ("auto", "gloo", "nccl")
DistBackend = Literal["auto", "gloo", "nccl"]
SPEC_FIELDS = ("kind", "payload", "gpus", "priority", "name", "comm", "retries", "job_id", "workers", "min_workers",
               "dist_backend", "deadline", "expected_runtime_s")
MAX_RUNTIME_S = 30 * 24 * 3600.0
# "HH:MM" (the calendar's zone) or an offset from a session's open or close ("open-30m", "close+2h")
DEADLINE_HHMM_RE = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")
DEADLINE_OFFSET_RE = re.compile(r"^\s*(open|close)\s*(?:([+-])\s*(\d+(?:\.\d+)?)\s*([smh]))?\s*$")
DEADLINE_FORMS = ("an aware datetime (in JSON: ISO 8601 with a UTC offset, e.g. '2026-11-30T21:00:00+00:00'), "
                  "'HH:MM' in the calendar's zone (the next such time), or an offset from the next session's "
                  "open or close ('open-30m', 'close+2h'); the last two need the config's `calendar:`")

ALLOWED = {
    "kind": "'callable' or 'entrypoint'",
    "gpus": f"a whole number of GPUs from 1 to {MAX_GPUS_PER_JOB}",
    "priority": "one of " + ", ".join(p.label for p in Priority),
    "name": "1-128 characters: letters, digits, '_', '.', ':' or '-'",
    "comm": "one of " + ", ".join(c.value for c in CommProfile),
    "retries": f"a whole number from 0 to {MAX_RETRIES}",
    "job_id": "<desk>-<8 to 32 hex digits>",
    "dist_backend": "'auto' (nccl with CUDA, else gloo), 'gloo', 'nccl', or None (no process group)",
    "fn": "a picklable Python callable",
    "entrypoint": "a non-empty command line string",
    "deadline": DEADLINE_FORMS,
    "min_workers": ("an elastic gang's fewest workers: a whole number from 1 to `workers` (its most), given as "
                    "workers=(min, max); `gpus` is what it holds at max"),
    "expected_runtime_s": f"seconds the job is expected to run: a number > 0 and at most {MAX_RUNTIME_S:g}",
}


def _refuse(field: str, allowed: str | None = None) -> PydanticCustomError:
    return PydanticCustomError("rayfin", "{allowed}", {"field": field, "allowed": allowed or ALLOWED[field]})


def check_gpus(gpus: Any) -> int:
    """A whole number of GPUs (2.0 is 2; 2.5, "2" and True are not)."""
    if isinstance(gpus, float) and gpus.is_integer():
        gpus = int(gpus)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= MAX_GPUS_PER_JOB:
        raise _refuse("gpus")
    return gpus


def check_entrypoint(command: Any) -> str:
    if not isinstance(command, str) or not command.strip():
        raise _refuse("entrypoint")
    if len(command) > MAX_ENTRYPOINT or "\x00" in command:
        raise _refuse("entrypoint", f"at most {MAX_ENTRYPOINT} characters, no NUL bytes")
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise _refuse("entrypoint", f"a shell-quoted command line ({exc})") from None
    if not argv:
        raise _refuse("entrypoint", "a command to run")
    return command


def check_deadline(v: Any) -> str | None:
    """A deadline in its wire form: an aware datetime as ISO 8601, or the string as given
    ("HH:MM", "open-30m"); what it means is the controller's to say (its clock and calendar)."""
    if v is None:
        return None
    if isinstance(v, datetime):
        if v.tzinfo is None or v.utcoffset() is None:
            raise _refuse("deadline", "an aware datetime (with tzinfo, e.g. datetime.now(timezone.utc)); "
                                      "a naive one is ambiguous. Accepted: " + DEADLINE_FORMS)
        return v.isoformat()
    if not isinstance(v, str) or not v.strip() or len(v) > 64:
        raise _refuse("deadline")
    if DEADLINE_HHMM_RE.match(v) or DEADLINE_OFFSET_RE.match(v):
        return v.strip()
    try:
        t = datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _refuse("deadline") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise _refuse("deadline", "a datetime with a UTC offset (e.g. '2026-11-30T21:00:00+00:00'); a naive one "
                                  "is ambiguous. Accepted: " + DEADLINE_FORMS)
    return t.isoformat()


class JobSpec(BaseModel):
    """A validated submission. `priority` and `retries` are None until `with_defaults` fills
    them from the config; `workers` is the resolved number of ranks."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    # The JSON schemas below are the wire form (the API's OpenAPI document is built from them);
    # the validators take that form and hold the typed value.
    kind: Literal["callable", "entrypoint"]
    payload: bytes | str
    name: Annotated[str, WithJsonSchema({"type": "string", "pattern": NAME_PATTERN})] = ""
    comm: CommProfile = CommProfile.NONE
    retries: Annotated[int | None, WithJsonSchema({"anyOf": [
        {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES}, {"type": "null"}]})] = Field(
        None, description="null: the configured default")
    job_id: Annotated[str | None, WithJsonSchema({"anyOf": [{"type": "string", "pattern": JOB_ID_PATTERN},
                                                             {"type": "null"}]})] = Field(
        None, description="client-chosen id '<desk>-<hex>': a retried submission is idempotent")
    gpus: Annotated[int, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_GPUS_PER_JOB})] = 1
    priority: Annotated[Priority | None, WithJsonSchema({"anyOf": [
        {"type": "string", "enum": [p.label for p in sorted(Priority, reverse=True)]}, {"type": "null"}]})] = Field(
        None, description="null: the configured default")
    workers: Annotated[int, WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1}, {"const": "per_gpu"}]})] = Field(
        1, description="worker processes (ranks): a count >= 1 or 'per_gpu'")
    min_workers: Annotated[int | None, WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1},
                                                                  {"type": "null"}]})] = Field(
        None, description="an elastic gang's fewest workers (the SDK's workers=(min, max)): it holds min x "
                          "gpus/workers GPUs under its quota, grows toward `workers` into idle GPUs and shrinks "
                          "back when other work waits, restarting from its checkpoint at each resize; null: fixed")
    dist_backend: DistBackend | None = Field("auto", description="torch.distributed backend; null: none")
    deadline: str | None = Field(None, description="when the job must be done: " + DEADLINE_FORMS)
    expected_runtime_s: Annotated[float | None, WithJsonSchema({"anyOf": [
        {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_RUNTIME_S}, {"type": "null"}]})] = Field(
        None, description="the job's runtime if known; null: estimated from the desk's history")

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, v: Any) -> Any:
        if v not in ("callable", "entrypoint"):
            raise _refuse("kind")
        return v

    @field_validator("payload", mode="before")
    @classmethod
    def _payload(cls, v: Any, info: Any) -> Any:
        kind = info.data.get("kind")
        if kind == "entrypoint":
            return check_entrypoint(v)
        if not isinstance(v, (bytes, bytearray)) or not v:
            raise _refuse("fn")
        if len(v) > MAX_PAYLOAD:
            raise _refuse("fn", f"callable and arguments at most {MAX_PAYLOAD} bytes pickled; pass large data "
                                "by reference (a path or an object ref)")
        return bytes(v)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        if v is None or v == "":
            return ""
        if not isinstance(v, str) or not NAME_RE.match(v):
            raise _refuse("name")
        return v

    @field_validator("comm", mode="before")
    @classmethod
    def _comm(cls, v: Any) -> Any:
        try:
            return CommProfile(v)
        except ValueError:
            raise _refuse("comm") from None

    @field_validator("retries", mode="before")
    @classmethod
    def _retries(cls, v: Any) -> Any:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_RETRIES):
            raise _refuse("retries")
        return v

    @field_validator("job_id", mode="before")
    @classmethod
    def _job_id(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, str) or not JOB_ID_RE.match(v)):
            raise _refuse("job_id")
        return v

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, v: Any) -> int:
        return check_gpus(v)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: Any) -> Any:
        if v is None or v == "":
            return None
        try:
            return Priority.parse(v)
        except ValueError:
            raise _refuse("priority") from None

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: Any, info: Any) -> int:
        """The number of gang workers ("per_gpu": one per GPU); each holds gpus / workers GPUs."""
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        gpus = info.data.get("gpus")
        if gpus is None:       # gpus was refused already: that is the error to report
            return 1
        try:
            return worker_count(gpus, v)
        except WorkerRuleError as exc:
            raise PydanticCustomError("rayfin", "{allowed}", {"field": exc.field, "allowed": exc.allowed,
                                                              "value": exc.value}) from None

    @field_validator("min_workers", mode="before")
    @classmethod
    def _min_workers(cls, v: Any, info: Any) -> int | None:
        """An elastic gang's base; equal to `workers` it is a fixed gang (None)."""
        if v is None:
            return None
        most = info.data.get("workers")
        if most is None:       # workers was refused already: that is the error to report
            return None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= most:
            raise PydanticCustomError("rayfin", "{allowed}", {
                "field": "min_workers", "value": v,
                "allowed": f"a whole number of workers from 1 to workers={most} (workers=(min, max), min <= max)"})
        return None if v == most else v

    @field_validator("dist_backend", mode="before")
    @classmethod
    def _dist_backend(cls, v: Any) -> Any:
        if v is not None and v not in DIST_BACKENDS:
            raise _refuse("dist_backend")
        return v

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, v: Any) -> Any:
        return check_deadline(v)

    @field_validator("expected_runtime_s", mode="before")
    @classmethod
    def _runtime(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or not 0 < v <= MAX_RUNTIME_S:
            raise _refuse("expected_runtime_s")
        return float(v)

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise PydanticCustomError("rayfin", "{allowed}", {"field": "spec", "allowed": "a mapping",
                                                              "value": type(data).__name__})
        workers = data.get("workers")
        if isinstance(workers, (list, tuple)):      # workers=(min, max): an elastic gang
            if len(workers) != 2 or data.get("min_workers") is not None:
                raise PydanticCustomError("rayfin", "{allowed}", {
                    "field": "workers", "value": list(workers),
                    "allowed": "a count >= 1, 'per_gpu', or (min, max) for an elastic gang"})
            data = {**data, "workers": workers[1], "min_workers": workers[0]}
        return data

    @model_validator(mode="after")
    def _elastic(self) -> "JobSpec":
        if self.min_workers is not None and self.deadline is not None:
            raise PydanticCustomError("rayfin", "{allowed}", {
                "field": "deadline", "value": self.deadline,
                "allowed": "no deadline on an elastic gang (workers=(min, max)): its runtime depends on the size it "
                           "gets; give it fixed workers to ask for a deadline"})
        return self

    # -- the edges --
    @classmethod
    def parse(cls, data: "JobSpec | Mapping[str, Any]") -> "JobSpec":
        """Validate a submission, raising `InvalidRequest` for the first problem found."""
        if isinstance(data, JobSpec):
            data = data.model_dump()
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _invalid(exc) from None

    def with_defaults(self, priority: str | int | Priority, retries: int) -> "JobSpec":
        """The spec with what the caller left to the config filled in."""
        changes: dict[str, Any] = {}
        if self.priority is None:
            try:
                changes["priority"] = Priority.parse(priority)
            except ValueError:
                raise InvalidRequest(field="priority", value=priority, allowed=ALLOWED["priority"]) from None
        if self.retries is None:
            changes["retries"] = retries
        return self.model_copy(update=changes) if changes else self

    @property
    def unit(self) -> int:
        """GPUs per worker."""
        return self.gpus // self.workers

    @property
    def base_gpus(self) -> int:
        """What its admission holds: every GPU for a fixed gang, min_workers x unit for an elastic one."""
        return self.gpus if self.min_workers is None else self.min_workers * self.unit


def _invalid(exc: ValidationError) -> InvalidRequest:
    """A pydantic error as rayfin's: the field (as callers name it), the value, what is allowed."""
    err = exc.errors()[0]
    ctx = err.get("ctx") or {}
    loc = [str(p) for p in err.get("loc", ())]
    if err["type"] == "extra_forbidden":
        return InvalidRequest(field=loc[0], value=err.get("input"), allowed="fields " + ", ".join(SPEC_FIELDS))
    field = str(ctx.get("field") or (loc[0] if loc else "spec"))
    value = ctx["value"] if "value" in ctx else err.get("input")
    if isinstance(value, str) and len(value) > MAX_ENTRYPOINT:
        value = value[:80] + "..."
    allowed = str(ctx.get("allowed") or ALLOWED.get(field) or err.get("msg", ""))
    return InvalidRequest(field=field, value=value, allowed=allowed)


__all__ = ["JobSpec", "check_gpus", "check_entrypoint", "ALLOWED", "SPEC_FIELDS", "MAX_GPUS_PER_JOB",
           "JOB_ID_PATTERN", "NAME_PATTERN", "DIST_BACKENDS"]
