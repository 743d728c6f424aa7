"""Markdown tables for docs/scheduling.md from `benchmarks.scheduling` result files.

    python -m benchmarks.scheduling_report docs/scheduling_results/load_1.0.json [...]

Per file: every policy's full-trace metrics, the mean and 95% CI over the scored windows, then
rayfin's ratios to kueue_tas_fs (full trace, and the paired per-window CI).
"""
from __future__ import annotations

import json
import sys

COLS = [("mean_jct_s", "mean JCT s", "{:.0f}"), ("p95_jct_s", "p95 JCT s", "{:.0f}"),
        ("mean_wait_s", "mean wait s", "{:.0f}"), ("mean_bounded_slowdown", "mean bsld", "{:.1f}"),
        ("p99_bounded_slowdown", "p99 bsld", "{:.0f}"), ("jain_fairness", "Jain", "{:.2f}"),
        ("guarantee_violation_gpu_hours", "viol GPU-h", "{:.1f}"), ("lost_work_gpu_hours", "lost GPU-h", "{:.0f}"),
        ("preemptions", "preempt", "{:.0f}")]


WCOLS = [("mean_bounded_slowdown", "mean bsld", "{:.1f}"), ("p99_bounded_slowdown", "p99 bsld", "{:.0f}"),
         ("mean_wait_s", "mean wait s", "{:.0f}"), ("mean_jct_s", "mean JCT s", "{:.0f}"),
         ("jain_fairness", "Jain", "{:.2f}")]


def cell(m, key, fmt):
    v = m.get(key)
    return "-" if v is None else fmt.format(v)


def wcell(m, key, fmt):
    ci = (m.get("ci95") or {}).get(key) or {}
    if ci.get("lo") is None:
        return "-"
    return f"{fmt.format(ci['mean'])} ({fmt.format(ci['lo'])}..{fmt.format(ci['hi'])})"


def report(path: str) -> str:
    d = json.load(open(path))
    cfg = d["config"]
    out = [f"**{path.split('/')[-1]}**: load {d['load']}, {cfg['gpus']} GPUs, placement model "
           f"{d['placement_model']} / {d['fabric']}, run in {cfg['wall_s']:.0f} s", "",
           "| policy | " + " | ".join(c[1] for c in COLS) + " |", "|" + "---|" * (len(COLS) + 1)]
    sections = [("", d["policies"])] + ([("elastic ", d["policies_elastic"])] if "policies_elastic" in d else [])
    for prefix, pols in sections:
        for name, m in pols.items():
            out.append(f"| {prefix}{name} | " + " | ".join(cell(m, k, f) for k, _, f in COLS) + " |")
    out += ["", "scored windows 1-3 (mean, 95% CI):", "",
            "| policy | " + " | ".join(c[1] for c in WCOLS) + " |", "|" + "---|" * (len(WCOLS) + 1)]
    for prefix, pols in sections:
        for name, m in pols.items():
            out.append(f"| {prefix}{name} | " + " | ".join(wcell(m, k, f) for k, _, f in WCOLS) + " |")
    for prefix, pols in sections:
        for name in [n for n in pols if n.startswith("rayfin")]:
            r = pols[name].get("vs_kueue_tas_fs")
            if not r:
                continue
            parts = []
            for k, v in r.items():
                ci = v["ci95"] or {}
                rng = (f" (windows {ci['mean']:.2f}, CI {ci['lo']:.2f}..{ci['hi']:.2f})"
                       if ci.get("lo") is not None else "")
                parts.append(f"{k} {v['full_trace']:.2f}x{rng}")
            out += ["", f"{prefix}{name} / kueue_tas_fs: " + "; ".join(parts)]
    if "elastic_share_sweep" in d:
        out += ["", "elastic share sweep (full trace): " + "; ".join(
            f"{s}: mean JCT {v['mean_jct_s']:.0f} s = {v['mean_jct_vs_kueue_tas_fs']:.3f}x kueue_tas_fs, "
            f"{v['resizes']} resizes" for s, v in d["elastic_share_sweep"].items())]
    return "\n".join(out)


if __name__ == "__main__":
    print("\n\n".join(report(p) for p in sys.argv[1:]))
