"""rayfin's exception hierarchy.

    RayfinError
    ├── ConfigError            (field path, value, what is allowed)
    ├── RequestError
    │   ├── InvalidRequest     (field, value, allowed)
    │   ├── UnknownDesk        (desk)
    │   ├── Unauthorized       (desk, action)           no valid credential (HTTP 401)
    │   │   └── Forbidden      (desk, action)           a valid credential, not for this (HTTP 403)
    │   ├── PayloadTooLarge    (field, size, limit)     (HTTP 413)
    │   ├── NotSupported       (action)                 this controller lacks the call (HTTP 501)
    │   ├── QuotaExceeded      (desk, requested, available, retry_after_s)
    │   └── JobNotFound        (job_id)
    ├── JobFailed              (job_id, state, reason)  raised by Job.result()
    ├── JobTimeout             (job_id, timeout_s)
    ├── ControllerUnavailable  (address, reason)
    └── LedgerError            (ledger, reason)  the ledger database refused or cannot be reached

Every error carries its fields as attributes and a message that says what was wrong and how
to fix it. Errors cross the Ray boundary as plain dicts (`to_wire` / `from_wire`) so the SDK
raises the same typed error the controller decided, never a wrapped Ray traceback.
"""
from __future__ import annotations

from typing import Any


class RayfinError(Exception):
    """Base of every error rayfin raises on purpose."""

    fields: tuple[str, ...] = ()

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        for key in self.fields:
            setattr(self, key, fields.get(key))

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "message": self.message,
            "fields": {k: getattr(self, k, None) for k in self.fields},
        }

    def __reduce__(self) -> tuple[Any, ...]:  # keep fields when pickled through Ray
        return (_rebuild, (type(self).__name__, self.message, {k: getattr(self, k, None) for k in self.fields}))


class ConfigError(RayfinError):
    """A config file or value is invalid. `problems` lists (path, value, allowed) per field."""

    fields = ("path", "problems")

    def __init__(self, message: str, path: str | None = None, problems: list[tuple[str, Any, str]] | None = None):
        super().__init__(message, path=path, problems=problems or [])


class RequestError(RayfinError):
    """A client request was refused; nothing was changed."""


class InvalidRequest(RequestError):
    fields = ("field", "value", "allowed")

    def __init__(self, message: str | None = None, *, field: str, value: Any = None, allowed: str = ""):
        msg = message or f"invalid {field}={value!r}: {allowed}"
        super().__init__(msg, field=field, value=value, allowed=allowed)


class UnknownDesk(RequestError):
    fields = ("desk",)

    def __init__(self, message: str | None = None, *, desk: str, known: list[str] | None = None):
        msg = message or f"unknown desk {desk!r}" + (f"; configured desks: {', '.join(known)}" if known else "")
        super().__init__(msg, desk=desk)


class Unauthorized(RequestError):
    fields = ("desk", "action")

    def __init__(self, message: str | None = None, *, desk: str | None = None, action: str = ""):
        msg = message or f"credential not valid for desk {desk!r} (action: {action})"
        super().__init__(msg, desk=desk, action=action)


class Forbidden(Unauthorized):
    """The credential is valid, but not for what was asked (another desk's scope, an operator action)."""


class PayloadTooLarge(RequestError):
    fields = ("field", "size", "limit")

    def __init__(self, message: str | None = None, *, field: str, size: int, limit: int):
        msg = message or (f"{field} is {size} bytes; the limit is {limit}: pass large data by reference "
                          "(a path or a table name) instead of by value")
        super().__init__(msg, field=field, size=size, limit=limit)


class NotSupported(RequestError):
    fields = ("action",)

    def __init__(self, message: str | None = None, *, action: str):
        super().__init__(message or f"this rayfin controller does not support {action!r} yet; upgrade it",
                         action=action)


class QuotaExceeded(RequestError):
    fields = ("desk", "requested", "available", "retry_after_s")

    def __init__(self, message: str | None = None, *, desk: str, requested: float, available: float,
                 retry_after_s: float | None = None):
        msg = message or (f"desk {desk!r} asked for {requested:g} GPUs but may hold at most {available:g}; "
                          "to fix: ask for fewer GPUs or raise the desk's nominal/borrowing quota")
        super().__init__(msg, desk=desk, requested=requested, available=available, retry_after_s=retry_after_s)


class JobNotFound(RequestError):
    fields = ("job_id",)

    def __init__(self, message: str | None = None, *, job_id: str):
        super().__init__(message or f"no job {job_id!r} visible to this desk", job_id=job_id)


class JobFailed(RayfinError):
    fields = ("job_id", "state", "reason")

    def __init__(self, message: str | None = None, *, job_id: str, state: str, reason: str = ""):
        super().__init__(message or f"job {job_id} ended {state}: {reason}", job_id=job_id, state=state, reason=reason)


class JobTimeout(RayfinError):
    fields = ("job_id", "timeout_s")

    def __init__(self, message: str | None = None, *, job_id: str, timeout_s: float):
        super().__init__(message or f"job {job_id} not finished after {timeout_s:g}s", job_id=job_id, timeout_s=timeout_s)


class ControllerUnavailable(RayfinError):
    fields = ("address", "reason")

    def __init__(self, message: str | None = None, *, address: str | None = None, reason: str = ""):
        super().__init__(message or f"rayfin controller not reachable at {address or 'auto'}: {reason}; "
                         "to fix: start it with `rayfin up` or pass the right address", address=address, reason=reason)


class LedgerError(RayfinError):
    """The ledger database cannot be reached, or refused an operation (e.g. an import into a
    ledger that is not empty). `ledger` names it without any credential."""

    fields = ("ledger", "reason")

    def __init__(self, message: str | None = None, *, ledger: str = "", reason: str = ""):
        super().__init__(message or f"ledger {ledger}: {reason}", ledger=ledger, reason=reason)


_TYPES: dict[str, type[RayfinError]] = {}


def _register() -> None:
    stack: list[type[RayfinError]] = [RayfinError]
    while stack:
        cls = stack.pop()
        _TYPES[cls.__name__] = cls
        stack.extend(cls.__subclasses__())


def _rebuild(name: str, message: str, fields: dict[str, Any]) -> RayfinError:
    if name not in _TYPES:     # a subclass defined in a module imported since (rayfin.market.errors)
        _register()
    cls = _TYPES.get(name, RayfinError)
    err = Exception.__new__(cls)
    Exception.__init__(err, message)
    err.message = message
    for k, v in fields.items():
        setattr(err, k, v)
    return err


def from_wire(payload: dict[str, Any]) -> RayfinError:
    """Rebuild a typed error from `RayfinError.to_wire()`."""
    return _rebuild(payload.get("type", "RayfinError"), payload.get("message", ""), payload.get("fields", {}))
