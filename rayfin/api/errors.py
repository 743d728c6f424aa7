"""rayfin's typed errors as HTTP: the status code of each, and the JSON body
`{"error": {"type", "message", "fields"}}` the SDK turns back into the same typed error.

`DeadlineInfeasible` is 422 (the request is well formed but asks for what no schedule can give:
even started now the job ends after its deadline; not a conflict with the cluster's state, which
409 `QuotaExceeded` is), its body naming the type and carrying `deadline` and `earliest_finish`
(ISO 8601) and `runtime_s`."""
from __future__ import annotations

from typing import Any

from rayfin.errors import (ConfigError, ControllerUnavailable, Forbidden, InvalidRequest, JobNotFound, NotSupported,
                           PayloadTooLarge, QuotaExceeded, RayfinError, RequestError, Unauthorized, UnknownDesk)
from rayfin.market.errors import DeadlineInfeasible

# Most specific first: Forbidden is an Unauthorized, every request error a RayfinError.
STATUS: tuple[tuple[type[RayfinError], int], ...] = (
    (Forbidden, 403),
    (Unauthorized, 401),
    (InvalidRequest, 422),
    (DeadlineInfeasible, 422),
    (UnknownDesk, 404),
    (JobNotFound, 404),
    (PayloadTooLarge, 413),
    (NotSupported, 501),
    (QuotaExceeded, 409),
    (ControllerUnavailable, 503),
    (ConfigError, 500),
    (RequestError, 400),
    (RayfinError, 400),
)


def status_of(err: RayfinError) -> int:
    """HTTP status of a typed error. A quota refusal that may pass later (`retry_after_s` set) is
    429 with Retry-After; one that never will (more than the desk may ever hold) is 409."""
    if isinstance(err, QuotaExceeded) and getattr(err, "retry_after_s", None):
        return 429
    for cls, code in STATUS:
        if isinstance(err, cls):
            return code
    return 500


def headers_of(err: RayfinError) -> dict[str, str]:
    code = status_of(err)
    if code == 401:
        return {"WWW-Authenticate": "Bearer"}
    if code == 429:
        return {"Retry-After": str(max(1, int(round(float(getattr(err, "retry_after_s", 1.0))))))}
    return {}


def body_of(err: RayfinError) -> dict[str, Any]:
    wire = err.to_wire()
    wire["fields"] = {k: _jsonable(v) for k, v in wire["fields"].items()}
    return {"error": wire}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)[:200]


__all__ = ["STATUS", "status_of", "headers_of", "body_of"]
