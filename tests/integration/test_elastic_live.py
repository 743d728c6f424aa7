"""An elastic gang on the local multi-node cluster (configs/test.yaml: 16 GPUs, quant borrows
everything it runs on): admitted at its base, it starts grown into idle GPUs; when other desks'
work arrives and waits it gives its extra workers back, restarting from its checkpoint at its
base; the training's result shows both world sizes and one continuous run of steps."""
from __future__ import annotations

import pytest

from rayfin.policy.model import JobState
from tests.integration.test_gang import _no_gang_workers_left, probe
from tests.support.cluster import wait_for


@pytest.mark.timeout(600)
def test_elastic_gang_grows_into_idle_gpus_and_shrinks_when_work_waits(connect_desk):
    import jobs.train_signal as train_signal

    quant, risk, fx, equities = (connect_desk(d) for d in ("quant", "risk", "fx", "equities"))
    job = quant.submit(train_signal.train, gpus=4, workers=(1, 4), retries=2, name="elastic",
                       kwargs={"steps": 4000, "batch": 32, "checkpoint_every": 0})
    wait_for(lambda: (s := job.status()).state is JobState.RUNNING and s.progress > 0.02, timeout=240,
             what="the elastic gang training")
    assert job.status().info["workers"] == 4                # grown before it started: the cluster was idle
    # risk takes its pool (8), fx its island of n0 (4); equities' 3 GPUs then wait, and the gang's
    # 3 extra workers (on one island, at the lowest priority) are what gives way: it shrinks to 1
    others = [risk.submit(probe, 20.0, gpus=8, workers="per_gpu", name="risk-owner"),
              fx.submit(probe, 20.0, gpus=4, workers="per_gpu", name="fx-owner"),
              equities.submit(probe, 20.0, gpus=3, workers="per_gpu", name="equities-owner")]
    wait_for(lambda: (s := job.status()).state is JobState.RUNNING and s.info["workers"] == 1, timeout=180,
             what="the elastic gang running shrunk to its base")
    for o in others:
        assert o.results(timeout=300)[0]["sum"] > 0
    out = job.results(timeout=400)
    st = job.status()
    assert st.state is JobState.SUCCEEDED
    sizes = out[0]["world_sizes"]
    trail = [(round(e["ts"] % 1000, 1), e["kind"], e["state"], e["reason_code"]) for e in job.explain()["events"]]
    assert sizes[0] == 4 and 1 in sizes[1:], (sizes, out[0], trail)     # ran grown, then at its base
    assert len(out) == sizes[-1] and all(r["world_size"] == sizes[-1] for r in out)
    assert 0 < out[0]["resumed_from"] < 4000                   # the last run resumed from a checkpoint
    kinds = [e["kind"] for e in job.explain()["events"]]
    assert "resize_planned" in kinds and "resized" in kinds
    _no_gang_workers_left(job.job_id)
