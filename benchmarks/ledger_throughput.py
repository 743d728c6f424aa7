"""Ledger throughput: admissions per second the controller sustains on PostgreSQL and on SQLite,
side by side in one run.

    python -m benchmarks.ledger_throughput --rounds 10 --seconds 3 --out docs/results/ledger_throughput.json

The real `ControllerCore` (policy, state machine, every ledger write it makes) runs its cycle as
fast as it can on the in-package FakeBackend (no Ray: the ledger is what is measured), with
each desk's queue kept fed and every started job finished at once, so each job costs the
controller its full set of writes (submitted, admitted, started, finished: four transactions,
each a job row plus an audit event). Rounds alternate the two ledgers (A B, B A, ...) so a noisy
spell of the shared machine falls on both alike; each round gets a fresh ledger. PostgreSQL is
a server this benchmark starts (system package, durable settings: fsync on, as in production),
reached over TCP on loopback with password authentication; SQLite is a file in WAL mode with
synchronous=FULL, as `rayfin up` runs it.

JSON: per backend, admissions/s of every round, median and spread, ledger transactions/s; the
ratio PostgreSQL / SQLite of the medians (target: >= 0.5). A PNG of the rounds beside the JSON.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rayfin.config import load_config
from rayfin.controller.backend import FakeBackend
from rayfin.controller.core import ControllerCore
from rayfin.controller.ledger import SqliteLedger
from rayfin.controller.ledger_pg import PostgresLedger
from rayfin.local_servers import PostgresServer


def one_round(ledger, config, seconds: float) -> dict[str, float]:
    backend = FakeBackend()
    core = ControllerCore(config, ledger, backend)
    desks = [d.name for d in config.desks]
    spec = {"kind": "callable", "payload": b"x" * 256, "gpus": 1}
    submitted = cycles = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        queued = {d: 0 for d in desks}
        for job in core.active.values():
            if job.state == "PENDING":
                queued[job.desk] += 1
        for desk in desks:                       # keep each desk's queue fed
            for _ in range(max(0, 8 - queued[desk])):
                core.submit(f"{desk}-demo-token", desk, spec)
                submitted += 1
        core.cycle()
        cycles += 1
        for key, status in list(backend._statuses.items()):
            if status.state == "RUNNING":
                backend.finish(key.split("~")[0], result=b"r")
    elapsed = time.perf_counter() - t0
    admitted = len(ledger.events(kinds=["admitted"], limit=10**9))
    writes = len(ledger.events(limit=10**9))
    return {"admissions_per_s": admitted / elapsed, "ledger_transactions_per_s": writes / elapsed,
            "submitted": submitted, "admitted": admitted, "cycles": cycles, "seconds": elapsed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ledger_throughput", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="rounds per backend")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one round")
    ap.add_argument("--config", default="configs/local.yaml")
    ap.add_argument("--out", default="ledger_throughput.json")
    a = ap.parse_args(argv)

    config = load_config(a.config)
    work = Path(tempfile.mkdtemp(prefix="rayfin-ledger-bench-"))
    n = itertools.count()
    rounds: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgresql": []}
    with PostgresServer(durable=True) as pg:
        opener = {"sqlite": lambda: SqliteLedger(work / f"l{next(n)}.db"),
                  "postgresql": lambda: PostgresLedger(pg.create_database(f"bench{next(n)}"), password=pg.password)}
        for r in range(a.rounds):
            order = ("sqlite", "postgresql") if r % 2 == 0 else ("postgresql", "sqlite")
            for backend in order:
                led = opener[backend]()
                try:
                    res = one_round(led, config, a.seconds)
                finally:
                    led.close()
                rounds[backend].append(res)
                print(f"round {r + 1:2d} {backend:<10} {res['admissions_per_s']:7.1f} admissions/s "
                      f"({res['ledger_transactions_per_s']:7.1f} ledger writes/s, {res['cycles']} cycles)", flush=True)
    summary = {}
    for backend, rs in rounds.items():
        xs = sorted(x["admissions_per_s"] for x in rs)
        summary[backend] = {"admissions_per_s_median": statistics.median(xs), "min": xs[0], "max": xs[-1],
                            "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                            "ledger_transactions_per_s_median": statistics.median(
                                x["ledger_transactions_per_s"] for x in rs),
                            "rounds": rs}
    ratio = summary["postgresql"]["admissions_per_s_median"] / summary["sqlite"]["admissions_per_s_median"]
    paired = [p["admissions_per_s"] / s["admissions_per_s"] for p, s in zip(rounds["postgresql"], rounds["sqlite"])]
    result = {"config": a.config, "rounds": a.rounds, "seconds_per_round": a.seconds, "cpus": os.cpu_count(),
              "postgresql_over_sqlite": ratio, "paired_ratio_min": min(paired), "paired_ratio_max": max(paired),
              "target": ">= 0.5", "met": ratio >= 0.5, **summary}
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"median admissions/s: sqlite {summary['sqlite']['admissions_per_s_median']:.1f}, postgresql "
          f"{summary['postgresql']['admissions_per_s_median']:.1f}; ratio {ratio:.2f} (paired rounds "
          f"{min(paired):.2f}..{max(paired):.2f}); target >= 0.5: {'met' if ratio >= 0.5 else 'MISSED'}")
    _plot(rounds, Path(a.out).with_suffix(".png"))
    return 0


def _plot(rounds: dict[str, list[dict[str, float]]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for backend, rs in rounds.items():
        ax.plot(range(1, len(rs) + 1), [x["admissions_per_s"] for x in rs], marker="o", label=backend)
    ax.set_xlabel("round (alternating order)")
    ax.set_ylabel("admissions / s")
    ax.set_ylim(bottom=0)
    ax.set_title("Controller admissions per second by ledger")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
