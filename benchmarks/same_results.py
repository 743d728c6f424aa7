"""Check that two benchmark result files agree in every non-timing value (a speed-up of the
simulator must not change a decision, so every figure must come out identical).

    python -m benchmarks.same_results BEFORE.json AFTER.json [--ignore wall_s,timing]

Exit status 0 when equal; otherwise each differing path with both values, and status 1. Keys in
--ignore (timings, by default) are skipped at any depth; a key only one file has is a difference
unless ignored.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

TIMING_KEYS = ("wall_s", "timing")


def differences(a: Any, b: Any, ignore: frozenset[str], path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in ignore:
                continue
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'after' if k not in a else 'before'}")
                continue
            out += differences(a[k], b[k], ignore, f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, ignore, f"{path}[{i}]")]
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} vs {b!r}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.same_results", description=__doc__.split("\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--ignore", default=",".join(TIMING_KEYS), help="keys to skip at any depth (comma-separated)")
    args = ap.parse_args(argv)
    with open(args.before) as fa, open(args.after) as fb:
        a, b = json.load(fa), json.load(fb)
    diff = differences(a, b, frozenset(k for k in args.ignore.split(",") if k))
    for d in diff:
        print(d)
    print("identical in every non-timing value" if not diff else f"{len(diff)} difference(s)")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
