"""The full-flood serving figures over repeated runs of `benchmarks.serve_quota --flood max`.

    python -m benchmarks.serve_flood_runs docs/results/serve_flood_runs/e8_*.json \
        docs/results/serve_flood_runs/e9_*.json --out docs/results/serve_flood_runs/summary_e8_e9.json

One run's `gateway_throughput_ratio` has a standard deviation of about 0.02 between runs, as
large as some distances to its target, so the targets are read off the mean over runs with a
one-sided 95% bound (benchmarks/spread.py; the rule of PLAN_round9.md): throughput >= 0.95 on
the mean and its lower bound, isolation (`quiet_p99_ratio`) <= 1.25 on the mean and its upper
bound. This reads the runs' JSON (nothing is re-run), and writes per run the two ratios and
what stands behind them, their spread, how many runs meet each target, and a PNG. Runs whose
recorded `setup` differs in more than the wall time and the load at the start are refused.
"""
from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.spread import meets, setup_differences, spread, summarize_files

THROUGHPUT_TARGET = 0.95    # gateway / plain Serve, at least
ISOLATION_TARGET = 1.25     # quiet desk's p99 with the full flood / alone, at most
MAY_DIFFER = {"wall_s", "load_avg_1m"}


def run_row(result: dict, path: str) -> dict:
    t = result["throughput"]
    pairs = sorted(t["pair_ratios"])
    return {"path": path,
            "gateway_throughput_ratio": result["gateway_throughput_ratio"],
            "pair_ratio_median": pairs[len(pairs) // 2] if pairs else None,
            "rounds": t["rounds"],
            "quiet_p99_ratio": result["quiet_p99_ratio"],
            "quiet_p99_alone_ms": result["quiet_p99_alone_ms"],
            "quiet_p99_flood_ms": result["quiet_p99_flood_ms"],
            "quiet_samples_per_condition": result["quiet_samples_per_condition"],
            "flood_rate_rps": result["flood_rate_rps"],
            "flood_admitted": result["flood_admitted"], "flood_allowed": result["flood_allowed"]}


def summarize(results: list[tuple[str, dict]]) -> dict:
    if not results:
        raise ValueError("no runs")
    missing = [p for p, r in results if "setup" not in r or r.get("setup", {}).get("flood") != "max"]
    if missing:
        raise ValueError(f"not a --flood max run: {', '.join(missing)}")
    diff = setup_differences([r["setup"] for _, r in results], MAY_DIFFER)
    if diff:
        raise ValueError(f"runs differ in their setup: {', '.join(diff)}")
    rows = [run_row(r, p) for p, r in results]
    tp = spread([row["gateway_throughput_ratio"] for row in rows], bound="lower")
    iso = spread([row["quiet_p99_ratio"] for row in rows], bound="upper")
    return {"targets": {"gateway_throughput_ratio": f">= {THROUGHPUT_TARGET}",
                        "quiet_p99_ratio": f"<= {ISOLATION_TARGET}"},
            "runs": rows,
            "gateway_throughput_ratio": tp,
            "runs_meeting_throughput": sum(row["gateway_throughput_ratio"] >= THROUGHPUT_TARGET for row in rows),
            "throughput_met": meets(tp, THROUGHPUT_TARGET),
            "quiet_p99_ratio": iso,
            "runs_meeting_isolation": sum(row["quiet_p99_ratio"] <= ISOLATION_TARGET for row in rows),
            "isolation_met": meets(iso, ISOLATION_TARGET),
            "flood_admitted_within_allowed": all(row["flood_admitted"] <= row["flood_allowed"] for row in rows)}


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["runs"]
    names = [Path(row["path"]).stem for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, target, label in ((axes[0], "gateway_throughput_ratio", THROUGHPUT_TARGET, "gateway / plain Serve"),
                                   (axes[1], "quiet_p99_ratio", ISOLATION_TARGET, "quiet p99, full flood / alone")):
        s = summary[key]
        xs = range(len(rows))
        ax.plot(xs, [row[key] for row in rows], "o", color="C0", label="per run")
        ax.axhline(s["mean"], color="C0", lw=1, label=f"mean {s['mean']:.3f}")
        if s.get("bound_95") is not None:
            lo, hi = sorted((s["mean"], s["bound_95"]))
            ax.axhspan(lo, hi, color="C0", alpha=0.15, label=f"one-sided 95% bound {s['bound_95']:.3f}")
        ax.axhline(target, color="C3", ls="--", label=f"target {summary['targets'][key]}")
        ax.set_xticks(list(xs), names, rotation=30, fontsize=8)
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    axes[0].set_title(f"throughput: {summary['runs_meeting_throughput']} of {len(rows)} runs at the target",
                      fontsize=9)
    axes[1].set_title(f"isolation: {summary['runs_meeting_isolation']} of {len(rows)} runs at the target",
                      fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    summary, out = summarize_files(argv, description=__doc__,
                                   runs_help="JSON files written by benchmarks.serve_quota --flood max",
                                   default_out="serve_flood_runs.json", summarize=summarize, plot=plot)
    for row in summary["runs"]:
        print(f"{Path(row['path']).stem}: throughput {row['gateway_throughput_ratio']:.3f} (pair median "
              f"{row['pair_ratio_median']:.3f}); quiet p99 {row['quiet_p99_alone_ms']:.1f} -> "
              f"{row['quiet_p99_flood_ms']:.1f} ms, ratio {row['quiet_p99_ratio']:.2f}; flood "
              f"{row['flood_rate_rps']:.0f} req/s, {row['flood_admitted']} of {row['flood_allowed']} admitted")
    for key, met, n_ok in (("gateway_throughput_ratio", "throughput_met", "runs_meeting_throughput"),
                           ("quiet_p99_ratio", "isolation_met", "runs_meeting_isolation")):
        s = summary[key]
        sd = "n/a" if s["sd"] is None else f"sd {s['sd']:.3f}, se {s['se']:.3f}, {s['bound']} 95% bound {s['bound_95']}"
        print(f"{key} over {s['n']} runs: mean {s['mean']:.3f}, {sd}, range {s['min']:.3f} to {s['max']:.3f}; "
              f"{summary[n_ok]} of {s['n']} runs at {summary['targets'][key]}; target met on the mean: "
              f"{summary[met]}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
