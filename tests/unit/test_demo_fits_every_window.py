"""`make demo` must work at any hour: every job it submits (rayfin/demo.py) has to fit its
desk's ceiling in every window of the market clock in configs/local.yaml. Before, fx's end-of-day
quota (nominal 6 + borrowing 4) left the 12-GPU grid search PENDING from the close to six hours
after it, and the demo failed then (4/5 jobs) though it passed earlier in the day."""
from __future__ import annotations

from pathlib import Path

import pytest

from rayfin.config import load_config
from rayfin.market.plan import WindowName, quotas_in
from rayfin.policy.model import DeskQuota

LOCAL = Path(__file__).resolve().parents[2] / "configs" / "local.yaml"
# The demo's admitted jobs, desk -> largest GPU request (rayfin/demo.py; rates' 16-GPU job is
# the one meant to be refused at submit).
DEMO_LARGEST = {"risk": 4, "fx": 12, "equities": 10}


@pytest.mark.parametrize("window", list(WindowName))
def test_every_demo_job_fits_its_desk_in(window):
    config = load_config(LOCAL)
    base = {d.name: DeskQuota.from_config(d) for d in config.desks}
    assert config.market is not None
    quotas = quotas_in(config.market.quota_plan, base, window)
    for desk, gpus in DEMO_LARGEST.items():
        assert quotas[desk].max_gpus >= gpus, (window, desk, quotas[desk])


def test_the_demo_still_submits_what_this_test_assumes():
    text = (Path(__file__).resolve().parents[2] / "rayfin" / "demo.py").read_text()
    for desk, gpus in DEMO_LARGEST.items():
        assert f"gpus={gpus}" in text, desk
