"""Terminal tables of desks, jobs and policing findings: what `rayfin status`, `rayfin jobs`,
`rayfin watch` and `make demo` print. Formatting only; the data comes from the SDK."""
from __future__ import annotations

from typing import Any

COLOURS = {"red": "31", "green": "32", "yellow": "33", "blue": "34", "dim": "2", "bold": "1"}
STATE_COLOUR = {"PENDING": "yellow", "ADMITTED": "blue", "RUNNING": "blue", "SUCCEEDED": "green",
                "FAILED": "red", "CANCELLED": "dim", "PREEMPTED": "red"}


def colour(text: str, name: str, enabled: bool) -> str:
    return f"\x1b[{COLOURS[name]}m{text}\x1b[0m" if enabled else text


def usage_lines(table: dict[str, dict[str, Any]], use_colour: bool = False) -> list[str]:
    head = f"{'desk':<10} {'nominal':>7} {'in use':>7} {'serving':>7} {'borrowed':>8} {'lent':>5} {'queued':>6} " \
           f"{'running':>7} {'done':>5} {'failed':>6} {'preempt':>7}"
    lines = [colour(head, "bold", use_colour)]
    for name, r in table.items():
        borrowed = f"{r['borrowed']:>8g}"
        if r["borrowed"] > 0:
            borrowed = colour(borrowed, "yellow", use_colour)
        queued = f"{r['queued']:>6d}"
        if r["queued"]:
            queued = colour(queued, "yellow", use_colour)
        lines.append(f"{name:<10} {r['nominal']:>7g} {r['in_use']:>7g} {r['serving']:>7g} {borrowed} "
                     f"{r['lent']:>5g} {queued} {r['running']:>7d} {r.get('succeeded', 0):>5d} "
                     f"{r.get('failed', 0):>6d} {r.get('preempted', 0):>7d}")
    return lines


def job_lines(jobs: list[Any], use_colour: bool = False) -> list[str]:
    """One line per job; with a `deadline` and `eta` column (UTC, "!" when at risk, "^" when
    escalated to critical) when any job has a deadline."""
    dl = any(getattr(j, "deadline", None) is not None for j in jobs)
    extra = f" {'deadline':<12} {'eta':<12}" if dl else ""
    lines = [colour(f"{'job':<22} {'desk':<9} {'state':<10} {'gpus':>4} {'prio':<8} {'progress':>8}{extra}  "
                    "where / why", "bold", use_colour)]
    for j in jobs:
        where = ", ".join(f"{i}x{g:g}" for i, g in j.placement) or ""
        why = j.reason if j.state.value in ("PENDING", "FAILED", "PREEMPTED", "CANCELLED") else where
        bar = progress_bar(j.progress) if j.state.value == "RUNNING" else ""
        cols = f" {deadline_cell(j):<12} {eta_cell(j):<12}" if dl else ""
        lines.append(f"{j.job_id:<22} {j.desk:<9} {colour(f'{j.state.value:<10}', STATE_COLOUR[j.state.value], use_colour)} "
                     f"{j.gpus:>4g} {j.priority:<8} {bar:>8}{cols}  {why[:90]}")
    return lines


def deadline_cell(j: Any) -> str:
    d = getattr(j, "deadline", None)
    return "" if d is None else f"{d:%m-%d %H:%M}" + ("^" if getattr(j, "escalated", False) else "")


def eta_cell(j: Any) -> str:
    if getattr(j, "deadline", None) is None or j.state.terminal:
        return ""
    e = getattr(j, "eta", None)
    return ("?" if e is None else f"{e:%m-%d %H:%M}") + ("!" if getattr(j, "deadline_status", None) == "at_risk" else "")


def progress_bar(fraction: float, width: int = 8) -> str:
    n = int(round(max(0.0, min(1.0, fraction)) * width))
    return "#" * n + "." * (width - n)


def policing_lines(view: dict[str, Any], use_colour: bool = False) -> list[str]:
    """GPU use found outside rayfin (held now), one line per actor, task or placement group."""
    found = view.get("findings") or []
    head = (f"\noutside rayfin ({view.get('mode', '?')}): {len(found)} holding "
            f"{sum(f.get('gpus', 0.0) for f in found):g} GPUs; {view.get('detected', 0)} found, "
            f"{view.get('stopped', 0)} stopped since start")
    lines = [colour(head, "red" if found else "bold", use_colour)]
    for f in found:
        lines.append(f"  {f['kind']:<15} {f['id'][:16]:<16} {f.get('gpus', 0.0):>4g} GPU  {f.get('island') or '-':<10} "
                     f"desk {f.get('desk') or '?':<9} job {f.get('rayfin_job_id') or f.get('ray_job_id') or '?'}  "
                     f"{f.get('action', '')}")
    return lines


__all__ = ["COLOURS", "STATE_COLOUR", "colour", "deadline_cell", "eta_cell", "job_lines", "policing_lines", "progress_bar", "usage_lines"]
