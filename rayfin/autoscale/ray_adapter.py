"""The one seam between the capacity planner and Ray's cluster autoscaler.

`RayAutoscalerAdapter.apply(request)` passes `request.bundles()` to
`ray.autoscaler.sdk.request_resources` when they differ from what was last sent (Ray keeps
only the latest request, cluster-wide, so all pools go in one call); `release()` clears it
with `request_resources(bundles=[])`. Tests inject `request_fn`; Ray's exceptions become
`AutoscalerUnavailable`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rayfin.autoscale.planner import CapacityRequest
from rayfin.errors import RayfinError

RequestFn = Callable[..., None]


class AutoscalerUnavailable(RayfinError):
    """request_resources failed; the previous request (if any) still stands in Ray."""

    fields = ("bundles", "reason")

    def __init__(self, message: str | None = None, *, bundles: int = 0, reason: str = ""):
        super().__init__(message or (f"could not send {bundles} bundle(s) to Ray's autoscaler: {reason}; "
                                     "to fix: check that Ray is initialised and the cluster was started with "
                                     "an autoscaling config (capacity ahead of demand needs one)"),
                         bundles=bundles, reason=reason)


@dataclass(frozen=True)
class ApplyResult:
    sent: bool                     # False: same bundles as last time, nothing sent
    bundles: int
    gpus: dict[str, float]


def _default_request_fn() -> RequestFn:
    from ray.autoscaler.sdk import request_resources  # lazy: the one place this package touches Ray

    fn: RequestFn = request_resources
    return fn


class RayAutoscalerAdapter:
    def __init__(self, request_fn: RequestFn | None = None) -> None:
        self._request_fn = request_fn
        self._last: list[dict[str, float]] | None = None

    def _send(self, bundles: list[dict[str, float]]) -> None:
        fn = self._request_fn or _default_request_fn()
        try:
            fn(bundles=bundles)
        except Exception as exc:  # noqa: BLE001 - Ray raises several types; map them at the seam
            raise AutoscalerUnavailable(bundles=len(bundles), reason=f"{type(exc).__name__}: {exc}") from exc
        self._last = bundles

    def apply(self, request: CapacityRequest) -> ApplyResult:
        bundles = request.bundles()
        if bundles == self._last:
            return ApplyResult(False, len(bundles), request.gpus)
        self._send(bundles)
        return ApplyResult(True, len(bundles), request.gpus)

    def release(self) -> None:
        """Withdraw every request (e.g. at controller shutdown)."""
        self._send([])
