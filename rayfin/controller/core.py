"""`ControllerCore`: the controller apart from Ray, composed of one module per concern:

    state.py     what it knows between cycles, and the state transitions (each written to the
                 ledger before anyone is told)
    cycle.py     one cycle: observe, snapshot, decide (rayfin.policy.schedule), act, record
    auth.py      who is calling: a desk, the operator, or `rayfin up`'s deploy key
    serving.py   serving reservations charged to a desk
    recovery.py  a restarted controller rebuilds from the ledger and re-adopts by name
    views.py     the usage table, pools, demand per pool

This class is the controller's API: every call authenticates, then reads or changes state
under one lock. The Ray actor (`rayfin.controller.actor`) is a thin shell around it; unit tests
drive it with `FakeBackend` and an injected clock.
"""
from __future__ import annotations

import secrets
import time
from typing import Any, Callable, Iterable, Mapping

from placement.ranks import WorkerRuleError, check_unit_fits
from rayfin.config import RayfinConfig
from rayfin.controller import cycle as cycle_mod
from rayfin.autoscale import AutoscalingSettings
from rayfin.controller import deadlines, market_clock, recovery, serving, views
from rayfin.controller.auth import Auth, Principal
from rayfin.controller.backend import Backend
from rayfin.controller.chargeback import ledger_report
from rayfin.controller.cycle import CycleReport
from rayfin.controller.ledger import Ledger
from rayfin.controller.policing import RankGpus
from rayfin.controller.records import JobKind, JobRecord
from rayfin.controller.recorder import NullRecorder, Recorder
from rayfin.controller.state import PLACED, ControllerState, scheduler_config
from rayfin.errors import InvalidRequest, JobNotFound, QuotaExceeded
from rayfin.jobspec import JobSpec
from rayfin.market.chargeback import GroupBy
from rayfin.policy import ClusterSnapshot, Decision, JobState, Priority
from rayfin.policy.quota import why_never_fits
from rayfin.reasons import ReasonCode


def group_key(job: JobRecord) -> str:
    """The backend's name for a job's current reservation: job id and generation."""
    return job.key


class ControllerCore:
    def __init__(self, config: RayfinConfig, ledger: Ledger, backend: Backend, *,
                 clock: Callable[[], float] = time.time, new_id: Callable[[str], str] | None = None,
                 recorder: Recorder | None = None, deploy_key: str | None = None) -> None:
        self.state = ControllerState(config, ledger, backend, clock, recorder or NullRecorder())
        self.auth = Auth(config, deploy_key)
        self.new_id = new_id or (lambda desk: f"{desk}-{secrets.token_hex(4)}")
        s = self.state
        self.config, self.ledger, self.backend, self.clock, self.recorder = config, ledger, backend, clock, s.recorder
        self.topology, self.desks, self.policy, self.lock = s.topology, s.desks, s.policy, s.lock

    # The state's fields, as the actor, policing and tests read (and policing sets) them.
    @property
    def active(self) -> dict[str, JobRecord]:
        return self.state.active

    @property
    def unavailable(self) -> dict[str, float]:
        return self.state.unavailable

    @property
    def cordoned(self) -> dict[str, float]:
        return self.state.cordoned

    @property
    def draining(self) -> frozenset[str]:
        return self.state.draining

    @property
    def held_outside(self) -> dict[str, float]:
        return self.state.held_outside

    @held_outside.setter
    def held_outside(self, held: dict[str, float]) -> None:
        self.state.held_outside = held

    @property
    def last_decision(self) -> dict[str, Decision]:
        return self.state.last_decision

    @property
    def cordon_s(self) -> float:
        return self.state.cordon_s

    @property
    def admit_timeout_s(self) -> float:
        return self.state.admit_timeout_s

    # ---------------------------------------------------------------- auth
    def authenticate(self, token: str | None, desk: str | None, action: str) -> Principal:
        return self.auth.authenticate(token, desk, action)

    def require_operator(self, token: str | None, desk: str | None) -> Principal:
        return self.auth.require_operator(token, desk)

    _require_operator = require_operator

    def _visible(self, principal: Principal, job_id: str) -> JobRecord:
        job = self.state.active.get(job_id) or self.ledger.get_job(job_id)
        # Another desk's job is reported as absent, so ids of other desks' work do not leak.
        if job is None or job.kind is JobKind.SERVING or not principal.may_act_for(job.desk):
            raise JobNotFound(job_id=job_id)
        return job

    # ---------------------------------------------------------------- jobs
    def submit(self, token: str | None, desk: str, spec: JobSpec | Mapping[str, Any]) -> dict[str, Any]:
        principal = self.authenticate(token, desk, "submit")
        assert principal.may_act_for(desk)
        d = self.config.defaults
        clean = JobSpec.parse(spec).with_defaults(d.priority, d.max_retries)
        self._refuse_what_never_fits(desk, clean)
        with self.lock:
            proposed = clean.job_id
            if proposed is not None:
                if not proposed.startswith(desk + "-"):
                    raise InvalidRequest(field="job_id", value=proposed, allowed=f"an id starting with '{desk}-'")
                existing = self.state.active.get(proposed) or self.ledger.get_job(proposed)
                if existing is not None:  # a retried submission: idempotent
                    if existing.desk != desk:
                        raise InvalidRequest(field="job_id", value=proposed, allowed="an unused id")
                    view = deadlines.answer_view(existing)
                    return existing.public() if view is None else {**existing.public(), "answer": view}
            priority = clean.priority if clean.priority is not None else Priority.NORMAL
            job_id = proposed or self.new_id(desk)
            # A deadline: the answer (raises for a deadline no schedule meets), kept on the record.
            adm = deadlines.at_submit(self.state, desk, clean, priority, job_id)
            # An elastic gang asks for its base (min_workers); it grows into idle GPUs (controller/resize.py).
            lo, hi = (clean.min_workers, clean.workers) if clean.min_workers is not None else (0, 0)
            job = JobRecord(job_id=job_id, desk=desk, name=clean.name, kind=JobKind(clean.kind),
                            gpus=float(clean.base_gpus), priority=int(priority), comm=clean.comm.value,
                            state=JobState.PENDING, submitted_at=self.clock(), max_retries=clean.retries or 0,
                            payload=clean.payload, reason="queued", reason_code=ReasonCode.QUEUED,
                            info={"entrypoint": clean.payload} if clean.kind == "entrypoint" else {},
                            workers=clean.min_workers or clean.workers, dist_backend=clean.dist_backend, min_workers=lo, max_workers=hi,
                            **(adm.fields(clean.expected_runtime_s) if adm is not None
                               else {"expected_runtime_s": clean.expected_runtime_s}))
            self.ledger.put_job(job, ("submitted", f"{job.gpus:g} GPUs, priority {priority.label}"),
                                ts=job.submitted_at)
            self.state.active[job.job_id] = job
        self.recorder.submitted(job)
        if adm is not None:
            deadlines.submitted(self.state, job, adm)
            return {**job.public(), "answer": deadlines.answer_view(job, adm)}
        return job.public()

    def _refuse_what_never_fits(self, desk: str, spec: JobSpec) -> None:
        quota = self.desks[desk]
        capacity = self.topology.pool_capacity(quota.pools)
        never = why_never_fits(quota, spec.base_gpus, capacity)
        if never:
            code, why = never
            self.recorder.refused(desk, ReasonCode.NEVER_FITS.value)
            self.ledger.record(self.clock(), "", desk, "refused", "", why, {"gpus": spec.gpus}, code)
            raise QuotaExceeded(f"{why}; to fix: ask for fewer GPUs or raise the desk's quota", desk=desk,
                                requested=spec.base_gpus, available=min(quota.ever_gpus, capacity))
        try:   # a worker never spans islands: refuse what no placement could ever give
            check_unit_fits(self.topology, quota.pools, spec.base_gpus, spec.unit)
        except WorkerRuleError as exc:
            raise InvalidRequest(field=exc.field, value=exc.value, allowed=exc.allowed) from None

    def status(self, token: str | None, job_id: str) -> dict[str, Any]:
        principal = self.authenticate(token, None, "read")
        with self.lock:
            return self._visible(principal, job_id).public()

    def _ended(self, token: str | None, job_id: str) -> JobRecord:
        principal = self.authenticate(token, None, "read")
        job = self.ledger.get_job(job_id)
        if job is None or job.kind is JobKind.SERVING or not principal.may_act_for(job.desk):
            raise JobNotFound(job_id=job_id)
        return job

    def result(self, token: str | None, job_id: str) -> dict[str, Any]:
        job = self._ended(token, job_id)
        return {"state": job.state.value, "reason": job.reason, "error": job.error, "result": job.result}

    def results(self, token: str | None, job_id: str) -> dict[str, Any]:
        """Every rank's value in rank order (rank 0's alone for a one-worker job)."""
        job = self._ended(token, job_id)
        blobs = self.ledger.results(job_id) if job.state is JobState.SUCCEEDED else []
        if not blobs and job.result is not None:
            blobs = [job.result]
        return {"state": job.state.value, "reason": job.reason, "error": job.error, "results": blobs}

    def logs(self, token: str | None, job_id: str, rank: int | None = None, tail: int | None = None) -> dict[str, Any]:
        """The job's output, every rank's or one rank's, the last `tail` lines (all kept when None)."""
        principal = self.authenticate(token, None, "read logs")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            raise InvalidRequest(field="rank", value=rank, allowed="a rank >= 0, or None for every rank")
        if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or tail < 0):
            raise InvalidRequest(field="tail", value=tail, allowed="a number of lines >= 0, or None for all")
        with self.lock:
            job = self._visible(principal, job_id)
        lines = self.ledger.logs(job_id, rank, tail)
        return {"job_id": job_id, "state": job.state.value, "workers": job.workers,
                "lines": [{"rank": ln.rank, "ts": ln.ts, "text": ln.text} for ln in lines]}

    def cancel(self, token: str | None, job_id: str) -> dict[str, Any]:
        principal = self.authenticate(token, None, "cancel")
        with self.lock:
            job = self._visible(principal, job_id)
            if job.state.terminal:
                return job.public()
            if job.state is not JobState.PENDING:
                self.state.release(job)
            who = "admin" if principal.admin else job.desk
            job = self.state.finish(job, JobState.CANCELLED, "cancelled by " + who, ReasonCode.CANCELLED)
        return job.public()

    def jobs(self, token: str | None, desk: str | None = None, states: Iterable[str] | None = None,
             limit: int = 1000) -> list[dict[str, Any]]:
        principal = self.authenticate(token, desk, "list")
        scope = desk if desk is not None else (None if principal.admin else principal.desk)
        rows = self.ledger.jobs(desk=scope, states=states, limit=None, blobs=False)
        with self.lock:
            rows = [self.state.active.get(r.job_id, r) for r in rows if r.kind is not JobKind.SERVING]
        return [r.public() for r in rows[-limit:]]

    def police_job(self, job_id: str, reason: str) -> bool:
        """Fail a job whose code took GPUs outside rayfin: its runner is killed, and with it, by
        Ray, what the runner started. Returns whether a live job was stopped."""
        with self.lock:
            job = self.state.active.get(job_id)
            if job is None or job.state not in PLACED:
                return False
            self.state.release(job)
            self.state.finish(job, JobState.FAILED, reason, ReasonCode.POLICING)
            return True

    def gpu_assignments(self) -> dict[tuple[str, int], RankGpus]:
        """(Ray node id, pid) -> a running job's rank: its job, desk and the GPU indices Ray gave
        it, as its runner reported them at start (CUDA_VISIBLE_DEVICES). Policing checks that a
        rank's processes stay on them, and names the job of a rank that does not."""
        out: dict[tuple[str, int], RankGpus] = {}
        with self.lock:
            for job in self.state.active.values():
                if job.state not in PLACED:
                    continue
                ranks: list[tuple[str, int, frozenset[int]]] = []
                for r in job.info.get("ranks") or []:
                    try:
                        gpus = frozenset(int(g) for g in str(r.get("cuda_visible_devices") or "").split(",") if g)
                        if r.get("node_id") and r.get("pid") and gpus:
                            ranks.append((str(r["node_id"]), int(r["pid"]), gpus))
                    except (TypeError, ValueError):
                        continue
                # A rank may touch its siblings' GPUs on its node (nccl peers, a shared
                # CUDA_VISIBLE_DEVICES): the job's GPUs there are its own.
                per_node: dict[str, frozenset[int]] = {}
                for node, _, gpus in ranks:
                    per_node[node] = per_node.get(node, frozenset()) | gpus
                for node, pid, _ in ranks:
                    out[(node, pid)] = RankGpus(job.job_id, job.desk, per_node[node])
        return out

    # ---------------------------------------------------------------- views
    def usage(self, token: str | None, desk: str | None = None) -> dict[str, dict[str, Any]]:
        principal = self.authenticate(token, desk, "read usage")
        with self.lock:
            table = self.usage_table()
        if principal.admin:
            return table if desk is None else {desk: table[desk]}
        assert principal.desk is not None
        return {principal.desk: table[principal.desk]}

    def explain(self, token: str | None, job_id: str) -> dict[str, Any]:
        principal = self.authenticate(token, None, "explain")
        with self.lock:
            job = self._visible(principal, job_id)
            last = self.state.last_decision.get(job_id)
        events = self.ledger.events(job_id=job_id, limit=200)
        return {"job": job.public(),
                "decision": None if last is None else {"verdict": last.verdict.value, "reasons": list(last.reasons),
                                                       "code": last.code.value, "victims": list(last.victims)},
                "events": [{"ts": e.ts, "kind": e.kind, "state": e.state, "reason": e.reason,
                            "reason_code": e.reason_code} for e in events]}

    def pools(self, token: str | None) -> dict[str, dict[str, float]]:
        """Capacity per node pool: configured, lost (nodes down), held outside rayfin, in use,
        free. A pool that lost nodes shows it here, and the scheduler plans on what is left."""
        self.authenticate(token, None, "read pools")
        with self.lock:
            return views.pools(self.state)

    def audit(self, token: str | None, desk: str | None = None, since: float | None = None,
              until: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        principal = self.authenticate(token, desk, "read audit log")
        scope = desk if (desk is not None or principal.admin) else principal.desk
        return [e.public() for e in self.ledger.events(desk=scope, since=since, until=until, limit=limit)]

    def chargeback(self, token: str | None, since: float, until: float | None = None, by: str = "desk",
                   desk: str | None = None) -> dict[str, Any]:
        """GPU-hours, lent/borrowed (to and from whom), preempted and cost over [since, until)
        from the ledger (rayfin.controller.chargeback). A desk sees its own view; the operator
        every desk's, or one desk's with `desk`."""
        principal = self.authenticate(token, desk, "read chargeback")
        scope = desk if (desk is not None or principal.admin) else principal.desk
        try:
            group = GroupBy(by)
        except ValueError:
            raise InvalidRequest(field="by", value=by, allowed=" | ".join(g.value for g in GroupBy)) from None
        end = self.clock() if until is None else until
        return ledger_report(self.ledger, self.config, since, end, group, desk=scope).view()

    def market(self, token: str | None) -> dict[str, Any] | None:
        """The quota window in force and the next switch (rayfin.controller.market_clock.view)."""
        self.authenticate(token, None, "read the quota window")
        with self.lock:
            return market_clock.view(self.state)

    def prewarm_floor(self, settings: AutoscalingSettings) -> dict[str, float]:
        """GPUs per autoscaled pool to hold ready for the serving reservations of the window in
        force, or of the next one from the pool's lead time before its switch."""
        pools = {d.name: d.pools[0] for d in self.config.desks if d.pools}
        return market_clock.prewarm_floor(self.state.in_force, settings, pools, market_clock.utc(self.clock()))

    def usage_table(self) -> dict[str, dict[str, Any]]:
        return views.usage_table(self.state)

    def pool_demand(self) -> dict[str, float]:
        return views.pool_demand(self.state)

    # ---------------------------------------------------------------- serving
    def reserve_serving(self, token: str | None, model: str, desk: str, replicas: int,
                        gpus_per_replica: float) -> dict[str, Any]:
        """Charge a Serve deployment's GPUs to its desk and pick the island its replicas use.
        A platform action: needs the deploy key of `rayfin up` or the admin credential."""
        self.require_operator(token, desk)
        return serving.reserve(self.state, model, desk, replicas, gpus_per_replica)

    def release_serving(self, token: str | None, model: str) -> dict[str, Any]:
        """Give a serving deployment's GPUs back to its desk (undeploy, or a failed deploy)."""
        self.require_operator(token, None)
        return serving.release(self.state, model)

    # ---------------------------------------------------------------- the cycle
    def cycle(self) -> CycleReport:
        return cycle_mod.run_cycle(self.state, self.usage_table)

    def snapshot(self) -> ClusterSnapshot:
        return cycle_mod.snapshot(self.state)

    def not_placeable(self) -> dict[str, float]:
        return self.state.not_placeable()

    def set_draining(self, islands: Iterable[str]) -> frozenset[str]:
        """The islands to drain from now on (replaces the previous set; unknown ids are an error)."""
        ids = frozenset(islands)
        known = {i.id for i in self.topology.islands}
        unknown = sorted(ids - known)
        if unknown:
            raise InvalidRequest(field="draining", value=unknown, allowed=f"island ids {sorted(known)}")
        with self.lock:
            self.state.draining = ids
        return ids

    def recover(self) -> dict[str, Any]:
        """Rebuild state from the ledger and re-adopt what the backend still has, by name."""
        return recovery.recover(self.state)


__all__ = ["ControllerCore", "Principal", "CycleReport", "group_key", "scheduler_config"]
