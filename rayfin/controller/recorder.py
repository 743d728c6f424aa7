"""What the controller tells the outside world about itself (metrics, traces).

`Recorder` is the seam: the controller calls it at each step; `NullRecorder` ignores
everything (unit tests, the simulator); the telemetry package provides one that exports Ray
metrics and OpenTelemetry spans.
"""
from __future__ import annotations

from typing import Any, Protocol


class Recorder(Protocol):
    def submitted(self, job: Any) -> None: ...
    def refused(self, desk: str, reason: str) -> None: ...
    def decided(self, decision: Any) -> None: ...
    def state_changed(self, job: Any, old_state: str) -> None: ...
    def preempted(self, job: Any, reason: str, lost_gpu_s: float = 0.0) -> None: ...
    def cycle(self, report: Any, usage: dict[str, dict[str, Any]], snapshot: Any) -> None: ...
    def window(self, effective: str) -> None: ...
    def deadline_changed(self, job: Any, code: Any) -> None: ...


class NullRecorder:
    def submitted(self, job: Any) -> None:
        pass

    def refused(self, desk: str, reason: str) -> None:
        pass

    def decided(self, decision: Any) -> None:
        pass

    def state_changed(self, job: Any, old_state: str) -> None:
        pass

    def preempted(self, job: Any, reason: str, lost_gpu_s: float = 0.0) -> None:
        pass

    def cycle(self, report: Any, usage: dict[str, dict[str, Any]], snapshot: Any) -> None:
        pass

    def window(self, effective: str) -> None:
        pass

    def deadline_changed(self, job: Any, code: Any) -> None:
        pass
