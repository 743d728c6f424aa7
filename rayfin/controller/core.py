"""The controller's state machine, apart from Ray.

`ControllerCore` owns the desk queues and the ledger and runs one cycle in named steps:

    observe   what the backend saw since last cycle (groups reserved, runners done or lost, nodes down)
    snapshot  a frozen ClusterSnapshot of desks, running work and the queue
    decide    rayfin.policy.schedule(snapshot) -> CycleDecision (pure)
    act       reserve groups, start runners, preempt, refuse (through the backend)
    record    ledger events, metrics, step timings

Every state change is written to the ledger before anyone is told. The Ray actor
(`rayfin.controller.actor`) is a thin shell around this class; unit tests drive it with
`FakeBackend` and an injected clock.
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from placement.ranks import WorkerRuleError, check_unit_fits
from placement.topology import Topology, island_resource
from rayfin.config import RayfinConfig, token_matches
from rayfin.controller.backend import Backend, LaunchSpec, Observation
from rayfin.controller.ledger import JobRecord, Ledger
from rayfin.controller.recorder import NullRecorder, Recorder
from rayfin.controller.validate import validate_spec
from rayfin.errors import Forbidden, InvalidRequest, JobNotFound, QuotaExceeded, Unauthorized, UnknownDesk
from rayfin.policy.duration import DurationPredictor, DurationState, JobKey
from rayfin.policy.hints import JobHint
from rayfin.policy.settings import Policy
from rayfin.policy import (ClusterSnapshot, CommProfile, Decision, DeskQuota, JobState, PendingJob, Priority,
                           RunningJob, SchedulerConfig, check_quota, never_fits, schedule)

log = logging.getLogger("rayfin.controller")
ACTIVE = (JobState.PENDING.value, JobState.ADMITTED.value, JobState.RUNNING.value)


@dataclass(frozen=True)
class Principal:
    desk: str | None       # None for admin
    admin: bool = False

    def may_act_for(self, desk: str) -> bool:
        return self.admin or self.desk == desk


@dataclass
class CycleReport:
    timings_ms: dict[str, float] = field(default_factory=dict)
    admitted: int = 0
    preempted: int = 0
    finished: int = 0


def group_key(job: JobRecord) -> str:
    """The backend's name for a job's current reservation: job id and generation."""
    return f"{job.job_id}~{int(job.info.get('gen', 0))}"


def _unit(job: JobRecord) -> int:
    """GPUs per gang worker of a job (a job without the field is one worker)."""
    return max(1, int(job.gpus) // max(1, int(job.info.get("workers", 1))))


def _ran_on(info: dict[str, Any]) -> dict[str, Any]:
    """What the job record keeps of a runner's start reply: rank 0's devices and the rank layout."""
    out = {k: info[k] for k in ("node_id", "island", "gpu_ids", "cuda_visible_devices", "pid") if k in info}
    workers = info.get("workers") or []
    if workers:
        out["ranks"] = [{k: w.get(k) for k in ("rank", "island", "node_id", "cuda_visible_devices", "pid")}
                        for w in workers]
    return out


def scheduler_config(config: RayfinConfig) -> SchedulerConfig:
    """The live controller runs the `rayfin` preset of the policy with the configured grace."""
    return SchedulerConfig.preset(Policy.RAYFIN, preemption_grace_s=config.defaults.preemption_grace_s)


class ControllerCore:
    def __init__(self, config: RayfinConfig, ledger: Ledger, backend: Backend, *,
                 clock: Callable[[], float] = time.time, new_id: Callable[[str], str] | None = None,
                 recorder: Recorder | None = None, deploy_key: str | None = None) -> None:
        self.config = config
        # Held by the process that started the controller (`rayfin up`): it may deploy and
        # release serving capacity, nothing else.
        self.deploy_key = deploy_key
        self.ledger = ledger
        self.backend = backend
        self.clock = clock
        self.new_id = new_id or (lambda desk: f"{desk}-{secrets.token_hex(4)}")
        self.recorder = recorder or NullRecorder()
        self.topology = Topology.from_config(config.cluster)
        self.desks = {d.name: DeskQuota.from_config(d) for d in config.desks}
        self.policy = scheduler_config(config)
        self.active: dict[str, JobRecord] = {}
        self.unavailable: dict[str, float] = {}
        # Island -> GPUs held by work rayfin did not start (found by policing): taken, not lost,
        # so they shrink what the scheduler may place without marking rayfin's own jobs there lost.
        self.held_outside: dict[str, float] = {}
        # Islands where a runner was just lost: cordoned until Ray's failure detector has had
        # time to declare the node dead, so a requeued job is not placed straight back there.
        self.cordoned: dict[str, float] = {}
        self.cordon_s = 20.0
        # Islands the capacity planner is draining (rayfin.autoscale.drain): no new work is placed
        # there, work already there runs on (unlike `unavailable`, which fails it).
        self.draining: frozenset[str] = frozenset()
        # An admitted job whose group or runner never comes up (e.g. its node vanished mid-way)
        # goes back to the queue after this long; nothing ran, so no retry is spent.
        self.admit_timeout_s = 180.0
        self.last_decision: dict[str, Decision] = {}
        # desk -> state -> ended batch jobs: counted in SQLite once here, then kept up to date
        # by `_finish`, so the per-cycle usage table never rescans the ledger.
        terminal = [s.value for s in JobState if s.terminal]
        self._finished: defaultdict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(terminal, 0))
        for desk, counts in ledger.counts(terminal, exclude_kind="serving").items():
            self._finished[desk].update(counts)
        # Duration-aware order (issue 17): runtimes of finished jobs, learnt online; see `_hints`.
        self.durations = DurationPredictor()
        self.duration_state = DurationState()
        self.lock = threading.RLock()

    # ---------------------------------------------------------------- auth
    def authenticate(self, token: str | None, desk: str | None, action: str) -> Principal:
        if (action == "deploy" and self.deploy_key and token
                and hmac.compare_digest(token.encode(), self.deploy_key.encode())):
            return Principal(desk, admin=True)
        admin = self.config.admin
        if admin is not None and token_matches(token, admin.credential_sha256):
            if desk is not None and desk not in self.desks:
                raise UnknownDesk(desk=desk, known=list(self.desks))
            return Principal(desk, admin=True)
        if desk is not None and desk not in self.desks:
            raise UnknownDesk(desk=desk, known=list(self.desks))
        # Compare against every desk so the time taken does not reveal which desk matched.
        matched = [d.name for d in self.config.desks if token_matches(token, d.credential_sha256)]
        if not matched:
            raise Unauthorized(f"credential not valid (action: {action}); pass the desk's token", desk=desk,
                               action=action)
        who = matched[0]
        if desk is not None and desk != who:
            raise Forbidden(f"credential of desk {who!r} may not {action} for desk {desk!r}", desk=desk,
                            action=action)
        return Principal(who)

    def _require_operator(self, token: str | None, desk: str | None) -> Principal:
        principal = self.authenticate(token, desk, "deploy")
        if not principal.admin:
            raise Unauthorized("deploying serving capacity needs the admin credential or the deploy key of "
                               "`rayfin up`; desks call models over HTTP", desk=desk, action="deploy")
        return principal

    def _visible(self, principal: Principal, job_id: str) -> JobRecord:
        job = self.active.get(job_id) or self.ledger.get_job(job_id)
        # Another desk's job is reported as absent, so ids of other desks' work do not leak.
        if job is None or not principal.may_act_for(job.desk):
            raise JobNotFound(job_id=job_id)
        return job

    # ---------------------------------------------------------------- API
    def submit(self, token: str | None, desk: str, spec: dict[str, Any]) -> dict[str, Any]:
        principal = self.authenticate(token, desk, "submit")
        assert principal.may_act_for(desk)
        clean = validate_spec(spec, default_priority=self.config.defaults.priority,
                              default_retries=self.config.defaults.max_retries)
        quota = self.desks[desk]
        why = never_fits(quota, clean["gpus"], self.topology.pool_capacity(quota.pools))
        if why:
            self.recorder.refused(desk, "never_fits")
            self.ledger.record(self.clock(), "", desk, "refused", "", why, {"gpus": clean["gpus"]})
            raise QuotaExceeded(f"{why}; to fix: ask for fewer GPUs or raise the desk's quota", desk=desk,
                                requested=clean["gpus"],
                                available=min(quota.max_gpus, self.topology.pool_capacity(quota.pools)))
        try:   # a worker never spans islands: refuse what no placement could ever give
            check_unit_fits(self.topology, quota.pools, clean["gpus"], clean["gpus"] // clean["workers"])
        except WorkerRuleError as exc:
            raise InvalidRequest(field=exc.field, value=exc.value, allowed=exc.allowed) from None
        with self.lock:
            proposed = clean["job_id"]
            if proposed is not None:
                if not proposed.startswith(desk + "-"):
                    raise InvalidRequest(field="job_id", value=proposed, allowed=f"an id starting with '{desk}-'")
                existing = self.active.get(proposed) or self.ledger.get_job(proposed)
                if existing is not None:  # a retried submission: idempotent
                    if existing.desk != desk:
                        raise InvalidRequest(field="job_id", value=proposed, allowed="an unused id")
                    return existing.public()
            job = JobRecord(job_id=proposed or self.new_id(desk), desk=desk, name=clean["name"], kind=clean["kind"],
                            gpus=float(clean["gpus"]), priority=int(clean["priority"]), comm=clean["comm"],
                            state=JobState.PENDING.value, submitted_at=self.clock(),
                            max_retries=clean["retries"], payload=clean["payload"], reason="queued",
                            info={**({"entrypoint": clean["payload"]} if clean["kind"] == "entrypoint" else {}),
                                  "workers": clean["workers"], "dist_backend": clean["dist_backend"]})
            self.ledger.put_job(job, ("submitted", f"{job.gpus:g} GPUs, priority "
                                                   f"{Priority(job.priority).label}"), ts=job.submitted_at)
            self.active[job.job_id] = job
        self.recorder.submitted(job)
        return job.public()

    def status(self, token: str | None, job_id: str) -> dict[str, Any]:
        principal = self.authenticate(token, None, "read")
        with self.lock:
            return self._visible(principal, job_id).public()

    def result(self, token: str | None, job_id: str) -> dict[str, Any]:
        principal = self.authenticate(token, None, "read")
        job = self.ledger.get_job(job_id)
        if job is None or not principal.may_act_for(job.desk):
            raise JobNotFound(job_id=job_id)
        return {"state": job.state, "reason": job.reason, "error": job.error, "result": job.result}

    def results(self, token: str | None, job_id: str) -> dict[str, Any]:
        """Every rank's value in rank order (rank 0's alone for a one-worker job)."""
        principal = self.authenticate(token, None, "read")
        job = self.ledger.get_job(job_id)
        if job is None or not principal.may_act_for(job.desk):
            raise JobNotFound(job_id=job_id)
        blobs = self.ledger.results(job_id) if job.state == JobState.SUCCEEDED.value else []
        if not blobs and job.result is not None:
            blobs = [job.result]
        return {"state": job.state, "reason": job.reason, "error": job.error, "results": blobs}

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
        return {"job_id": job_id, "state": job.state, "workers": int(job.info.get("workers", 1)),
                "lines": [{"rank": ln.rank, "ts": ln.ts, "text": ln.text} for ln in lines]}

    def cancel(self, token: str | None, job_id: str) -> dict[str, Any]:
        principal = self.authenticate(token, None, "cancel")
        with self.lock:
            job = self._visible(principal, job_id)
            if JobState(job.state).terminal:
                return job.public()
            if job.state != JobState.PENDING.value:
                self._release(job)
            job = self._finish(job, JobState.CANCELLED, "cancelled by " + ("admin" if principal.admin else job.desk))
        return job.public()

    def jobs(self, token: str | None, desk: str | None = None, states: list[str] | None = None,
             limit: int = 1000) -> list[dict[str, Any]]:
        principal = self.authenticate(token, desk, "list")
        scope = desk if desk is not None else (None if principal.admin else principal.desk)
        rows = self.ledger.jobs(desk=scope, states=states, limit=None, blobs=False)
        with self.lock:
            rows = [self.active.get(r.job_id, r) for r in rows]
        return [r.public() for r in rows[-limit:]]

    def usage(self, token: str | None, desk: str | None = None) -> dict[str, dict[str, Any]]:
        principal = self.authenticate(token, desk, "read usage")
        with self.lock:
            table = self.usage_table()
        if principal.admin:
            return table if desk is None else {desk: table[desk]}
        return {principal.desk: table[principal.desk]}

    def explain(self, token: str | None, job_id: str) -> dict[str, Any]:
        principal = self.authenticate(token, None, "explain")
        with self.lock:
            job = self._visible(principal, job_id)
            last = self.last_decision.get(job_id)
        events = self.ledger.events(job_id=job_id, limit=200)
        return {"job": job.public(),
                "decision": None if last is None else {"verdict": last.verdict.value, "reasons": list(last.reasons),
                                                       "victims": list(last.victims)},
                "events": [{"ts": e.ts, "kind": e.kind, "state": e.state, "reason": e.reason} for e in events]}

    def pools(self, token: str | None) -> dict[str, dict[str, float]]:
        """Capacity per node pool: configured, lost (nodes down), in use, free. A pool that lost
        nodes shows it here, and the scheduler plans on what is left."""
        self.authenticate(token, None, "read pools")
        with self.lock:
            free = self.snapshot().free()
            out: dict[str, dict[str, float]] = {}
            for isl in self.topology.islands:
                row = out.setdefault(isl.pool, {"capacity": 0.0, "lost": 0.0, "outside": 0.0, "free": 0.0,
                                                "in_use": 0.0})
                lost = min(float(isl.gpus), self.unavailable.get(isl.id, 0.0))
                outside = min(float(isl.gpus) - lost, self.held_outside.get(isl.id, 0.0))
                row["capacity"] += isl.gpus
                row["lost"] += lost
                row["outside"] += outside
                row["free"] += max(0.0, free[isl.id])
                row["in_use"] += isl.gpus - lost - outside - max(0.0, free[isl.id])
            return out

    def audit(self, token: str | None, desk: str | None = None, since: float | None = None,
              until: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        principal = self.authenticate(token, desk, "read audit log")
        scope = desk if (desk is not None or principal.admin) else principal.desk
        return [e.__dict__ for e in self.ledger.events(desk=scope, since=since, until=until, limit=limit)]

    def reserve_serving(self, token: str | None, model: str, desk: str, replicas: int,
                        gpus_per_replica: float) -> dict[str, Any]:
        """Charge a Serve deployment's GPUs to its desk and pick the island its replicas use.
        A platform action: needs the deploy key of `rayfin up` or the admin credential."""
        self._require_operator(token, desk)
        if replicas < 1 or gpus_per_replica < 0:
            raise InvalidRequest(field="replicas/gpus_per_replica", value=(replicas, gpus_per_replica),
                                 allowed="replicas >= 1, gpus_per_replica >= 0")
        total = replicas * gpus_per_replica
        job_id = f"serve-{model}"
        with self.lock:
            old = self.active.get(job_id)
            if old is not None:
                if abs(old.gpus - total) < 1e-9:
                    return self._serving_resources(old, gpus_per_replica)
                self._finish(old, JobState.CANCELLED, "serving deployment replaced")
            if total == 0:
                return {"resources": {}, "num_gpus": 0.0, "island": None}
            quota = self.desks[desk]
            snap = self.snapshot()
            q = check_quota(quota, total, self.desks, snap.usage(), float(self.topology.total_gpus))
            free = snap.free()
            options = sorted((free[i.id], i.id) for i in self.topology.in_pools(quota.pools) if free[i.id] >= total)
            if not q.fits or not options:
                why = q.reason if not q.fits else f"no island in pools {sorted(quota.pools)} has {total:g} free GPUs"
                self.ledger.record(self.clock(), job_id, desk, "refused", "", why, {"gpus": total})
                raise QuotaExceeded(f"serving deployment {model!r} ({replicas} x {gpus_per_replica:g} GPU) refused: "
                                    f"{why}", desk=desk, requested=total, available=0.0)
            island = options[0][1]  # best fit: the fullest island that still holds it
            now = self.clock()
            job = JobRecord(job_id=job_id, desk=desk, name=model, kind="serving", gpus=total,
                            priority=int(Priority.CRITICAL), comm=CommProfile.NONE.value,
                            state=JobState.RUNNING.value, submitted_at=now, started_at=now,
                            placement=((island, total),), reason=q.reason,
                            info={"replicas": replicas, "gpus_per_replica": gpus_per_replica})
            self.ledger.put_job(job, ("serving_reserved", q.reason), ts=now)
            self.active[job_id] = job
        return self._serving_resources(job, gpus_per_replica)

    def release_serving(self, token: str | None, model: str) -> dict[str, Any]:
        """Give a serving deployment's GPUs back to its desk (undeploy, or a failed deploy)."""
        self._require_operator(token, None)
        with self.lock:
            job = self.active.get(f"serve-{model}")
            if job is None:
                return {"released": False}
            self._finish(job, JobState.CANCELLED, "serving deployment released")
        return {"released": True, "gpus": job.gpus, "desk": job.desk}

    @staticmethod
    def _serving_resources(job: JobRecord, per_replica: float) -> dict[str, Any]:
        island = job.placement[0][0]
        return {"resources": {island_resource(island): per_replica}, "num_gpus": per_replica, "island": island}

    # ---------------------------------------------------------------- the cycle
    def cycle(self) -> CycleReport:
        report = CycleReport()
        with self.lock:
            t0 = time.perf_counter()
            live = {group_key(r): r.job_id for r in self.active.values()
                    if r.state != JobState.PENDING.value and r.kind != "serving"}
            obs = self.backend.observe(list(live))
            report.finished = self._apply(obs, live)
            t1 = time.perf_counter()
            snap = self.snapshot()
            t2 = time.perf_counter()
            decision = schedule(snap, self.policy)
            t3 = time.perf_counter()
            report.admitted, report.preempted = self._act(decision)
            t4 = time.perf_counter()
            report.timings_ms = {"observe": (t1 - t0) * 1e3, "snapshot": (t2 - t1) * 1e3,
                                 "decide": (t3 - t2) * 1e3, "act": (t4 - t3) * 1e3}
            self.recorder.cycle(report, self.usage_table(), snap)
        return report

    def _apply(self, obs: Observation, live: dict[str, str]) -> int:
        """observe: fold what the backend saw into job states."""
        now = self.clock()
        finished = 0
        self.cordoned = {i: until for i, until in self.cordoned.items() if until > now}
        self.unavailable = dict(obs.unavailable)
        for island in self.cordoned:
            self.unavailable.setdefault(island, float(self.topology.island(island).gpus))
        for key in obs.ready:
            job = self.active.get(live.get(key, ""))
            if job is not None and job.state == JobState.ADMITTED.value:
                try:
                    self.backend.start(self._launch_spec(job, key))
                except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the cycle
                    log.warning("start %s failed: %s", key, exc)
                    self._lost(job, f"runner could not be started: {type(exc).__name__}: {str(exc)[:200]}")
        for key, st in obs.statuses.items():
            job = self.active.get(live.get(key, ""))
            if job is None or group_key(job) != key:
                continue
            job_id = job.job_id
            if st.logs:
                self.ledger.append_logs(job_id, st.logs, now, self.config.controller.max_log_bytes)
            if st.state == "SUCCEEDED" and len(st.results) > 1:
                self.ledger.put_results(job_id, st.results)
            if st.state == "RUNNING" and job.state == JobState.ADMITTED.value:
                job = job.copy(state=JobState.RUNNING.value, started_at=now, reason="running",
                               info={**job.info, **_ran_on(st.info)})
                self._save(job, "started", f"running on {self._where(job)}")
                self.recorder.state_changed(job, JobState.ADMITTED.value)
            elif st.state == "RUNNING" and abs(job.info.get("progress", 0.0) - st.progress) > 1e-6:
                self.active[job_id] = job.copy(info={**job.info, "progress": st.progress})
            elif st.state in ("SUCCEEDED", "FAILED") and job.preempt_deadline is not None:
                # It stopped because it was asked to (grace period): it was preempted, and what it
                # returned (e.g. a checkpoint path) is kept.
                self._preempt_now(job.copy(result=st.result, error=st.error))
                finished += 1
            elif st.state in ("SUCCEEDED", "FAILED"):
                self._release(job)
                job = job.copy(result=st.result, error=st.error, info={**job.info, "progress": st.progress})
                ok = st.state == "SUCCEEDED"
                self._finish(job, JobState.SUCCEEDED if ok else JobState.FAILED,
                             "finished" if ok else "job raised: " + st.error.splitlines()[0][:300] if st.error else "failed")
                finished += 1
            elif st.state == "LOST":
                for island, _ in job.placement:
                    self.cordoned[island] = now + self.cordon_s
                self._lost(job, st.error or "runner lost")
                finished += 1
        for job in list(self.active.values()):
            if job.state in (JobState.ADMITTED.value, JobState.RUNNING.value) and job.kind != "serving":
                lost = [i for i, _ in job.placement if i in self.unavailable]
                if lost:
                    self._lost(job, f"node of island(s) {', '.join(lost)} lost")
                    finished += 1
                elif (job.state == JobState.ADMITTED.value
                      and now - job.info.get("admitted_at", now) > self.admit_timeout_s):
                    self._lost(job, f"not started within {self.admit_timeout_s:g}s of admission")
                    finished += 1
                elif job.preempt_deadline is not None and now >= job.preempt_deadline:
                    self._preempt_now(job)
                    finished += 1
        return finished

    def snapshot(self) -> ClusterSnapshot:
        running, pending = [], []
        for job in self.active.values():
            if job.state == JobState.PENDING.value:
                pending.append(PendingJob(job.job_id, job.desk, int(job.gpus), Priority(job.priority),
                                          job.submitted_at, CommProfile(job.comm), _unit(job)))
            else:
                running.append(RunningJob(job.job_id, job.desk, job.gpus, job.placement, Priority(job.priority),
                                          job.started_at or job.submitted_at, preemptible=job.kind != "serving",
                                          preempt_deadline=job.preempt_deadline,
                                          preempted_for=job.info.get("preempted_for")))
        pending.sort(key=lambda p: (p.submitted_at, p.job_id))
        unavailable = self.not_placeable()
        for island in self.draining:
            # The whole island counts as unavailable to the policy, so neither placement nor a
            # preemption plan frees room there; the jobs on it stay in `running`.
            unavailable[island] = float(self.topology.island(island).gpus)
        now = self.clock()
        return ClusterSnapshot(now=now, topology=self.topology, desks=self.desks, running=tuple(running),
                               pending=tuple(pending), unavailable=unavailable, hints=self._hints(now))

    def set_draining(self, islands: Any) -> frozenset[str]:
        """The islands to drain from now on (replaces the previous set; unknown ids are an error)."""
        ids = frozenset(islands)
        known = {i.id for i in self.topology.islands}
        unknown = sorted(ids - known)
        if unknown:
            raise InvalidRequest(field="draining", value=unknown, allowed=f"island ids {sorted(known)}")
        with self.lock:
            self.draining = ids
        return ids

    # ---- hints for the policy (issue 17): predicted runtimes, attained service, checkpoint age ----
    def _duration_key(self, job: JobRecord) -> JobKey:
        return JobKey(job.desk, job.desk, job.name, int(job.gpus))

    def _hints(self, now: float) -> dict[str, JobHint]:
        out = {}
        for job in self.active.values():
            if job.kind == "serving":
                continue
            p = self.durations.predict(self.duration_state, self._duration_key(job))
            ran = float(job.info.get("attained_s", 0.0)) + (now - job.started_at if job.started_at else 0.0)
            ckpt = job.info.get("checkpoint_at")
            age = now - float(ckpt) if ckpt is not None and job.started_at else None
            out[job.job_id] = JobHint(p.seconds if p else None, ran, age)
        return out

    def _learn_duration(self, job: JobRecord) -> None:
        if job.kind != "serving" and job.state == JobState.SUCCEEDED.value and job.started_at and job.finished_at:
            self.duration_state = self.durations.observe(self.duration_state, self._duration_key(job),
                                                         max(0.0, job.finished_at - job.started_at))

    def police_job(self, job_id: str, reason: str) -> bool:
        """Fail a job whose code took GPUs outside rayfin: its runner is killed, and with it, by
        Ray, what the runner started. Returns whether a live job was stopped."""
        with self.lock:
            job = self.active.get(job_id)
            if job is None or job.kind == "serving" or job.state not in (JobState.ADMITTED.value,
                                                                          JobState.RUNNING.value):
                return False
            self._release(job)
            self._finish(job, JobState.FAILED, reason)
            return True

    def not_placeable(self) -> dict[str, float]:
        """GPUs per island the scheduler may not place on: lost with their node, or held by work
        rayfin did not start (until policing sees them freed)."""
        out = dict(self.unavailable)
        caps = {i.id: float(i.gpus) for i in self.topology.islands}
        for island, gpus in self.held_outside.items():
            if island in caps:
                out[island] = min(caps[island], out.get(island, 0.0) + gpus)
        return out

    def _act(self, decision) -> tuple[int, int]:
        now = self.clock()
        for d in decision.admits:
            job = self.active.get(d.job_id)
            if job is None or job.state != JobState.PENDING.value:
                continue
            # Each reservation gets a new generation, so its group and runner names never collide
            # with those of an earlier attempt that Ray is still tearing down.
            job = job.copy(info={**job.info, "gen": int(job.info.get("gen", -1)) + 1})
            try:
                self.backend.reserve(group_key(job), job.desk, d.placement, unit=_unit(job))
            except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the cycle
                log.warning("reserve %s failed: %s", job.job_id, exc)
                self._save(job.copy(reason=f"placement group not created: {type(exc).__name__}: {str(exc)[:200]}"),
                           "reserve_failed", str(exc)[:300])
                continue
            job = job.copy(state=JobState.ADMITTED.value, placement=tuple(d.placement), reason=d.reason,
                           info={**job.info, "borrowed": d.borrowed, "admitted_at": now})
            self._save(job, "admitted", d.reason)
            self.last_decision[job.job_id] = d
            self.recorder.decided(d)
        for d in decision.preempts:
            job = self.active.get(d.job_id)
            if job is None or job.preempt_deadline is not None:
                continue
            deadline = d.deadline if d.deadline is not None else now + self.policy.preemption_grace_s
            self.backend.request_stop(group_key(job))
            job = job.copy(preempt_deadline=deadline, reason="being preempted: " + d.reason,
                           info={**job.info, "preempted_for": getattr(d, "beneficiary", None)})
            self._save(job, "preemption_planned", d.reason)
            self.last_decision[job.job_id] = d
            self.recorder.decided(d)
        for d in decision.waits:
            job = self.active.get(d.job_id)
            prev = self.last_decision.get(d.job_id)
            self.last_decision[d.job_id] = d
            if job is not None and (prev is None or prev.reasons != d.reasons):
                self._save(job.copy(reason=d.reason), "queued", d.reason)
                self.recorder.decided(d)
        for d in decision.refusals:
            job = self.active.get(d.job_id)
            if job is not None:
                self.last_decision[d.job_id] = d
                self._finish(job, JobState.FAILED, "refused: " + d.reason)
                self.recorder.decided(d)
        return len(decision.admits), len(decision.preempts)

    # ---------------------------------------------------------------- transitions
    def _save(self, job: JobRecord, event: str, reason: str) -> JobRecord:
        self.ledger.put_job(job, (event, reason), ts=self.clock())
        if JobState(job.state).terminal:
            self.active.pop(job.job_id, None)
        else:
            self.active[job.job_id] = job
        return job

    def _finish(self, job: JobRecord, state: JobState, reason: str) -> JobRecord:
        old = job.state
        job = self._save(job.copy(state=state.value, reason=reason, finished_at=self.clock(), preempt_deadline=None,
                                  payload=None if state == JobState.SUCCEEDED else job.payload),
                         state.value.lower(), reason)
        self.last_decision.pop(job.job_id, None)
        self._learn_duration(job)
        if job.kind != "serving":
            self._finished[job.desk][state.value] += 1
        self.recorder.state_changed(job, old)
        return job

    def _requeue(self, job: JobRecord, why: str) -> JobRecord:
        job = job.copy(state=JobState.PENDING.value, attempts=job.attempts + 1, placement=(), started_at=None,
                       preempt_deadline=None, reason=f"requeued (attempt {job.attempts + 2} of "
                                                      f"{job.max_retries + 1}): {why}")
        self.recorder.state_changed(job, "RUNNING")
        return self._save(job, "requeued", why)

    def _release(self, job: JobRecord) -> None:
        try:
            self.backend.release(group_key(job), job.desk)
        except Exception as exc:  # noqa: BLE001 - recovery's orphan sweep retries it
            log.warning("release %s failed: %s", job.job_id, exc)

    def _lost(self, job: JobRecord, why: str) -> None:
        self._release(job)
        if job.state == JobState.ADMITTED.value:
            # Its GPUs went away before it started: nothing ran, so no retry is spent.
            self._save(job.copy(state=JobState.PENDING.value, placement=(), reason=f"requeued before start: {why}"),
                       "requeued", why)
            return
        if job.attempts < job.max_retries:
            self._requeue(job, why)
        else:
            self._finish(job, JobState.FAILED, f"{why} (no retries left)")

    def _preempt_now(self, job: JobRecord) -> None:
        self._release(job)
        why = job.reason.removeprefix("being preempted: ")
        self.recorder.preempted(job, why)
        if job.attempts < job.max_retries:
            self._requeue(job, "preempted: " + why)
        else:
            self._finish(job, JobState.PREEMPTED, why)

    def _launch_spec(self, job: JobRecord, key: str) -> LaunchSpec:
        c = self.config.controller
        return LaunchSpec(job.job_id, job.desk, job.kind, job.payload, job.placement, c.max_result_bytes, key=key,
                          priority=Priority(job.priority).label, unit=_unit(job),
                          dist_backend=job.info.get("dist_backend", "auto"),
                          checkpoint_dir=os.path.join(c.checkpoint_root, job.desk, job.job_id),
                          attempt=job.attempts, max_log_bytes=c.max_log_bytes)

    @staticmethod
    def _where(job: JobRecord) -> str:
        where = ", ".join(f"{i} x{g:g}" for i, g in job.placement)
        ranks = job.info.get("ranks") or []
        if len(ranks) > 1:
            return f"{len(ranks)} workers on {where}"
        gpus = job.info.get("cuda_visible_devices")
        return where + (f" (CUDA_VISIBLE_DEVICES={gpus})" if gpus else "")

    # ---------------------------------------------------------------- views
    def usage_table(self) -> dict[str, dict[str, Any]]:
        table = {}
        for name, q in self.desks.items():
            table[name] = {"desk": name, "nominal": q.nominal, "max": q.max_gpus, "weight": q.weight,
                           "in_use": 0.0, "serving": 0.0, "borrowed": 0.0, "lent": 0.0, "queued": 0, "queued_gpus": 0.0,
                           "running": 0, "oldest_wait_s": 0.0}
        now = self.clock()
        for job in self.active.values():
            row = table.get(job.desk)
            if row is None:
                continue
            if job.state == JobState.PENDING.value:
                row["queued"] += 1
                row["queued_gpus"] += job.gpus
                row["oldest_wait_s"] = max(row["oldest_wait_s"], now - job.submitted_at)
            else:
                row["in_use"] += job.gpus
                row["serving"] += job.gpus if job.kind == "serving" else 0.0
                row["running"] += job.kind != "serving"
        borrowed_total = 0.0
        for row in table.values():
            row["borrowed"] = max(0.0, row["in_use"] - row["nominal"])
            borrowed_total += row["borrowed"]
        # Lent: what each desk's unused nominal is carrying of others' borrowing, in desk order.
        left = borrowed_total - max(0.0, self.topology.total_gpus - sum(q.nominal for q in self.desks.values()))
        for row in table.values():
            unused = max(0.0, row["nominal"] - row["in_use"])
            row["lent"] = min(unused, max(0.0, left))
            left -= row["lent"]
        for name, row in table.items():
            row.update({state.lower(): n for state, n in self._finished[name].items()})
        return table

    def pool_demand(self) -> dict[str, float]:
        """GPUs each node pool is asked for now: running placements plus queued requests (a queued
        job counts against its desk's first pool). What the capacity planner forecasts."""
        demand = {i.pool: 0.0 for i in self.topology.islands}
        for job in self.active.values():
            if job.state == JobState.PENDING.value:
                pools = self.config.desk(job.desk).pools
                demand[pools[0]] = demand.get(pools[0], 0.0) + job.gpus
            else:
                for island, g in job.placement:
                    pool = self.topology.island(island).pool
                    demand[pool] = demand.get(pool, 0.0) + g
        return demand

    # ---------------------------------------------------------------- recovery
    def recover(self) -> dict[str, Any]:
        """Rebuild state from the ledger and re-adopt what the backend still has, by name."""
        with self.lock:
            owned = self.backend.owned(list(self.desks))
            adopted, requeued, released = [], [], []
            for job in self.ledger.jobs(states=list(ACTIVE)):
                self.active[job.job_id] = job
                if job.kind == "serving" or job.state == JobState.PENDING.value:
                    continue
                key = group_key(job)
                has_group = key in owned.groups
                has_runner = key in owned.runners
                if job.state == JobState.RUNNING.value or has_runner:
                    if has_group or has_runner:
                        self.backend.adopt(key, job.desk, job.placement, running=True)
                        if job.state != JobState.RUNNING.value:
                            job = self._save(job.copy(state=JobState.RUNNING.value, started_at=self.clock()),
                                             "started", "re-adopted after controller restart")
                            self.recorder.state_changed(job, JobState.ADMITTED.value)
                        adopted.append(job.job_id)
                    else:
                        self._lost(job, "runner gone while the controller was down")
                        requeued.append(job.job_id)
                elif has_group:  # ADMITTED, group reserved, runner not yet started
                    self.backend.adopt(key, job.desk, job.placement, running=False)
                    adopted.append(job.job_id)
                else:
                    self._save(job.copy(state=JobState.PENDING.value, placement=(), reason="requeued: group lost "
                                        "while controller was down"), "requeued", "group lost during restart")
                    requeued.append(job.job_id)
            expected = {group_key(j) for j in self.active.values() if j.state != JobState.PENDING.value}
            for key in (owned.groups | owned.runners) - expected:
                job = self.ledger.get_job(key.split("~")[0])
                self.backend.release(key, job.desk if job else "")
                released.append(key)
            summary = {"adopted": adopted, "requeued": requeued, "released": released, "active": len(self.active)}
            self.ledger.record(self.clock(), "", "", "controller_recovered", "", str(summary), summary)
            return summary


__all__ = ["ControllerCore", "Principal", "CycleReport", "group_key", "scheduler_config"]
