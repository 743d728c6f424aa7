"""An elastic gang on the local multi-node cluster (configs/test.yaml: 16 GPUs, quant borrows
everything it runs on): admitted at its base, it starts grown into idle GPUs; when other desks'
work waits it gives its extra workers back, restarting from its checkpoint at its base, where
it finishes; the training's result shows both world sizes and one continuous run of steps.
(Growing a running gang through a restart is tested on the fake backend:
tests/unit/test_elastic_controller.py.)"""
from __future__ import annotations

import pytest

from rayfin.policy.model import JobState
from tests.integration.test_gang import _no_gang_workers_left
from tests.support.cluster import wait_for
from tests.support.jobs import hold


@pytest.mark.timeout(600)
def test_elastic_gang_grows_into_idle_gpus_and_shrinks_when_work_waits(connect_desk):
    import jobs.train_signal as train_signal

    quant, fx = connect_desk("quant"), connect_desk("fx")
    job = quant.submit(train_signal.train, gpus=4, workers=(1, 4), retries=2, name="elastic",
                       kwargs={"steps": 1500, "batch": 32, "checkpoint_every": 0})
    wait_for(lambda: (s := job.status()).state is JobState.RUNNING and s.progress > 0.02, timeout=240,
             what="the elastic gang training")
    assert job.status().info["workers"] == 4                # grown before it started: the cluster was idle
    # fx holds its whole ceiling (4) and asks for 4 more: that job waits (fx may not borrow), and
    # while any job waits the gang gives its 3 extra workers back: it restarts at its base of 1
    first = fx.submit(hold, 60.0, gpus=4, name="fx-holds-its-ceiling")
    wait_for(lambda: first.status().state is JobState.RUNNING, timeout=120, what="fx's first job running")
    waiting = fx.submit(hold, 1.0, gpus=4, name="fx-waits")
    wait_for(lambda: (s := job.status()).state is JobState.RUNNING and s.info["workers"] == 1, timeout=180,
             what="the elastic gang running shrunk to its base")
    assert waiting.status().state is JobState.PENDING
    out = job.results(timeout=400)      # it finishes at its base while fx's job still waits
    waiting.cancel()
    first.cancel()
    st = job.status()
    assert st.state is JobState.SUCCEEDED
    sizes = out[0]["world_sizes"]
    trail = [(round(e["ts"] % 1000, 1), e["kind"], e["state"], e["reason_code"]) for e in job.explain()["events"]]
    assert sizes == [4, 1], (sizes, out[0], trail)            # ran grown, then at its base
    assert len(out) == 1 and out[0]["world_size"] == 1
    assert 0 < out[0]["resumed_from"] < 1500                   # the last run resumed from a checkpoint
    kinds = [e["kind"] for e in job.explain()["events"]]
    assert "resize_planned" in kinds and "resized" in kinds
    _no_gang_workers_left(job.job_id)
