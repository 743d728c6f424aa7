"""The controller's records: what the ledger stores and the controller keeps in memory.

`JobRecord` is a job's whole state, typed: its lifecycle (`state: JobState`, `kind: JobKind`),
the reason of its last change (`reason` text and `reason_code`), and the control state the
controller acts on (`generation`, `admitted_at`, `borrowed`, `preempted_for`, ...). `info`
keeps only what the runner reported about where the job ran (nodes, devices, ranks), shown to
callers and never decided on.

Storage keeps the shape older ledgers have: the control fields ride in the `info` JSON column
under their historical keys (`gen`, `admitted_at`, ...), so a ledger or an export written before
they were typed loads unchanged, and one written now loads in an older reader's `info`.
`ServingReservation` is a serving deployment's GPUs charged to a desk: its own record and table.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any

from rayfin.policy.model import JobState
from rayfin.reasons import ReasonCode, code_of

Placement = tuple[tuple[str, float], ...]


class JobKind(str, Enum):
    CALLABLE = "callable"
    ENTRYPOINT = "entrypoint"
    # Before serving reservations had their own table they were stored as jobs of this kind;
    # such rows still load (and are moved to the serving table by migration 0003 or on import).
    SERVING = "serving"

    def __str__(self) -> str:
        return self.value


# typed field -> its key in the stored `info` JSON (the key it had before it was typed)
CONTROL_KEYS: dict[str, str] = {
    "generation": "gen", "admitted_at": "admitted_at", "borrowed": "borrowed", "preempted_for": "preempted_for",
    "preempt_reason": "preempt_reason", "workers": "workers", "dist_backend": "dist_backend",
    "progress": "progress", "reason_code": "reason_code", "lenders": "lenders",
    # deadlines (issue 18): absent in rows written before them, so older ledgers load unchanged
    "deadline": "deadline", "eta": "eta", "expected_runtime_s": "expected_runtime_s",
    "deadline_risk": "deadline_risk", "escalated": "escalated",
    # elastic gangs: absent in rows written before them
    "min_workers": "min_workers", "max_workers": "max_workers", "extra": "extra", "resize_to": "resize_to",
    "resize_deadline": "resize_deadline", "resize_reason": "resize_reason", "resize_for": "resize_for",
    "extra_lenders": "extra_lenders",
}
# Control fields a caller sees at the top level of `public()` (the rest stay inside `info`).
PUBLIC_CONTROL = frozenset({"reason_code", "deadline", "eta", "expected_runtime_s", "deadline_risk", "escalated"})
_CONTROL_STORED = frozenset(CONTROL_KEYS.values())


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    desk: str
    name: str
    kind: JobKind
    gpus: float
    priority: int
    comm: str
    state: JobState
    submitted_at: float
    max_retries: int = 0
    attempts: int = 0
    reason: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    placement: Placement = ()
    preempt_deadline: float | None = None
    payload: bytes | str | None = None
    result: bytes | None = None
    error: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    reason_code: ReasonCode = ReasonCode.QUEUED
    # The reservation's generation: Ray objects are named "<job_id>~<generation>" and each new
    # reservation takes the next one, so it never collides with an attempt Ray is still removing.
    # -1: never reserved.
    generation: int = -1
    admitted_at: float | None = None
    borrowed: float = 0.0            # GPUs of the current admission above the desk's nominal
    preempted_for: str | None = None  # the pending job a preemption frees GPUs for
    preempt_reason: str = ""         # the preemption decision's reason, while in its grace period
    workers: int = 1
    dist_backend: str | None = "auto"
    progress: float = 0.0
    # Deadlines (rayfin.controller.deadlines): epoch seconds on the controller's clock. `eta` is
    # the last estimate of the finish; `deadline_risk` whether that misses the deadline (its
    # transitions are audit events); `escalated` whether the slack ran out (scheduled as critical).
    deadline: float | None = None
    eta: float | None = None
    expected_runtime_s: float | None = None
    deadline_risk: bool = False
    escalated: bool = False
    # who lent `borrowed` (desk, GPUs) at the current admission (rayfin.policy.quota.attribute_lenders);
    # stored as [[desk, gpus], ...] under info["lenders"]; absent in ledgers written before it
    lenders: tuple[tuple[str, float], ...] = ()
    # Elastic gangs (rayfin.policy.elastic; 0: a fixed gang). `workers` is the size it is given
    # and `gpus` = workers x unit; its admission holds min_workers of them, `extra` is the part
    # of `placement` above that base (the snapshot's `<id>+x`). A resize restarts the gang from
    # its checkpoint: `resize_to` the size it restarts at, `resize_deadline` when the old runner's
    # grace to stop ends, `resize_reason` the decision's reason.
    min_workers: int = 0
    max_workers: int = 0
    extra: Placement = ()
    resize_to: int = 0
    resize_deadline: float | None = None
    resize_reason: str = ""
    resize_for: str | None = None    # a shrink's beneficiary (the pending job the GPUs go to)
    # the part of `borrowed` / `lenders` that is the extra workers' (given back with them)
    extra_lenders: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        # Records built from strings (stored rows, older callers) get their enums; control
        # state found in `info` under its stored key moves to its typed field.
        set_ = object.__setattr__
        # `copy` runs this on every state change: only strings need converting.
        if type(self.state) is not JobState:
            set_(self, "state", JobState(self.state))
        if type(self.kind) is not JobKind:
            set_(self, "kind", JobKind(self.kind))
        if self.info and not _CONTROL_STORED.isdisjoint(self.info):
            info = dict(self.info)
            for name, key in CONTROL_KEYS.items():
                if key in info:
                    value = info.pop(key)
                    if getattr(self, name) == _DEFAULTS[name]:
                        set_(self, name, value)
            set_(self, "info", info)
        if type(self.lenders) is not tuple:
            set_(self, "lenders", tuple((str(d), float(g)) for d, g in self.lenders))
        if type(self.extra_lenders) is not tuple:
            set_(self, "extra_lenders", tuple((str(d), float(g)) for d, g in self.extra_lenders))
        if type(self.extra) is not tuple or (self.extra and type(self.extra[0]) is not tuple):
            set_(self, "extra", tuple((str(i), float(g)) for i, g in self.extra))
        if type(self.reason_code) is not ReasonCode:
            set_(self, "reason_code", code_of(self.reason_code))

    def copy(self, **changes: Any) -> "JobRecord":
        return replace(self, **changes)

    @property
    def job_state(self) -> JobState:
        return self.state

    @property
    def key(self) -> str:
        """The backend's name for the job's current reservation."""
        return f"{self.job_id}~{max(0, self.generation)}"

    @property
    def unit(self) -> int:
        """GPUs per gang worker (a job without workers is one worker)."""
        return max(1, int(self.gpus) // max(1, int(self.workers)))

    @property
    def elastic(self) -> bool:
        return self.max_workers > self.min_workers > 0

    def without_extra_lenders(self) -> dict[str, Any]:
        """`borrowed` and `lenders` less what the extra workers borrowed (the base's own)."""
        if not self.extra_lenders:
            return {}
        less = dict(self.extra_lenders)
        lenders = tuple((d, round(g - less.get(d, 0.0), 6)) for d, g in self.lenders)
        return {"borrowed": max(0.0, round(self.borrowed - sum(less.values()), 6)),
                "lenders": tuple((d, g) for d, g in lenders if g > 1e-9), "extra_lenders": ()}

    @property
    def base_placement(self) -> Placement:
        """`placement` less `extra`: what the admission holds (all of it for a fixed gang)."""
        if not self.extra:
            return self.placement
        less = dict(self.extra)
        out = tuple((i, g - less.get(i, 0.0)) for i, g in self.placement)
        return tuple((i, g) for i, g in out if g > 1e-9)

    @property
    def deadline_status(self) -> str | None:
        """None (no deadline), "on_track" or "at_risk"."""
        if self.deadline is None:
            return None
        return "at_risk" if self.deadline_risk else "on_track"

    def stored_info(self) -> dict[str, Any]:
        """`info` as stored: the runner's report plus the control fields under their keys."""
        out = dict(self.info)
        for name, key in CONTROL_KEYS.items():
            value = getattr(self, name)
            if value != _DEFAULTS[name]:
                out[key] = value.value if isinstance(value, Enum) else value
        return out

    def public(self) -> dict[str, Any]:
        """What an SDK caller may see (no payload or result bytes), in the shape it always had:
        control state inside `info` under its historical keys."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_PUBLIC}
        d["state"] = self.state.value
        d["kind"] = self.kind.value
        d["reason_code"] = self.reason_code.value
        d["placement"] = [list(p) for p in self.placement]
        info = self.stored_info()
        for name in PUBLIC_CONTROL:
            info.pop(CONTROL_KEYS[name], None)
        d["deadline_status"] = self.deadline_status
        info.setdefault("workers", self.workers)
        info.setdefault("dist_backend", self.dist_backend)
        d["info"] = info
        return d


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(JobRecord) if f.name in CONTROL_KEYS}
_NOT_PUBLIC = {"payload", "result", "info"} | (set(CONTROL_KEYS) - PUBLIC_CONTROL)


@dataclass(frozen=True)
class Event:
    """One row of the audit trail."""

    seq: int
    ts: float
    job_id: str
    desk: str
    kind: str
    state: str
    reason: str
    data: dict[str, Any]
    reason_code: str = ""     # empty in rows written before codes existed

    def public(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ServingReservation:
    """A Serve deployment's GPUs, charged to its desk on one island: `replicas` x
    `gpus_per_replica`. Not a job: it is never queued, scheduled or preempted."""

    model: str
    desk: str
    replicas: int
    gpus_per_replica: float
    island: str
    reserved_at: float
    reason: str = ""
    reason_code: ReasonCode = ReasonCode.SERVING_RESERVED
    # who lent the GPUs above the desk's nominal when it was reserved (chargeback): written to
    # its `serving_reserved` audit event; the serving table keeps the reservation's shape
    lenders: tuple[tuple[str, float], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason_code", code_of(self.reason_code))
        if type(self.lenders) is not tuple:
            object.__setattr__(self, "lenders", tuple((str(d), float(g)) for d, g in self.lenders))

    @property
    def gpus(self) -> float:
        return self.replicas * self.gpus_per_replica

    @property
    def placement(self) -> Placement:
        return ((self.island, self.gpus),)


@dataclass(frozen=True)
class LogLine:
    rank: int
    ts: float
    text: str


@dataclass(frozen=True)
class LedgerSnapshot:
    """Every row of a ledger as of one instant (read in one transaction): what
    `rayfin ledger export` writes and `rayfin ledger import` restores (controller/ledger_io.py)."""

    schema_version: int
    jobs: tuple[JobRecord, ...]
    events: tuple[Event, ...]
    kv: tuple[tuple[str, bytes], ...]
    results: tuple[tuple[str, int, bytes | None], ...] = ()        # (job_id, rank, value)
    logs: tuple[tuple[int, str, int, float, str], ...] = ()          # (seq, job_id, rank, ts, text)
    serving: tuple[ServingReservation, ...] = ()


__all__ = ["JobKind", "JobRecord", "Event", "ServingReservation", "LogLine", "LedgerSnapshot", "CONTROL_KEYS",
           "Placement"]
