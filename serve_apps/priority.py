"""CPU priority of the serving processes: inference at the node's normal priority, batch below it.

Ray starts every worker process at nice 15 (the raylet's `worker_niceness`), so that workers
yield the CPU to Ray's own daemons. A Serve replica is a worker too. With every process of a
node at nice 0 but the replicas, any of them that wakes up (the raylet, the GCS, the dashboard
agent's periodic scans, a client on the same host) takes the replica's core almost entirely
while it runs: the kernel weighs nice 0 against nice 15 about 28 to 1. On the benchmark's node
that showed as pauses of 30 to 80 ms in a replica whose core was mostly idle, every few seconds,
which decided the quiet desk's p99 (docs/serving.md, "CPU priority").

rayfin's serving deployments therefore set their own threads to `serve.replica_niceness`
(default 0, the normal priority) when they start and again at every Serve health check (threads
started later inherit the niceness of the thread that starts them, which may not be ours yet).
Desks' batch workers stay at Ray's 15, so on a node that runs both, inference outranks batch.

Linux keeps a niceness per thread: `set_niceness` sets it for every thread of this process
(/proc/self/task). Lowering a niceness needs an RLIMIT_NICE that allows it (a soft limit of 20
allows 0 and nothing below) or CAP_SYS_NICE. Where it is refused, a replica goes as low as its
RLIMIT_NICE allows, logs it once and serves on. Such a limit is the process's, not rayfin's:
desks' workers started with it may lower their own niceness as far (docs/serving.md).

Serve's Python proxy (`serve.ingress: proxy`) sets it too, from `NICENESS_ENV`, when it calls
rayfin's proxy callback (serve_apps/edge_asgi.py). No Ray import here.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

# The niceness for processes rayfin's code runs in without a config (Serve's proxy), set by
# serve_apps.ingress.install for the cluster it starts.
NICENESS_ENV = "RAYFIN_SERVE_NICENESS"

_warned: set[str] = set()


@dataclass(frozen=True)
class Niceness:
    """What `set_niceness` did: the niceness asked for, the threads seen, how many it changed,
    and why it could not change the others (None when nothing was refused)."""

    target: int | None
    threads: int
    changed: int
    refused: str | None = None

    def as_dict(self) -> dict:
        return {"target": self.target, "threads": self.threads, "changed": self.changed, "refused": self.refused}


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:               # no /proc (not Linux): the calling thread, which is the process elsewhere
        return [0]


def _floor() -> int:
    """The lowest niceness RLIMIT_NICE lets an unprivileged process set (20 - its soft limit)."""
    try:
        import resource

        return 20 - int(resource.getrlimit(resource.RLIMIT_NICE)[0])
    except (ImportError, AttributeError, ValueError, OSError):
        return 20


def set_niceness(target: int | None) -> Niceness:
    """Set every thread of this process to niceness `target` (None: leave them as they are).
    Where lowering it that far is refused, as far as RLIMIT_NICE allows."""
    if target is None:
        return Niceness(None, 0, 0)
    tids = _threads()
    changed, refused = 0, None
    for tid in tids:
        try:
            now = os.getpriority(os.PRIO_PROCESS, tid)
            if now == target:
                continue
            try:
                os.setpriority(os.PRIO_PROCESS, tid, target)
            except PermissionError as exc:
                floor = _floor()
                refused = (f"niceness {target} refused ({exc.strerror}): lowering a niceness needs RLIMIT_NICE "
                           f"(or CAP_SYS_NICE); RLIMIT_NICE allows {floor} here; set serve.replica_niceness to "
                           "null to keep Ray's")
                if not target < floor < now:
                    continue
                os.setpriority(os.PRIO_PROCESS, tid, floor)
            changed += 1
        except ProcessLookupError:          # the thread ended meanwhile
            continue
        except PermissionError:             # not even the floor
            continue
    if refused and refused not in _warned:
        _warned.add(refused)
        log.warning("serving replica (pid %d): %s", os.getpid(), refused)
    return Niceness(target, len(tids), changed, refused)


class AtNiceness:
    """For rayfin's Serve deployment classes: `hold_niceness(n)` in the constructor sets every
    thread to `n` (`set_niceness`), and Serve's health check (every 10 s) brings threads started
    since to it. `priority` is what the last pass did (for `info()` and tests)."""

    niceness: int | None = None
    priority: Niceness = Niceness(None, 0, 0)

    def hold_niceness(self, niceness: int | None) -> None:
        self.niceness = niceness
        self.priority = set_niceness(niceness)

    def check_health(self) -> None:
        """Serve's health check: also brings threads started since to the niceness."""
        self.priority = set_niceness(self.niceness)


def niceness_from_env(environ: dict | None = None) -> int | None:
    """`NICENESS_ENV` as an int; None when unset or not a number."""
    raw = (os.environ if environ is None else environ).get(NICENESS_ENV, "")
    try:
        return int(raw) if raw.strip() else None
    except ValueError:
        return None
