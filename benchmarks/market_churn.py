"""Diagnostic: rayfin's preemptions at the heavy point (load 1.1, risk 0.35, 3 sessions, R = 0.35,
scored invocation days) by (reason code, victim desk, beneficiary desk, beneficiary priority as
the cycle saw it: 2 = critical, i.e. an escalated deadline job), and by hour of the local day.

    python -m benchmarks.market_churn SEED
"""
import argparse
import csv
import math
import sys
from collections import Counter

import numpy as np
import benchmarks.market_day as m
import rayfin.sim.engine as eng
from rayfin.sim import load_trace
from rayfin.sim.load import in_window_demand
from rayfin.sim.placement_model import PROFILE_DIR, Stretch
C: Counter = Counter()
H: Counter = Counter()
orig = eng.schedule


def wrapped(snap, cfg):
    dec = orig(snap, cfg)
    pend = {j.job_id: j for j in snap.pending}
    for d in dec.preempts:
        b = pend.get(d.beneficiary)
        hour = int((snap.now % 86400) // 3600)
        C[(d.code.value, d.desk, b.desk if b else None, int(b.priority) if b else None)] += 1
        H[hour] += 1
    return dec


eng.schedule = wrapped
ns = argparse.Namespace(exchange="XNYS", start="2025-11-20", days=3, desks=5, load=1.1, gpus=None, risk_frac=0.35,
                        serve_frac=0.15, grace=30.0, checkpoint_interval=1800.0)
trace = load_trace(str(m.Path(__file__).resolve().parents[2] / "shared/traces/gpu_jobs_dev.csv"))
demand = in_window_demand(trace)
inv = np.asarray([float(r["exec_s_total"] or 0) / 60.0 for r in csv.DictReader(open(m.Path(__file__).resolve().parents[2] / "shared/traces/invocations_dev.csv"))])
ns.serve_peak = int(math.ceil(0.15 * demand))
ns.open_minute = m.open_minute(inv, range(3, 6))
k = m.serving_scale(inv, range(3, 6), ns.serve_peak, ns.open_minute)
st = Stretch.build("calibrated", "nvlink-ib", 2.8, 0.3, str(PROFILE_DIR))
w = m.build_world(ns, int(sys.argv[1]), 8, inv, k, trace, demand)
w.gpus = m.size_cluster(ns, w, demand)
sim = m.run_policy(w, "rayfin", ns, st, 0.35 * w.gpus, 3600.0)
print("preemptions", sim.preemptions, "decided", sum(C.values()))
for key, n in C.most_common(15):
    print(n, key)
print("by hour of the local day:", sorted(H.items()))
