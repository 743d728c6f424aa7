"""`rayfin ledger export` / `import`: a ledger snapshot as a file, to back up a ledger or move
it between SQLite and PostgreSQL.

The file is JSON Lines: a header, then one line per job, event and kv entry, then a trailer
with the counts, so a truncated file is refused rather than half imported:

    {"format": "rayfin-ledger", "version": 1, "schema_version": 1, "exported_at": ..., "source": ...}
    {"job": {...}}          payload and result as base64
    {"event": {...}}        with its original sequence number
    {"kv": {"key": ..., "value_b64": ...}}
    {"result": {"job_id": ..., "rank": r, "value_b64": ...}}     a gang rank's return value
    {"log": {"seq": n, "job_id": ..., "rank": r, "ts": t, "text": ...}}
    {"serving": {"model": ..., "desk": ..., "replicas": n, ...}}  a serving reservation
    {"end": {"jobs": N, "events": M, "kv": K, "results": R, "logs": L, "serving": S}}

Files from before a line kind existed load: its count is taken as 0.

The snapshot is read in one transaction (`Ledger.snapshot`), so it is one instant of a live
ledger; `import` restores it in one transaction into an empty ledger (`Ledger.restore`).
"""
from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Iterator

from rayfin.controller.ledger import Event, JobRecord, Ledger, LedgerSnapshot, ServingReservation
from rayfin.errors import LedgerError

FORMAT, VERSION = "rayfin-ledger", 1
_BLOBS = ("payload", "result")


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode("ascii")


def _unb64(s: str | None) -> bytes | None:
    return None if s is None else base64.b64decode(s)


def job_to_json(job: JobRecord) -> dict[str, Any]:
    d = asdict(job)
    if isinstance(job.payload, str):   # an entrypoint's command line travels as text
        d["payload_text"] = d.pop("payload")
    for k in _BLOBS:
        d[k] = _b64(d.get(k))
    d["placement"] = [list(p) for p in job.placement]
    return d


def job_from_json(d: dict[str, Any]) -> JobRecord:
    known = {f.name for f in fields(JobRecord)} | {"payload_text"}
    unknown = set(d) - known
    if unknown:
        raise LedgerError(f"job record has fields this rayfin does not know: {sorted(unknown)}; to fix: import "
                          "with the rayfin release that exported it or a newer one", reason="unknown fields")
    d = dict(d)
    text = d.pop("payload_text", None)
    for k in _BLOBS:
        d[k] = _unb64(d.get(k))
    if text is not None:
        d["payload"] = text
    d["placement"] = tuple((str(i), float(g)) for i, g in d.get("placement") or [])
    return JobRecord(**d)


def lines(snapshot: LedgerSnapshot, source: str) -> Iterator[str]:
    yield json.dumps({"format": FORMAT, "version": VERSION, "schema_version": snapshot.schema_version,
                      "exported_at": time.time(), "source": source})
    for job in snapshot.jobs:
        yield json.dumps({"job": job_to_json(job)}, default=str)
    for e in snapshot.events:
        yield json.dumps({"event": asdict(e)}, default=str)
    for key, value in snapshot.kv:
        yield json.dumps({"kv": {"key": key, "value_b64": _b64(value)}})
    for job_id, rank, blob in snapshot.results:
        yield json.dumps({"result": {"job_id": job_id, "rank": rank, "value_b64": _b64(blob)}})
    for seq, job_id, rank, ts, text in snapshot.logs:
        yield json.dumps({"log": {"seq": seq, "job_id": job_id, "rank": rank, "ts": ts, "text": text}})
    for res in snapshot.serving:
        yield json.dumps({"serving": asdict(res)})
    yield json.dumps({"end": {"jobs": len(snapshot.jobs), "events": len(snapshot.events), "kv": len(snapshot.kv),
                              "results": len(snapshot.results), "logs": len(snapshot.logs),
                              "serving": len(snapshot.serving)}})


def export_ledger(ledger: Ledger, path: str | os.PathLike[str], source: str = "") -> LedgerSnapshot:
    """Write a snapshot of `ledger` to `path` (written aside, then renamed: never half a file)."""
    snap = ledger.snapshot()
    out = Path(path)
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines(snap, source):
            f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(out)
    return snap


def read_snapshot(path: str | os.PathLike[str]) -> LedgerSnapshot:
    jobs: list[JobRecord] = []
    events: list[Event] = []
    kv: list[tuple[str, bytes]] = []
    results: list[tuple[str, int, bytes | None]] = []
    logs: list[tuple[int, str, int, float, str]] = []
    serving: list[ServingReservation] = []
    header: dict[str, Any] | None = None
    end: dict[str, int] | None = None
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise LedgerError(f"{path}:{n}: not JSON ({exc.msg})", ledger=str(path), reason="corrupt") from None
            if header is None:
                if row.get("format") != FORMAT or row.get("version") != VERSION:
                    raise LedgerError(f"{path} is not a rayfin ledger export (format {FORMAT} version {VERSION})",
                                      ledger=str(path), reason="format")
                header = row
            elif "job" in row:
                jobs.append(job_from_json(row["job"]))
            elif "event" in row:
                events.append(Event(**row["event"]))
            elif "kv" in row:
                kv.append((row["kv"]["key"], _unb64(row["kv"]["value_b64"]) or b""))
            elif "result" in row:
                r = row["result"]
                results.append((str(r["job_id"]), int(r["rank"]), _unb64(r["value_b64"])))
            elif "log" in row:
                r = row["log"]
                logs.append((int(r["seq"]), str(r["job_id"]), int(r["rank"]), float(r["ts"]), str(r["text"])))
            elif "serving" in row:
                serving.append(ServingReservation(**row["serving"]))
            elif "end" in row:
                end = row["end"]
                for kind in ("results", "logs", "serving"):   # an export from before these existed
                    end.setdefault(kind, 0)
    got = {"jobs": len(jobs), "events": len(events), "kv": len(kv), "results": len(results), "logs": len(logs),
           "serving": len(serving)}
    if header is None or end != got:
        raise LedgerError(f"{path} is incomplete: its trailer says {end}, read {got}; to fix: export again",
                          ledger=str(path), reason="truncated")
    return LedgerSnapshot(int(header["schema_version"]), tuple(jobs), tuple(events), tuple(kv), tuple(results),
                          tuple(logs), tuple(serving))


def import_ledger(ledger: Ledger, path: str | os.PathLike[str]) -> LedgerSnapshot:
    snap = read_snapshot(path)
    ledger.restore(snap)
    return snap
