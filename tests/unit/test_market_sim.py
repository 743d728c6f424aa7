"""rayfin.sim.market: with no scenario events it is the base simulator; window switches, serving
reservations and deadlines act as documented (small cluster: 2 nodes x islands [4, 4] = 16 GPUs)."""
from __future__ import annotations

from rayfin.market.plan import WindowName
from rayfin.policy import Policy, SchedulerConfig
from rayfin.policy.model import DeskQuota, Priority
from rayfin.sim import Simulator
from rayfin.sim.market import MarketScenario, MarketSimulator
from rayfin.sim.trace import TraceJob
from tests.support.policy import topo

T = topo()
CFG = SchedulerConfig.preset(Policy.KUEUE_TAS_FS)
DESKS = {"a": DeskQuota("a", 8.0), "b": DeskQuota("b", 8.0), "serve": DeskQuota("serve", 0.0)}
JOBS = [TraceJob(f"j{k}", "ta" if k % 2 else "tb", 100.0 * k, 500.0 + 37 * k, 1 + (k % 4)) for k in range(30)]
MAP = {"ta": "a", "tb": "b"}


def test_no_events_same_as_the_base_simulator():
    base = Simulator(T, DESKS, CFG, MAP).run(JOBS)
    sc = MarketScenario(1e9, ((0.0, DESKS, WindowName.INTRADAY),))
    ext = MarketSimulator(T, DESKS, CFG, MAP, scenario=sc).run(JOBS)
    assert base.jct_s == ext.jct_s and base.preemptions == ext.preemptions


def test_serving_follows_its_steps_and_counts_shortfall():
    # a fills the cluster from t=0 with 16 one-hour jobs of 1 GPU; serving wants 4 GPUs in [1,000, 2,000)
    jobs = [TraceJob(f"x{k}", "ta", 0.0, 3600.0, 1) for k in range(16)]
    serve_nom = {"a": DeskQuota("a", 12.0), "b": DeskQuota("b", 0.0), "serve": DeskQuota("serve", 4.0)}
    sc = MarketScenario(4000.0, ((0.0, serve_nom, WindowName.INTRADAY),), serving=((1000.0, 4), (2000.0, 0)),
                        opens=(1000.0,))
    sim = MarketSimulator(T, serve_nom, CFG, MAP, scenario=sc)
    sim.run(jobs)
    # serve is below its nominal 4: reclaims 4 of a's borrowed GPUs, held after the 30 s grace:
    # shortfall 4 GPUs x 30 s = 120 GPU-s, all in the 30 min after the open
    assert sim.short == sim.short_open == 4 * 30.0
    # prewarm from one grace before the open: no shortfall at all
    sc2 = MarketScenario(4000.0, sc.switches, sc.serving, prewarm=((970.0, 1900.0, 4),), opens=(1000.0,))
    sim2 = MarketSimulator(T, serve_nom, CFG, MAP, scenario=sc2)
    sim2.run(jobs)
    assert sim2.short == 0.0


def test_edf_order_runs_the_earlier_deadline_first():
    # one 16-GPU job holds everything until 1,000; then two 16-GPU jobs: "late" submitted first, "soon" due first
    jobs = [TraceJob("hold", "ta", 0.0, 1000.0, 16), TraceJob("late", "ta", 1.0, 500.0, 16),
            TraceJob("soon", "ta", 2.0, 500.0, 16)]
    fifo = SchedulerConfig.preset(Policy.FIFO)
    dl = {"late": 10_000.0, "soon": 1600.0}
    sc = MarketScenario(1e9, ((0.0, DESKS, WindowName.EOD),), deadlines=dl)
    ends = {}
    for order in ("submission", "edf"):
        sim = MarketSimulator(T, DESKS, fifo, MAP, scenario=sc, order=order)
        sim.run(jobs)
        ends[order] = {j: sim.recs[j].end for j in dl}
    assert ends["submission"] == {"late": 1500.0, "soon": 2000.0}    # soon misses 1,600
    assert ends["edf"] == {"soon": 1500.0, "late": 2000.0}           # soon meets it
    assert Priority.CRITICAL > Priority.NORMAL
