"""Validation of job specs at the controller's edge (the SDK runs the same checks first).

Every problem raises `InvalidRequest` naming the field, the value and what is allowed.
"""
from __future__ import annotations

import re
import shlex
from typing import Any

from placement.ranks import WorkerRuleError, worker_count
from rayfin.errors import InvalidRequest
from rayfin.policy.model import CommProfile, Priority

MAX_GPUS_PER_JOB = 4096
MAX_NAME = 128
MAX_ENTRYPOINT = 8192
MAX_PAYLOAD = 256 * 1024 * 1024
JOB_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}-[0-9a-f]{8,32}$")
SPEC_FIELDS = ("kind", "payload", "gpus", "priority", "name", "comm", "retries", "job_id", "workers", "dist_backend")
DIST_BACKENDS = ("auto", "gloo", "nccl")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def validate_gpus(gpus: Any) -> int:
    bad = InvalidRequest(field="gpus", value=gpus, allowed=f"a whole number of GPUs from 1 to {MAX_GPUS_PER_JOB}")
    if isinstance(gpus, float) and gpus.is_integer():
        gpus = int(gpus)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= MAX_GPUS_PER_JOB:
        raise bad
    return gpus


def validate_workers(workers: Any, gpus: int) -> int:
    """The number of gang workers (`"per_gpu"` = one per GPU); each holds gpus / workers GPUs."""
    if isinstance(workers, float) and workers.is_integer():
        workers = int(workers)
    try:
        return worker_count(gpus, workers)
    except WorkerRuleError as exc:
        raise InvalidRequest(field=exc.field, value=exc.value, allowed=exc.allowed) from None


def validate_dist_backend(backend: Any) -> str | None:
    if backend is None or backend in DIST_BACKENDS:
        return backend
    raise InvalidRequest(field="dist_backend", value=backend,
                         allowed="'auto' (nccl with CUDA, else gloo), 'gloo', 'nccl', or None (no process group)")


def validate_priority(priority: Any) -> Priority:
    try:
        return Priority.parse(priority)
    except ValueError:
        raise InvalidRequest(field="priority", value=priority,
                             allowed="one of " + ", ".join(p.label for p in Priority)) from None


def validate_entrypoint(command: Any) -> str:
    if not isinstance(command, str) or not command.strip():
        raise InvalidRequest(field="entrypoint", value=command, allowed="a non-empty command line string")
    if len(command) > MAX_ENTRYPOINT or "\x00" in command:
        raise InvalidRequest(field="entrypoint", value=command[:80] + "...",
                             allowed=f"at most {MAX_ENTRYPOINT} characters, no NUL bytes")
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise InvalidRequest(field="entrypoint", value=command, allowed=f"a shell-quoted command line ({exc})") from None
    if not argv:
        raise InvalidRequest(field="entrypoint", value=command, allowed="a command to run")
    return command


def validate_spec(spec: Any, *, default_priority: str = "normal", default_retries: int = 0) -> dict[str, Any]:
    """Check a submission; returns the normalised spec or raises InvalidRequest."""
    if not isinstance(spec, dict):
        raise InvalidRequest(field="spec", value=type(spec).__name__, allowed="a mapping")
    unknown = set(spec) - set(SPEC_FIELDS)
    if unknown:
        raise InvalidRequest(field=sorted(unknown)[0], value=spec[sorted(unknown)[0]],
                             allowed="fields " + ", ".join(SPEC_FIELDS))
    kind = spec.get("kind")
    if kind not in ("callable", "entrypoint"):
        raise InvalidRequest(field="kind", value=kind, allowed="'callable' or 'entrypoint'")
    payload = spec.get("payload")
    if kind == "callable":
        if not isinstance(payload, (bytes, bytearray)) or not payload:
            raise InvalidRequest(field="fn", value=type(payload).__name__, allowed="a picklable Python callable")
        if len(payload) > MAX_PAYLOAD:
            raise InvalidRequest(field="fn", value=f"{len(payload)} bytes",
                                 allowed=f"callable and arguments at most {MAX_PAYLOAD} bytes pickled; "
                                         "pass large data by reference (a path or an object ref)")
        payload = bytes(payload)
    else:
        payload = validate_entrypoint(payload)
    name = spec.get("name") or ""
    if name and (not isinstance(name, str) or not NAME_RE.match(name)):
        raise InvalidRequest(field="name", value=name,
                             allowed="1-128 characters: letters, digits, '_', '.', ':' or '-'")
    comm = spec.get("comm", CommProfile.NONE.value)
    try:
        comm = CommProfile(comm).value
    except ValueError:
        raise InvalidRequest(field="comm", value=comm,
                             allowed="one of " + ", ".join(c.value for c in CommProfile)) from None
    retries = spec.get("retries")
    retries = default_retries if retries is None else retries
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
        raise InvalidRequest(field="retries", value=retries, allowed="a whole number from 0 to 100")
    job_id = spec.get("job_id")
    if job_id is not None and (not isinstance(job_id, str) or not JOB_ID_RE.match(job_id)):
        raise InvalidRequest(field="job_id", value=job_id, allowed="<desk>-<8 to 32 hex digits>")
    gpus = validate_gpus(spec.get("gpus", 1))
    return {"job_id": job_id, "kind": kind, "payload": payload, "gpus": gpus,
            "priority": validate_priority(spec.get("priority") or default_priority), "name": name,
            "comm": comm, "retries": retries, "workers": validate_workers(spec.get("workers", 1), gpus),
            "dist_backend": validate_dist_backend(spec.get("dist_backend", "auto"))}
