"""Process trees from /proc (Linux, stdlib only): what a command started, and stopping exactly that.

A process is named by (pid, start time in clock ticks since boot), so a pid the kernel hands to
someone else later is never mistaken for ours.

Run as a script it is the test run's reaper (tests/conftest.py starts it): it watches the pytest
process, remembers every descendant it ever sees (plus pids registered in a file, for servers
that detach, such as PostgreSQL's postmaster), and when pytest is gone, however it ended (a
pytest-timeout that calls os._exit, a SIGKILL), stops those that are still alive:

    python tests/support/procs.py --watch PID --registry FILE
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Iterable

Proc = tuple[int, int]          # (pid, start time)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()     # after "pid (comm) "; comm may hold spaces
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def start_time(pid: int) -> int | None:
    st = _stat(pid)
    return None if st is None else st[1]


def alive(proc: Proc) -> bool:
    return start_time(proc[0]) == proc[1]


def name(proc: Proc) -> str | None:
    """The command name (/proc/PID/comm) of a live process, None if it is gone."""
    try:
        with open(f"/proc/{proc[0]}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return None
    return comm if alive(proc) else None


def all_procs() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time) of every live process."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


def descendants(pid: int, table: dict[int, tuple[int, int]] | None = None) -> set[Proc]:
    """Every live process below `pid` (children, their children, ...), not `pid` itself."""
    table = all_procs() if table is None else table
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(p)
    out, todo = set(), list(children.get(pid, ()))
    while todo:
        p = todo.pop()
        out.add((p, table[p][1]))
        todo.extend(children.get(p, ()))
    return out


def tree(pid: int) -> set[Proc]:
    """`pid` and its descendants."""
    st = start_time(pid)
    return descendants(pid) | ({(pid, st)} if st is not None else set())



def session(sid: int) -> set[Proc]:
    """Every live process of session `sid` (a command started with start_new_session=True)."""
    out = set()
    for pid, (_, start) in all_procs().items():
        try:
            if os.getsid(pid) == sid:
                out.add((pid, start))
        except OSError:
            pass
    return out


def tagged(name: str, value: str) -> set[Proc]:
    """Every live process whose environment holds NAME=VALUE: all that a command started with
    that variable set, however they were started (children, daemons, new sessions), as long as
    they kept the environment they inherited. Needs the right to read their environment."""
    needle = f"{name}={value}".encode()
    out = set()
    for pid, (_, start) in all_procs().items():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    out.add((pid, start))
        except OSError:
            pass
    return out


def kill(procs: Iterable[Proc], grace_s: float = 5.0) -> set[Proc]:
    """SIGTERM the ones still alive, SIGKILL what is left after `grace_s`: the survivors (none, normally)."""
    left = {p for p in procs if alive(p)}
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        for pid, _ in left:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait_s
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = {p for p in left if alive(p)}
        if not left:
            break
    return left


def register(registry: str | None, pid: int) -> None:
    """Tell the reaper (whose registry file this is) to stop `pid` too when the test run ends."""
    st = start_time(pid)
    if registry and st is not None:
        with open(registry, "a") as f:
            f.write(f"{pid} {st}\n")


def _registered(registry: str) -> set[Proc]:
    try:
        with open(registry) as f:
            return {(int(a), int(b)) for a, b in (ln.split() for ln in f if ln.strip())}
    except (OSError, ValueError):
        return set()


def watch(parent: int, registry: str, interval_s: float = 1.0) -> int:
    me = os.getpid()
    parent_start = start_time(parent)
    seen: set[Proc] = set()
    while parent_start is not None and start_time(parent) == parent_start:
        seen |= {p for p in descendants(parent) if p[0] != me}
        time.sleep(interval_s)
    seen |= _registered(registry)
    left = [p for p in seen if alive(p)]
    if left:
        print(f"test reaper: stopping {len(left)} processes the test run left behind", file=sys.stderr)
    kill(left)
    try:
        os.unlink(registry)
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--watch", type=int, required=True)
    ap.add_argument("--registry", required=True)
    args = ap.parse_args()
    sys.exit(watch(args.watch, args.registry))
