"""The equal-cost SLO ratio over arrival seeds: one `benchmarks.autoscaling` run per seed, summed up.

    python -m benchmarks.autoscaling_seeds docs/results/autoscaling.json \
        docs/results/autoscaling_seeds/seed*.json --out docs/results/autoscaling_seeds/summary.json

Each run replays the same trace with its own draw of the Poisson arrivals (`--seed`), so its
`frontier.slo_ratio_at_equal_cost` is one draw of a random quantity: on the dev trace the draws
spread by about 0.06 (standard deviation) around their mean, more than some distances to the
target. This reads the runs' JSON (nothing is re-run), and writes per seed the calibrated
family's pooled ratio, its median and range over folds and the fixed-quantile family's ratio,
then their mean, standard deviation, standard error and range, a one-sided 95% upper bound on
the mean (benchmarks/spread.py), whether both are at the target (`target_met_on_the_mean`, the
rule of PLAN_seeds_8_11.md), the share of seeds that meet the target, and a PNG (one point per seed, the mean with +-2 standard errors, the target).
Runs whose recorded `setup` differs in anything but the seed are refused: their ratios would not
estimate one thing. `setup` holds the trace, the policy and simulator settings and the folds,
not the code's commit or `--no-library` (which changes no frontier figure).
"""
from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.spread import meets, setup_differences, spread, summarize_files

TARGET = 0.5
# What may differ between the runs summed up: the seed, and what does not touch the frontier.
MAY_DIFFER = {"seed", "no_library", "library", "out"}


def seed_row(result: dict, path: str) -> dict:
    fr = result["frontier"]
    folds = fr["slo_ratio_at_equal_cost_over_folds"]
    budget = result["setup"].get("default_budget")
    points = fr["rayfin_calibrated"]["slo_ratio_at_equal_cost_pooled"]["per_point"]
    return {"path": path, "seed": result["setup"].get("seed"),
            "slo_ratio_at_equal_cost": fr["slo_ratio_at_equal_cost"],
            # the configured budget's own point (the policy as shipped), pooled over the folds
            "at_default_budget": next((p["ratio"] for p in points if p["knob"] == budget), None),
            "over_folds": {k: folds[k] for k in ("median", "min", "max", "n")},
            "fixed_quantile": fr["rayfin_quantile"]["slo_ratio_at_equal_cost_pooled"]["geomean"],
            "mase_below_1_at_every_bin": result.get("targets", {}).get("mase_below_1_at_every_bin")}


def summarize(results: list[tuple[str, dict]]) -> dict:
    differing = setup_differences([r["setup"] for _, r in results], MAY_DIFFER)
    if differing:
        raise ValueError(f"runs differ in more than the seed: {', '.join(differing)}")
    rows = [seed_row(r, p) for p, r in results]
    unseeded = [row["path"] for row in rows if not isinstance(row["seed"], int)]
    if unseeded:
        raise ValueError(f"no setup.seed in {', '.join(unseeded)}")
    rows.sort(key=lambda row: row["seed"])
    seeds = [row["seed"] for row in rows]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed appears twice: {seeds}")
    ratios = [row["slo_ratio_at_equal_cost"] for row in rows]
    return {"target": TARGET, "seeds": rows,
            "slo_ratio_at_equal_cost": (ratio := spread(ratios, bound="upper")),
            "seeds_meeting_target": sum(v <= TARGET for v in ratios),
            # the rule of PLAN_seeds_8_11.md: the mean and its one-sided 95% upper bound <= TARGET
            "target_met_on_the_mean": meets(ratio, TARGET),
            "median_over_folds": spread([row["over_folds"]["median"] for row in rows]),
            "fixed_quantile": spread([row["fixed_quantile"] for row in rows]),
            "at_default_budget": (spread([row["at_default_budget"] for row in rows])
                                  if all(row["at_default_budget"] is not None for row in rows) else None),
            "mase_below_1_in_every_run": all(row["mase_below_1_at_every_bin"] for row in rows)}


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["seeds"]
    s = summary["slo_ratio_at_equal_cost"]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [row["seed"] for row in rows]
    ax.errorbar(xs, [row["over_folds"]["median"] for row in rows],
                yerr=[[row["over_folds"]["median"] - row["over_folds"]["min"] for row in rows],
                      [row["over_folds"]["max"] - row["over_folds"]["median"] for row in rows]],
                fmt="_", color="0.6", ecolor="0.75", capsize=3, label="median and range over folds")
    ax.plot(xs, [row["slo_ratio_at_equal_cost"] for row in rows], "o", color="C0", label="pooled, per seed")
    ax.plot(xs, [row["fixed_quantile"] for row in rows], "x", color="C2", label="fixed-quantile family, pooled")
    if s["se"] is not None:
        ax.axhspan(s["mean"] - 2 * s["se"], s["mean"] + 2 * s["se"], color="C0", alpha=0.15)
    ax.axhline(s["mean"], color="C0", lw=1, label=f"mean {s['mean']:.3f}" + (" (+-2 se)" if s["se"] else ""))
    ax.axhline(summary["target"], color="C3", ls="--", label=f"target <= {summary['target']}")
    ax.set_xlabel("arrival seed")
    ax.set_ylabel("SLO share at equal cost, rayfin / Ray")
    ax.set_title(f"calibrated family over {s['n']} seeds: {summary['seeds_meeting_target']} of {s['n']} "
                 f"at or under the target")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    summary, out = summarize_files(argv, description=__doc__, runs_help="JSON files written by benchmarks.autoscaling, one per seed",
                                   default_out="autoscaling_seeds.json", summarize=summarize, plot=plot)
    for row in summary["seeds"]:
        f = row["over_folds"]
        print(f"seed {row['seed']}: {row['slo_ratio_at_equal_cost']:.3f} (folds: median {f['median']:.2f}, "
              f"{f['min']:.2f} to {f['max']:.2f}); fixed quantile {row['fixed_quantile']:.3f}; "
              f"configured budget alone {row['at_default_budget']}")
    s = summary["slo_ratio_at_equal_cost"]
    sd = "n/a" if s["sd"] is None else f"{s['sd']:.3f}, se {s['se']:.3f}, one-sided 95% upper bound {s['bound_95']}"
    print(f"slo_ratio_at_equal_cost over {s['n']} seeds: mean {s['mean']:.3f}, sd {sd}, "
          f"range {s['min']:.3f} to {s['max']:.3f}; {summary['seeds_meeting_target']} of {s['n']} seeds <= "
          f"{TARGET}; mean and bound <= {TARGET}: {summary['target_met_on_the_mean']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
