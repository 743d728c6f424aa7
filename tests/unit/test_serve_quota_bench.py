"""The serve_quota benchmark's pure helpers (no Ray, no Serve)."""
from __future__ import annotations

import os

import pytest

from benchmarks.serve_quota import cpu_list


def test_cpu_list_reads_single_cpus_and_ranges():
    assert cpu_list(None) is None and cpu_list("") is None
    assert cpu_list("0") == {0}
    if (os.cpu_count() or 1) >= 2:
        assert cpu_list("0-1") == {0, 1} and cpu_list("1,0") == {0, 1}


@pytest.mark.parametrize("text", ["x", "0-", "999", "0,999"])
def test_cpu_list_names_what_is_allowed(text):
    with pytest.raises(ValueError, match="CPU"):
        cpu_list(text)


def test_a_rounds_replica_counts_are_the_difference_of_two_reads():
    from benchmarks.serve_quota import ReplicaCounts, round_counts, sum_batches
    before = ReplicaCounts({16: 10, 3: 1}, (100, 10, 1))
    after = ReplicaCounts({16: 40, 3: 1, 8: 2}, (250, 23, 2))
    r = round_counts(before, after)
    assert r == ReplicaCounts({16: 30, 8: 2}, (150, 13, 1))        # sizes with no new batch left out
    assert r.batch_mean == round((16 * 30 + 8 * 2) / 32, 2)
    assert round_counts(None, after) is None and round_counts(before, None) is None   # a failed read
    assert ReplicaCounts({}, (0, 0, 0)).batch_mean is None
    assert sum_batches([r, None, ReplicaCounts({8: 1}, (0, 0, 0))]) == {8: 3, 16: 30}
