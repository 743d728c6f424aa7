"""The trace simulator: same policy core, deterministic, preemption with grace, metric schema."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rayfin.policy import DeskQuota, SchedulerConfig
from rayfin.sim import Simulator, TraceJob, desk_of, load_trace, simulate, summarize
from tests.support.policy import topo

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT.parent / "shared" / "traces" / "gpu_jobs_dev.csv"


def _sim(jobs, cfg, quotas=None, t=None):
    t = t or topo()
    quotas = quotas or {"a": DeskQuota("a", 8.0), "b": DeskQuota("b", 8.0)}
    return Simulator(t, quotas, cfg, {"ta": "a", "tb": "b"}).run(jobs)


def test_reclaim_in_the_simulator_waits_the_grace_and_resumes():
    # a fills all 16 GPUs at t=0 (4 jobs x 4 GPUs, 1000 s each); b submits 4 GPUs at t=100.
    jobs = [TraceJob(f"a{k}", "ta", 0.0, 1000.0, 4) for k in range(4)] + [TraceJob("b1", "tb", 100.0, 50.0, 4)]
    r = _sim(jobs, SchedulerConfig.preset("rayfin"))
    s = summarize(r)
    assert s["preemptions"] == 1 and s["jobs_completed"] == 5
    # b1 waits exactly the grace (100 -> 130), runs 50 s: JCT 80 s
    assert sorted(r.jct_s)[0] == pytest.approx(80.0)
    # the victim ran 130 s, resumed at t=180 when b1 ended, 870 s left: ends at 1050
    assert max(r.jct_s) == pytest.approx(1050.0)
    assert s["guarantee_violation_gpu_hours"] == 0.0   # b never waited longer than the grace
    # fifo has no reclaim: b1 waits for a whole a-job (t=1000): 4 GPUs x (1000 - 130) s late = 0.97 GPU-h
    f = summarize(_sim(jobs, SchedulerConfig.preset("fifo")))
    assert f["preemptions"] == 0 and f["guarantee_violation_gpu_hours"] == pytest.approx(4 * 870 / 3600, abs=0.01)


def test_stretch_makes_bad_placements_slower():
    # n0-i0 holds a 3-GPU job of b for 500 s; a 4-GPU job of a then runs 100 s ideal.
    jobs = [TraceJob("b0", "tb", 0.0, 500.0, 3), TraceJob("a1", "ta", 1.0, 100.0, 4)]
    ff = _sim(jobs, SchedulerConfig.preset("kueue"))       # first fit: 1 GPU on n0-i0 + 3 on n0-i1 (intra-node)
    bf = _sim(jobs, SchedulerConfig.preset("rayfin"))      # best fit: n0-i1 alone (NVLink)
    # 100 * (0.7 + 0.3 * 300 / 64) = 210.6 s vs 100 s
    assert sorted(ff.jct_s)[0] == pytest.approx(210.625) and sorted(bf.jct_s)[0] == pytest.approx(100.0)


def test_simulation_is_deterministic_and_schema_complete():
    jobs = load_trace(DEV, limit=300)
    t = topo(racks=2, nodes_per_rack=4)    # 64 GPUs: enough pressure for queues and reclaim
    quotas = {f"desk{k}": DeskQuota(f"desk{k}", 64 / 3) for k in range(3)}
    one = summarize(simulate(jobs, t, quotas, SchedulerConfig.preset("rayfin")))
    two = summarize(simulate(jobs, t, quotas, SchedulerConfig.preset("rayfin")))
    for key in ("decision_p99_ms", "decision_cpu_p99_ms", "decision_mean_ms"):
        one.pop(key), two.pop(key)
    assert one == two and one["jobs_completed"] == 300
    assert {"mean_jct_s", "p99_jct_s", "mean_wait_s", "utilization", "guarantee_violation_gpu_hours",
            "total_gpu_hours", "preemptions", "single_island_fraction", "jobs_completed"} <= set(one)


def test_desk_mapping_is_a_stable_hash():
    assert desk_of("u1", 6) == desk_of("u1", 6) == "desk" + str(__import__("zlib").crc32(b"u1") % 6)
    assert len({desk_of(f"u{k}", 6) for k in range(50)}) == 6


def test_benchmark_command_writes_json_and_png(tmp_path):
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, "-m", "benchmarks.scheduling", "--trace", str(DEV), "--load", "1.0",
                    "--desks", "3", "--limit", "200", "--windows", "4", "--latency-depths", "50", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True, timeout=300)
    data = json.loads(out.read_text())
    assert set(data["policies"]) == {"fifo", "static_demand", "kueue_tas_fs", "kueue_node", "tiresias",
                                     "sjf_oracle", "rayfin"}
    assert data["load"] == 1.0 and data["placement_model"] == "calibrated" and data["fabric"] == "nvlink-ib"
    m = data["policies"]["rayfin"]
    for key in ("mean_jct_s", "p95_jct_s", "mean_wait_s", "mean_bounded_slowdown", "p99_bounded_slowdown",
                "jain_fairness", "guarantee_violation_gpu_hours", "total_gpu_hours", "lost_work_gpu_hours",
                "decision_p99_ms", "decision_p99_ms_at_50"):
        assert m[key] is not None, key
    # three scored windows (window 0 is for tuning) give a confidence interval
    assert m["ci95"]["mean_bounded_slowdown"]["n"] == 3 and len(m["windows"]) == 4
    assert m["vs_kueue_tas_fs"]["mean_bounded_slowdown"]["full_trace"] > 0
    assert set(m["by_size"]) == {"1", "2-8", ">8"}
    assert out.with_suffix(".png").exists()


class _Curve:
    """A stand-in scaling curve: 8 workers run a 4-GPU job 1.6x as fast, nothing else helps."""

    def speedup(self, job_id, asked, workers):
        return 1.6 if workers == 8 else 1.0


def test_elastic_gang_grows_into_idle_gpus_and_shrinks_when_someone_waits():
    quotas = {"a": DeskQuota("a", 16.0)}
    jobs = [TraceJob("j", "ta", 0.0, 1000.0, 4)]
    sim = Simulator(topo(), quotas, SchedulerConfig.preset("rayfin"), {"ta": "a"}, elastic=_Curve(), elastic_share=1.0)
    r = sim.run(jobs)
    # grows to 8 at t=0: 1000 / 1.6 = 625 s
    assert r.jct_s == [pytest.approx(625.0)] and sim.resizes == 1
    # a 12-GPU job at t=100 cannot start (8 free): the extra workers go after the 30 s grace.
    # By t=130 the job did 130 * 1.6 = 208 s of work; it runs at 1x until k ends (t=180: 258 s done),
    # then grows again: 742 / 1.6 = 463.75 s more, ending at 643.75.
    jobs.append(TraceJob("k", "ta", 100.0, 50.0, 12))
    sim = Simulator(topo(), quotas, SchedulerConfig.preset("rayfin"), {"ta": "a"}, elastic=_Curve(), elastic_share=1.0)
    r = sim.run(jobs)
    assert sorted(r.jct_s) == [pytest.approx(80.0), pytest.approx(643.75)]   # k: 130 - 100 + 50
    assert sim.resizes == 3                                                   # grow, shrink, grow
    assert summarize(r)["lost_work_gpu_hours"] == 0.0 and summarize(r)["preemptions"] == 0
    # A resize restarts the gang from its checkpoint: with a 10 s restart, growing at t=0 costs
    # 10 s (ends at 635) and 8 GPUs x 10 s of lost work.
    sim = Simulator(topo(), quotas, SchedulerConfig.preset("rayfin"), {"ta": "a"}, elastic=_Curve(), elastic_share=1.0,
                    restart_overhead_s=10.0)
    r = sim.run(jobs[:1])
    assert r.jct_s == [pytest.approx(635.0)] and r.lost_gpu_s == pytest.approx(80.0)


def test_preemption_loses_the_work_since_the_last_checkpoint():
    # a fills 16 GPUs (4 x 4-GPU jobs of 5000 s); b reclaims 4 at t=2500 (+30 s grace).
    # With checkpoints every 1000 s the victim ran 2530 s and kept 2000: 530 s x 4 GPUs lost.
    jobs = [TraceJob(f"a{k}", "ta", 0.0, 5000.0, 4) for k in range(4)] + [TraceJob("b1", "tb", 2500.0, 100.0, 4)]
    t = topo()
    quotas = {"a": DeskQuota("a", 8.0), "b": DeskQuota("b", 8.0)}
    r = Simulator(t, quotas, SchedulerConfig.preset("kueue_tas_fs"), {"ta": "a", "tb": "b"},
                  checkpoint_interval_s=1000.0).run(jobs)
    s = summarize(r)
    assert s["preemptions"] == 1 and s["lost_work_gpu_hours"] == pytest.approx(530 * 4 / 3600, abs=0.01)
    # the victim restarts at t=2630 (b1 done) with 3000 s left: ends at 5630
    assert max(r.jct_s) == pytest.approx(5630.0)


def test_benchmark_elastic_reports_policies_elastic(tmp_path):
    out = tmp_path / "e.json"
    subprocess.run([sys.executable, "-m", "benchmarks.scheduling", "--trace", str(DEV), "--load", "1.0",
                    "--desks", "3", "--limit", "200", "--windows", "4", "--latency-depths", "",
                    "--policies", "kueue_tas_fs,rayfin", "--elastic", "--elastic-sweep", "0.5,1.0",
                    "--no-plot", "--out", str(out)], check=True, cwd=ROOT, capture_output=True, timeout=300)
    data = json.loads(out.read_text())
    el = data["policies_elastic"]["rayfin"]
    assert el["elastic_share"] == 0.5 and el["mean_jct_s"] is not None and "vs_kueue_tas_fs" in el
    assert set(data["elastic_share_sweep"]) == {"0.5", "1.0"}


def test_a_restart_after_a_preemption_costs_the_overhead():
    # As above, with a 60 s restart: the victim's work lost is 530 s + 60 s on 4 GPUs, and it ends 60 s later.
    jobs = [TraceJob(f"a{k}", "ta", 0.0, 5000.0, 4) for k in range(4)] + [TraceJob("b1", "tb", 2500.0, 100.0, 4)]
    quotas = {"a": DeskQuota("a", 8.0), "b": DeskQuota("b", 8.0)}
    r = Simulator(topo(), quotas, SchedulerConfig.preset("kueue_tas_fs"), {"ta": "a", "tb": "b"},
                  checkpoint_interval_s=1000.0, restart_overhead_s=60.0).run(jobs)
    assert summarize(r)["lost_work_gpu_hours"] == pytest.approx(590 * 4 / 3600, abs=0.01)
    assert max(r.jct_s) == pytest.approx(5690.0)
    with pytest.raises(ValueError, match="restart_overhead_s"):
        Simulator(topo(), quotas, SchedulerConfig.preset("rayfin"), {"ta": "a"}, restart_overhead_s=-1.0)


def test_least_attained_service_inside_the_desk_in_the_simulator():
    # desk a owns all 16 GPUs; its 16-GPU job has run 4,000 s (64,000 GPU-s, over an hour) when
    # its 4-GPU 100 s job arrives. rayfin swaps them (grace 30 s: JCT 130 s); without the rule
    # the short job waits for the long one (100,000 s).
    jobs = [TraceJob("long", "ta", 0.0, 100_000.0, 16), TraceJob("short", "ta", 4_000.0, 100.0, 4)]
    quotas = {"a": DeskQuota("a", 16.0)}
    on = Simulator(topo(), quotas, SchedulerConfig.preset("rayfin"), {"ta": "a"}).run(jobs)
    off = Simulator(topo(), quotas, SchedulerConfig.preset("rayfin", las_within_desk=False), {"ta": "a"}).run(jobs)
    assert sorted(on.jct_s)[0] == pytest.approx(130.0) and summarize(on)["preemptions"] == 1
    assert sorted(off.jct_s)[0] == pytest.approx(96_100.0) and summarize(off)["preemptions"] == 0
