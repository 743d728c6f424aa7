"""Admission arithmetic (nominal + borrowing + lending), table-driven."""
import math

import pytest

from rayfin.policy.model import DeskQuota
from rayfin.policy.quota import borrowable, check_quota, never_fits

DESKS = {
    "a": DeskQuota("a", nominal=8, borrowing_limit=4, lending_limit=8),
    "b": DeskQuota("b", nominal=8, borrowing_limit=None, lending_limit=2),
    "c": DeskQuota("c", nominal=4, borrowing_limit=0, lending_limit=None),
}
CAPACITY = 24.0  # 4 GPUs nobody is guaranteed (24 - 20)


@pytest.mark.parametrize("desk, gpus, usage, fits, borrowed, why", [
    # within nominal: 0 + 8 <= 8
    ("a", 8, {}, True, 0, "within nominal"),
    # above ceiling: 8 + 4 (borrowing) = 12 < 13
    ("a", 13, {}, False, 0, "ceiling 12"),
    # a holds 8, asks 4 more: borrows 4; lendable = spare 4 + b min(8, 2) + c 4 = 10
    ("a", 4, {"a": 8}, True, 4, "borrows 4"),
    # c may not borrow at all: ceiling 4 + 0
    ("c", 5, {}, False, 0, "ceiling 4"),
    # b borrows 6 with no limit; lendable = spare 4 + a 8 + c 4 = 16
    ("b", 14, {}, True, 6, "borrows 6"),
    # b asks 6 above nominal while a uses 8 and c 4: lendable = spare 4 + 0 + 0 = 4 < 6
    ("b", 14, {"a": 8, "c": 4}, False, 0, "lend only 4"),
    # already-borrowed GPUs are used up: a holds 12 (4 borrowed), b asks 8 more over 8 -> lendable 4 + 0 + 4 - 4 = 4
    ("b", 8, {"a": 12, "b": 8}, False, 0, "lend only 4"),
    # fractional serving charge counts as a fraction: 7.5 + 0.5 <= 8
    ("a", 0.5, {"a": 7.5}, True, 0, "within nominal"),
])
def test_check_quota(desk, gpus, usage, fits, borrowed, why):
    q = check_quota(DESKS[desk], gpus, DESKS, usage, CAPACITY)
    assert q.fits is fits
    assert q.borrowed == pytest.approx(borrowed)
    assert why in q.reason


@pytest.mark.parametrize("usage, exclude, expected", [
    ({}, "a", 4 + 2 + 4),              # spare 4 + b lends min(8, 2) + c lends 4
    ({"c": 4}, "a", 4 + 2 + 0),
    ({"a": 10}, "b", 4 + 0 + 4 - 2),   # a borrowed 2 already
    ({}, None, 4 + 8 + 2 + 4),
])
def test_borrowable(usage, exclude, expected):
    assert borrowable(DESKS, usage, CAPACITY, exclude=exclude) == pytest.approx(expected)


@pytest.mark.parametrize("desk, gpus, pool_capacity, refused", [
    ("a", 12, 24, None),
    ("a", 13, 24, "may hold at most 12"),
    ("b", 30, 24, "have 24 GPUs in all"),
    ("b", 24, 24, None),
    ("c", 5, 8, "may hold at most 4"),
])
def test_never_fits(desk, gpus, pool_capacity, refused):
    why = never_fits(DESKS[desk], gpus, pool_capacity)
    if refused is None:
        assert why is None
    else:
        assert refused in why


def test_unlimited_borrowing_ceiling_is_infinite():
    assert math.isinf(DESKS["b"].max_gpus)
