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
