"""benchmarks/gc_pauses.py: the benchmark client's own GC pauses (no Ray)."""
from __future__ import annotations

import gc

from benchmarks.gc_pauses import GcPauses, Pause, freeze, summary


class Tick:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def test_records_each_collection_with_its_generation_and_removes_its_callback():
    with GcPauses() as rec:
        gc.collect(0)
        gc.collect(2)
    assert [p.generation for p in rec.pauses][-2:] == [0, 2]
    assert all(p.seconds >= 0 for p in rec.pauses)
    assert rec._callback not in gc.callbacks
    n = len(rec.pauses)
    gc.collect()
    assert len(rec.pauses) == n                      # uninstalled: nothing more recorded


def test_between_counts_the_collections_that_started_in_the_window():
    rec = GcPauses(clock=Tick())
    rec._callback("start", {"generation": 0})       # starts at 1, ends at 2
    rec._callback("stop", {"generation": 0})
    rec._callback("start", {"generation": 2})       # starts at 3, ends at 4
    rec._callback("stop", {"generation": 2})
    assert rec.pauses == [Pause(1.0, 1.0, 0), Pause(3.0, 1.0, 2)]
    assert rec.between(0, 2) == {"collections": 1, "full": 0, "max_ms": 1000.0, "total_ms": 1000.0}
    assert rec.between(2, 10) == {"collections": 1, "full": 1, "max_ms": 1000.0, "total_ms": 1000.0}
    assert rec.between(5, 10) == summary([]) == {"collections": 0, "full": 0, "max_ms": 0.0, "total_ms": 0.0}


def test_freeze_leaves_the_heap_alive_now_out_of_later_collections():
    keep = [[i] for i in range(50_000)]              # tracked objects a full collection would scan
    try:
        got = freeze()
        assert got["frozen_objects"] >= len(keep)
        assert gc.get_freeze_count() >= len(keep)
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
