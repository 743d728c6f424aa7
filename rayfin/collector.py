"""Garbage collection held off while a latency-bound step runs.

A scheduling cycle over a long queue allocates thousands of small objects (one decision per
pending job), enough to set off several young-generation collections and, about one cycle in
ten, an older one that walks every live object: that, not the policy, sets the decision latency's
p99 (docs/scheduling.md, "Decision latency"). The controller freezes its long-lived heap after
start-up (`gc.freeze()`) and runs each decide step inside `paused()`; the cycle's garbage is
collected afterwards, at the next allocation past the threshold. The benchmarks measure the
decide step the same way.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def paused() -> Iterator[None]:
    """No automatic collection inside the block; the collector's state before it is restored
    after (so a caller that had turned it off keeps it off). Process-wide: meant for one
    latency-bound step of one thread (the controller's cycle thread)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
