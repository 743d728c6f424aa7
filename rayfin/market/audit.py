"""An audit a compliance reviewer can replay.

Every decision is an `AuditRecord`: what was decided (`verdict`) for whom, a reason code with its
text, the quota window in force, and `snapshot_hash`, a SHA-256 of the canonical JSON of the
snapshot the decision was made on (dataclasses as field maps, enums as their values, mappings
with sorted keys, floats by repr; a Topology by its islands). The same snapshot always hashes the
same, on any machine and Python run.

`decode(ClusterSnapshot, canonical(snap))` rebuilds the snapshot from its canonical form (typed by
the dataclasses' annotations; a float written as its repr, an int as an int), so a controller can
keep the canonical JSON of a decision's snapshot and a reviewer can re-run it later. Replay checks
the rebuilt snapshot's hash against the record's, so a lossy decode shows as an altered snapshot,
never as a silent pass.

`replay(recorded, policy)` re-runs each recorded snapshot through `policy` (a pure function from
a snapshot to {subject: verdict}) and reports every record whose decision comes out differently,
and every snapshot whose hash no longer matches its record (it was altered). For the same code
version there should be none.
"""
from __future__ import annotations

import collections.abc
import csv
import dataclasses
import hashlib
import io
import json
import math
import types
import typing
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from typing import Any, Callable, Iterable, Mapping

from rayfin.market.plan import WindowName
from rayfin.policy.model import ClusterSnapshot, CycleDecision, Verdict


class AuditReason(str, Enum):
    ADMITTED = "admitted"
    QUEUED = "queued"
    PREEMPTED = "preempted"
    REFUSED = "refused"
    WINDOW_SWITCH = "window_switch"
    DEADLINE_AT_RISK = "deadline_at_risk"
    SLACK_ESCALATION = "slack_escalation"
    RESIZED = "resized"           # an elastic gang's grow or shrink (rayfin.policy.elastic)


_BY_VERDICT = {Verdict.ADMIT: AuditReason.ADMITTED, Verdict.WAIT: AuditReason.QUEUED,
               Verdict.PREEMPT: AuditReason.PREEMPTED, Verdict.REFUSE: AuditReason.REFUSED}


_FIELDS: dict[type, tuple[str, ...]] = {}   # dataclass -> its field names (dataclasses.fields is slow)


def canonical(obj: Any) -> Any:
    """A JSON-safe, order-stable form of `obj` (see the module docstring)."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, Enum):
        return canonical(obj.value)
    if isinstance(obj, float):
        return repr(obj) if math.isfinite(obj) else str(obj)
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    tp = type(obj)
    if tp.__name__ == "Topology":
        # all of it (placement reads nodes, racks and bandwidths), in a form `decode` rebuilds
        return {"islands": [[i.id, i.node, i.rack, i.pool, i.gpus, i.index] for i in obj.islands],
                "bandwidth": canonical(obj.bandwidth)}
    names = _FIELDS.get(tp)
    if names is None and dataclasses.is_dataclass(obj):
        names = _FIELDS[tp] = tuple(f.name for f in dataclasses.fields(obj))
    if names is not None:
        return {"__type": tp.__name__, **{n: canonical(getattr(obj, n)) for n in names}}
    if isinstance(obj, Mapping):
        return {str(canonical(k)): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (frozenset, set)):
        return sorted((canonical(x) for x in obj), key=lambda x: json.dumps(x, sort_keys=True))
    if isinstance(obj, (list, tuple)):
        return [canonical(x) for x in obj]
    if hasattr(obj, "model_dump"):
        return canonical(obj.model_dump(mode="json"))
    raise TypeError(f"cannot hash a {type(obj).__name__} in a snapshot; give it a dataclass form")


def canonical_json(obj: Any) -> str:
    """The canonical form as compact JSON text with sorted keys: what `snapshot_hash` hashes."""
    return json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"))


def hash_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def snapshot_hash(snapshot: Any) -> str:
    return hash_text(canonical_json(snapshot))


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at_s: float
    subject: str                  # job id (or "plan" for a window switch)
    desk: str | None
    verdict: str                  # the decision, e.g. "admit", "wait", "preempt", "refuse", "switch"
    reason: AuditReason
    text: str
    window: WindowName | None
    snapshot_hash: str
    code: str = ""                # the decision's ReasonCode value (rayfin.reasons), e.g. "reclaim"

    def to_dict(self) -> dict:
        return {"seq": self.seq, "at_s": self.at_s, "subject": self.subject, "desk": self.desk,
                "verdict": self.verdict, "reason": self.reason.value, "text": self.text,
                "window": None if self.window is None else self.window.value, "snapshot_hash": self.snapshot_hash,
                "code": self.code}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AuditRecord":
        w = d.get("window")
        return cls(int(d["seq"]), float(d["at_s"]), str(d["subject"]), d.get("desk"), str(d["verdict"]),
                   AuditReason(d["reason"]), str(d.get("text", "")), None if w is None else WindowName(w),
                   str(d["snapshot_hash"]), str(d.get("code", "")))


def records_of_cycle(snap: ClusterSnapshot, decision: CycleDecision, window: WindowName | None,
                     seq0: int = 0, snapshot_sha: str | None = None) -> tuple[AuditRecord, ...]:
    """One record per decision of a scheduling cycle, all pointing at the snapshot's hash
    (`snapshot_sha`, when the caller already has it)."""
    h = snapshot_sha or snapshot_hash(snap)
    return tuple(AuditRecord(seq0 + k, snap.now, d.job_id, d.desk, d.verdict.value, _BY_VERDICT[d.verdict],
                             d.reason, window, h, d.code.value) for k, d in enumerate(decision.all()))


def to_jsonl(records: Iterable[AuditRecord]) -> str:
    return "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in records)


def to_csv(records: Iterable[AuditRecord]) -> str:
    rows = [r.to_dict() for r in records]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[f.name for f in dataclasses.fields(AuditRecord)])
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


class ReplayCode(str, Enum):
    DECISION_CHANGED = "decision_changed"
    DECISION_MISSING = "decision_missing"     # the replay made no decision for the subject
    SNAPSHOT_ALTERED = "snapshot_altered"     # the stored snapshot no longer hashes to the record's hash


@dataclass(frozen=True)
class Mismatch:
    seq: int
    subject: str
    code: ReplayCode
    recorded: str
    replayed: str | None


@dataclass(frozen=True)
class ReplayReport:
    checked: int
    mismatches: tuple[Mismatch, ...]

    @property
    def ok(self) -> bool:
        return not self.mismatches


def replay(recorded: Iterable[tuple[Any, Iterable[AuditRecord]]],
           policy: Callable[[Any], Mapping[str, str]]) -> ReplayReport:
    """`recorded`: (snapshot, its records) pairs; `policy(snapshot)` -> {subject: verdict}."""
    checked, out = 0, []
    for snap, recs in recorded:
        recs = tuple(recs)
        h = snapshot_hash(snap)
        again = dict(policy(snap))
        for r in recs:
            checked += 1
            if r.snapshot_hash != h:
                out.append(Mismatch(r.seq, r.subject, ReplayCode.SNAPSHOT_ALTERED, r.snapshot_hash, h))
                continue
            got = again.get(r.subject)
            if got is None:
                out.append(Mismatch(r.seq, r.subject, ReplayCode.DECISION_MISSING, r.verdict, None))
            elif got != r.verdict:
                out.append(Mismatch(r.seq, r.subject, ReplayCode.DECISION_CHANGED, r.verdict, got))
    return ReplayReport(checked, tuple(out))


def elastic_records(snap: ClusterSnapshot, shrunk: Iterable[Any], grown: Iterable[Any], window: WindowName | None,
                    snapshot_sha: str) -> tuple[AuditRecord, ...]:
    """One record per decision of a cycle's elastic step: a shrink (a PREEMPT of `<id>+x`,
    verdict "preempt") or a growth (verdict "grow", subject the gang)."""
    rows = [(d.job_id, d.desk, d.verdict.value, d.reason, d.code.value) for d in shrunk]
    rows += [(g.job_id, g.desk, "grow", g.reason, g.code.value) for g in grown]
    return tuple(AuditRecord(k, snap.now, job, desk, verdict, AuditReason.RESIZED, text, window, snapshot_sha, code)
                 for k, (job, desk, verdict, text, code) in enumerate(rows))


def elastic_policy(gangs: Iterable[Any], grace_s: float) -> Callable[[ClusterSnapshot], dict[str, str]]:
    """The elastic step as a replay policy: {subject: verdict} of `shrinks` and `grows` on the
    snapshot, for the gangs the step was given."""
    from rayfin.policy.elastic import grows, shrinks

    gangs = list(gangs)

    def run(snap: ClusterSnapshot) -> dict[str, str]:
        out = {d.job_id: d.verdict.value for d in shrinks(snap, gangs, grace_s)}
        out.update({g.job_id: "grow" for g in grows(snap, gangs)})
        return out
    return run


def schedule_policy(cfg) -> Callable[[ClusterSnapshot], dict[str, str]]:
    """The scheduler as a replay policy: {job id: verdict} of `schedule(snapshot, cfg)`."""
    from rayfin.policy.scheduler import schedule

    def run(snap: ClusterSnapshot) -> dict[str, str]:
        return {d.job_id: d.verdict.value for d in schedule(snap, cfg).all()}
    return run


# ---- decoding the canonical form ---------------------------------------------------------------

def decode(tp: Any, v: Any) -> Any:
    """The value of type `tp` whose `canonical` form is `v` (dataclasses by their annotations)."""
    if v is None or tp is Any:
        return v
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return decode(inner[0], v) if len(inner) == 1 else v
    if tp is float:
        return v if isinstance(v, int) else float(v)   # an int stays an int: it hashed as one
    if tp in (int, str, bool):
        return v
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(v)
    if isinstance(tp, type) and tp.__name__ == "Topology":
        return _topology(tp, v)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: decode(hints[f.name], v[f.name]) for f in dataclasses.fields(tp)
                     if f.init and f.name in v})
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], x) for x in v)
        return tuple(decode(a, x) for a, x in zip(args, v))
    if origin in (dict, collections.abc.Mapping):
        return {decode(args[0], k): decode(args[1], x) for k, x in v.items()}
    if origin in (frozenset, set):
        return frozenset(decode(args[0], x) for x in v)
    if origin is list:
        return [decode(args[0], x) for x in v]
    return v


def _topology(tp: Any, v: Mapping[str, Any]) -> Any:
    from placement.topology import Bandwidths, Island
    islands = tuple(Island(str(i), str(n), str(r), str(p), int(g), int(k)) for i, n, r, p, g, k in v["islands"])
    bw = v.get("bandwidth")
    return tp(islands, decode(Bandwidths, bw)) if bw is not None else tp(islands)


def snapshot_from_canonical(data: Mapping[str, Any]) -> ClusterSnapshot:
    return typing.cast(ClusterSnapshot, decode(ClusterSnapshot, data))
