"""The Python garbage collector's pauses in a benchmark's own client process.

A latency benchmark whose client measures on its own event loop counts every pause of that
loop as latency of the requests in flight, whichever condition the phase was. The client of
`benchmarks.serve_quota` is also the Ray driver that started the cluster: hundreds of thousands
of tracked objects, so a full (generation 2) collection takes 100 ms or more on a 2-core machine,
and it comes when enough objects have survived into the old generation, at a moment that has
nothing to do with the server. Ray Serve does the same for its own processes: it collects and
freezes the start-up heap of its proxy and of each replica once they are up
(`RAY_SERVE_FREEZE_GC_ON_STARTUP`), so that later collections skip it.

`GcPauses` records each collection (`gc.callbacks`): when it started, how long it took and its
generation; `between(a, b)` sums those that started in a window. `freeze()` is the client's
counterpart of Serve's: collect, then move every object alive into the permanent generation.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Pause:
    start: float          # on the recorder's clock
    seconds: float
    generation: int


class GcPauses:
    """Records this process's garbage collections while installed (a context manager)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.pauses: list[Pause] = []
        self._started: float | None = None

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = self.clock()
        elif self._started is not None:
            self.pauses.append(Pause(self._started, self.clock() - self._started, int(info.get("generation", 0))))
            self._started = None

    def __enter__(self) -> "GcPauses":
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def between(self, start: float, end: float) -> dict:
        """Collections that started in [start, end): how many, how many were full (generation 2),
        the longest and the total pause in ms."""
        inside = [p for p in self.pauses if start <= p.start < end]
        return summary(inside)


def summary(pauses: list[Pause]) -> dict:
    return {"collections": len(pauses), "full": sum(1 for p in pauses if p.generation == 2),
            "max_ms": round(1000 * max((p.seconds for p in pauses), default=0.0), 2),
            "total_ms": round(1000 * sum(p.seconds for p in pauses), 2)}


def freeze() -> dict:
    """Collect, then freeze: every object alive now is left out of later collections. Returns
    what a full collection cost before and after (ms) and how many objects were frozen."""
    t = time.perf_counter()
    gc.collect()
    before = time.perf_counter() - t
    gc.freeze()
    t = time.perf_counter()
    gc.collect()
    after = time.perf_counter() - t
    return {"frozen_objects": gc.get_freeze_count(), "full_collection_ms_before": round(1000 * before, 1),
            "full_collection_ms_after": round(1000 * after, 1)}
