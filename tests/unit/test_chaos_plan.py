"""The chaos benchmark's plan (pure): which faults, in what order, and the job mix."""
import random

from benchmarks.chaos import JOB_MIX, draw_job, fault_schedule


def test_schedule_has_every_fault_once_per_count_and_the_node_crash_mid_run():
    faults = fault_schedule(10, 2, 1, random.Random(0))
    assert sorted(faults) == sorted(["controller"] * 10 + ["head"] * 2 + ["node"])
    assert faults.index("node") == 6                        # (10 + 2) // 2
    assert fault_schedule(3, 0, 0, random.Random(0)) == ["controller"] * 3


def test_job_mix_draws_follow_the_weights():
    rng = random.Random(1)
    draws = [draw_job(rng).name for _ in range(5000)]
    total = sum(k.weight for k in JOB_MIX)
    for kind in JOB_MIX:
        # e.g. single-gpu: 2 / (2 + 2 + 1) = 0.4 of the draws
        assert abs(draws.count(kind.name) / len(draws) - kind.weight / total) < 0.03
