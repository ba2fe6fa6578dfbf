"""The queue's engine: accepts jobs, admits them as Ray Jobs, preempts, reconciles with Ray.

Every state change is written to SQLite before it is acted on (write-ahead): an admitted
job is recorded as ``starting`` with its Ray submission id before the Ray job is submitted,
and Ray refuses a second job with that id. A restart therefore finds each job either still
queued, or under a submission id that Ray knows (adopted, not started again) or does not
know (submitted now, for the first time).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from orchestrator.exceptions import SpecError, SpecTooLarge
from orchestrator.plan import plan_for, plan_with
from orchestrator.result_file import read_outcome
from orchestrator.scheduling.access import AccessConfig, check_non_preemptible, check_registry
from orchestrator.scheduling.boundary import OutsideBoundary, check_member_spec, member_cwd
from orchestrator.scheduling.demand import (
    Demand,
    Deployment,
    add,
    fits,
    format_resources,
    left_deployed,
    never_fits,
    subtract,
)
from orchestrator.scheduling.entrypoint import anchored_spec_text, isolated_command
from orchestrator.scheduling.identity import LOCAL_ADMIN, Team, User
from orchestrator.scheduling.locations import LocationRefused, check_plain_text
from orchestrator.scheduling.policy import Plan, SchedulingPolicy
from orchestrator.scheduling.ray_jobs import TERMINAL_RAY_STATES, RayJobs, RayUnavailable
from orchestrator.scheduling.record import ACTIVE, JobInfo
from orchestrator.scheduling.spec import priority_value
from orchestrator.scheduling.store import DuplicateKey, JobStore

log = logging.getLogger(__name__)

SCHEDULER = "orch:scheduler"
"""The audit trail's user for the scheduler's own decisions (no user name has a colon)."""

FAULT_ENV = "ORCH_FAULT"
"""Chaos tests set it to ``kill-after-admit-record``: the server kills itself (SIGKILL)
right after it records an admission and before the Ray job is submitted, the window the
write-ahead rule is for (tests/orchestrator/test_queue_users.py)."""

# What a job takes from the submitter's environment (the rest comes from the cluster's).
FORWARDED_ENV = ("ORCH_HOME", "MLFLOW_TRACKING_URI", "DS_ACCELERATOR")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class SubmitRequest(BaseModel):
    """What ``orch submit`` / ``Client.submit`` send."""

    spec_text: str = Field(description="The pipeline YAML, as submitted.")
    spec_path: str = Field(description="Where it was read from (error messages, display).")
    cwd: str = Field(description="Directory the job runs in: relative data paths resolve there.")
    env: dict[str, str] = Field(default_factory=dict, description="ORCH_HOME, MLflow URI...")
    name: str | None = None
    priority: str | int | None = Field(None, description="Overrides scheduling.priority.")
    queue: str | None = Field(None, description="Overrides scheduling.queue.")
    idempotency_key: str | None = Field(None, max_length=200)

    @field_validator("spec_path", "cwd", "name", "queue", "idempotency_key")
    @classmethod
    def _plain_text(cls, value: str | None, info) -> str | None:
        """A path, name or key with a control character (NUL, a newline...) is refused
        here (422), before it reaches a file system call or a log line."""
        if value is not None and _CONTROL.search(value):
            raise ValueError(f"{info.field_name} holds a control character; send plain text")
        return value

    @field_validator("env")
    @classmethod
    def _plain_env(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if not _ENV_NAME.match(key) or _CONTROL.search(value):
                raise ValueError(
                    f"env {key[:40]!r}: names are letters, digits and _ and values plain text"
                )
        return env


class JobConflict(Exception):
    """The job is in a state where the action makes no sense (the message says which)."""


class UnknownJob(Exception):
    pass


class QuotaRefused(Exception):
    """A submit beyond the team's queued-jobs or priority quota (HTTP 403)."""


class Scheduler:
    def __init__(
        self,
        store: JobStore,
        ray_jobs: RayJobs,
        policy: SchedulingPolicy,
        state_dir: Path,
        *,
        poll_s: float = 1.0,
        python: str = sys.executable,
        access: AccessConfig | None = None,
    ):
        self.store = store
        self.access = access or AccessConfig()
        self.ray = ray_jobs
        self.policy = policy
        self.state_dir = Path(state_dir)
        self.poll_s = poll_s
        self.python = python
        self._wake = threading.Event()
        self._lock = threading.RLock()
        self.last_plan = Plan()
        self.last_free: dict[str, float] = {}
        self.last_total: dict[str, float] = {}  # the cluster at the last pass (fair order)
        self.last_pass_at: float | None = None  # when the last pass completed
        self.last_pass_error: str | None = None  # why the latest pass failed, if it did
        self.pass_started_at: float | None = None  # set while a pass runs

    # ---------------------------------------------------------------- requests

    def submit(self, request: SubmitRequest, owner: User = LOCAL_ADMIN) -> tuple[JobInfo, bool]:
        """Queue ``owner``'s pipeline. Returns (job, created); created is False for a known
        key.

        Raises:
            SpecError: the spec is invalid, or can never fit this cluster.
            RayUnavailable: the cluster's resources could not be read.
            Forbidden: it deploys a model and ``owner`` may not (``access.check_registry``).
            OutsideBoundary, QuotaRefused: a member's spec or submit passes their rights.
        """
        _check_size(request, self.access.max_spec_bytes)
        if request.idempotency_key:
            existing = self.store.by_key(owner.name, request.idempotency_key)
            if existing is not None:
                return existing, False
        from orchestrator.loader import parse_spec

        spec, _ = parse_spec(request.spec_text, Path(request.spec_path))
        cwd, env = self._place(owner, spec, request)
        self._check_rights(owner, spec)
        try:
            check_plain_text(spec)
        except LocationRefused as exc:
            raise SpecError(f"{request.spec_path}: {exc}") from None
        _check_data_path(spec.data.source, cwd, request.spec_path)
        try:
            priority = priority_value(
                request.priority if request.priority is not None else spec.scheduling.priority
            )
        except ValueError as exc:
            raise SpecError(f"--priority: {exc}") from None
        self._check_submit_quota(owner, priority)
        queue = request.queue or spec.scheduling.queue
        cluster = self.ray.resources()
        demand = plan_for(spec, cluster.total).demand
        problem = never_fits(demand, cluster.total, cluster.nodes)
        if problem:
            raise SpecError(f"{request.spec_path}: {spec.name} can never run here: it {problem}")
        job = JobInfo(
            id="",
            name=request.name or spec.name,
            pipeline=spec.name,
            queue=queue,
            priority=priority,
            preemptible=spec.scheduling.preemptible,
            demand=demand.total,
            bundle=demand.bundle,
            concurrent_trials=demand.concurrent_trials,
            spec_path=request.spec_path,
            spec_text=request.spec_text,
            cwd=cwd,
            env={k: v for k, v in env.items() if k in FORWARDED_ENV},
            idempotency_key=request.idempotency_key,
            owner=owner.name,
            team=owner.team,
        )
        job.moved("queued", "submitted")
        # Under the scheduler's lock: a pass that read the job between its insert and this
        # save would otherwise have its decision (the reason, a preemption) overwritten.
        # The queued-jobs caps are checked again in the insert's own transaction: two
        # submits racing past the check above cannot both be queued.
        with self._lock:
            try:
                job = self.store.add_if(
                    job, lambda queued: self._check_submit_quota(owner, priority, queued)
                )
            except DuplicateKey as dup:
                return dup.job, False
            job.run_name = f"{job.pipeline}-{job.id}"
            self.store.save(job)
        self.wake()
        return job, True

    def _check_rights(self, owner: User, spec) -> None:
        """What the server's settings reserve to a role: a deploy is a registry change, and
        a job nobody may preempt holds its resources against every higher priority.

        Raises:
            Forbidden: ``owner``'s role is below the one the server names.
        """
        if spec.serve is not None:
            check_registry(owner, spec.registered_model_name, self.access, "deploy")
        if not spec.scheduling.preemptible:
            check_non_preemptible(owner, self.access)

    def _place(self, owner: User, spec, request: SubmitRequest) -> tuple[str, dict[str, str]]:
        """Where the job runs and with what environment: the submitter's for an admin (or
        with no users); for a member, the team's first root and the server's ORCH_HOME and
        MLflow store, once the spec stays inside the team's rights (``boundary``).

        Raises:
            OutsideBoundary: the member's spec reaches past them.
        """
        team = self._member_team(owner)
        if team is None:
            return request.cwd, request.env
        cwd = member_cwd(team, self.state_dir / "member-jobs")
        cwd.mkdir(parents=True, exist_ok=True)
        check_member_spec(spec, team, cwd)
        # the server's own ORCH_HOME (its state dir is $ORCH_HOME/queue) and MLflow store
        server_env = {"ORCH_HOME": str(self.state_dir.parent)}
        if os.environ.get("MLFLOW_TRACKING_URI"):
            server_env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
        return str(cwd), server_env

    def _member_team(self, owner: User) -> Team | None:
        """The team whose boundary ``owner``'s jobs keep; None for an admin (or no users)."""
        if owner.admin or not self.store.identities.enforced():
            return None
        return self.store.identities.team(owner.team) or Team(name=owner.team, created_at=0)

    def tracking_uri(self) -> str:
        """The MLflow store members' jobs write to, and the registry the server changes."""
        home_store = f"sqlite:///{self.state_dir.parent / 'mlflow.db'}"
        return os.environ.get("MLFLOW_TRACKING_URI") or home_store

    def _check_submit_quota(
        self, owner: User, priority: int, queued: list[JobInfo] | None = None
    ) -> None:
        """A member's team and the member may each cap the priority and the jobs queued at
        once (admins are not capped).

        Args:
            queued: the queued jobs as the insert's transaction reads them
                (``JobStore.add_if``); None = read them now (a first check, before the
                spec is planned).

        Raises:
            QuotaRefused: the submit would pass one of them (nothing is queued).
        """
        if owner.admin:
            return
        for scope in self.store.identities.quotas().of(owner.team, owner.name):
            quota = scope.quota
            if quota.priority is not None and priority > quota.priority:
                raise QuotaRefused(
                    f"priority {priority} is above {scope.label}'s limit of {quota.priority}; "
                    "submit at that or lower (--priority), or ask an admin (orch teams/users set)"
                )
            if quota.queued is not None:
                queued = self.store.queued() if queued is None else queued
                waiting = sum(1 for job in queued if scope.covers(job))
                if waiting >= quota.queued:
                    raise QuotaRefused(
                        f"{scope.label} has {waiting} jobs queued, its limit is {quota.queued}; "
                        "wait for some to start"
                    )

    def cancel(self, job_id: str) -> JobInfo:
        with self._lock:
            job = self._get(job_id)
            if job.terminal:
                raise JobConflict(f"{job_id} is already {job.state}; nothing to cancel")
            if job.state == "queued":
                job.moved("cancelled", "cancelled while queued")
                job.finished_at = time.time()
            elif job.state != "cancelling":
                job.moved("cancelling", "cancel requested; stopping its Ray job")
                if job.submission_id:
                    self._stop_quietly(job.submission_id)
            self.store.save(job)
        self.wake()
        return job

    def retry(self, job_id: str) -> JobInfo:
        """A new job with the original spec text of a failed or cancelled one."""
        old = self._get(job_id)
        if old.state not in ("failed", "cancelled"):
            raise JobConflict(f"{job_id} is {old.state}; only failed or cancelled jobs are retried")
        job, _ = self.submit(
            SubmitRequest(
                spec_text=old.spec_text,
                spec_path=old.spec_path,
                cwd=old.cwd,
                env=old.env,
                name=old.name,
                priority=old.priority,
                queue=old.queue,
            ),
            self._owner(old),
        )
        job.retry_of = old.id
        self.store.save(job)
        return job

    def get(self, job_id: str) -> JobInfo:
        return self._get(job_id)

    def deployment(self, app: str) -> Deployment:
        """The application a finished job left running, charged to its team.

        Raises:
            UnknownJob: no finished job of this queue left ``app`` running.
        """
        for deployment in self.store.deployments():
            if deployment.app == app:
                return deployment
        raise UnknownJob(f"no application {app!r} left running by this queue's jobs")

    def undeploy(self, app: str) -> Deployment:
        """Take ``app`` down and stop charging its team (also when Serve no longer runs it:
        taken down outside the queue)."""
        deployment = self.deployment(app)
        self.ray.undeploy(app)
        self.store.end_deployment(app)
        self.wake()  # its resources may admit a waiting job
        return deployment

    def _owner(self, job: JobInfo) -> User:
        """Who ``job`` belongs to (a retry stays theirs, within their team's quotas)."""
        user = self.store.identities.user(job.owner)
        if user is not None:
            return user
        if job.owner == LOCAL_ADMIN.name:
            return LOCAL_ADMIN
        return User(name=job.owner, team=job.team, role="member", token_id="-", created_at=0)

    def logs(self, job_id: str) -> str:
        job = self._get(job_id)
        parts = []
        for sid in job.submission_ids:
            text = self.ray.logs(sid)
            if len(job.submission_ids) > 1:
                parts.append(f"--- attempt {sid} ---\n")
            parts.append(text)
        return "".join(parts)

    def _get(self, job_id: str) -> JobInfo:
        job = self.store.get(job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id!r}; `orch list` shows the jobs")
        return job

    # ---------------------------------------------------------------- the loop

    def wake(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event, ray_lost_exit_s: float = 60.0) -> None:
        """Schedule until ``stop``, or until Ray has not answered for ``ray_lost_exit_s``
        (the cluster is gone; a server started on its next use picks the queue up)."""
        lost_since = None
        while not stop.is_set():
            try:
                self.tick()
                lost_since = None
                self.last_pass_error = None
            except RayUnavailable as exc:
                log.warning("scheduler pass skipped: %s", exc)
                self.last_pass_error = f"Ray did not answer: {exc}"
                lost_since = lost_since or time.time()
                if time.time() - lost_since > ray_lost_exit_s:
                    log.error("Ray has not answered for %.0f s; the server stops", ray_lost_exit_s)
                    return
            except Exception as exc:  # a bug must not end scheduling: log it and go on
                log.exception("scheduler pass failed")
                self.last_pass_error = f"{type(exc).__name__}: {exc}"
            finally:
                self.pass_started_at = None
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def tick(self) -> Plan:
        """One pass: reconcile active jobs with Ray, then plan and carry out admissions."""
        with self._lock:
            self.pass_started_at = time.time()
            active = [self._reconcile(job) for job in self.store.active()]
            active = [job for job in active if job.state in ACTIVE]
            cluster = self.ray.resources()
            reserved: dict[str, float] = {}
            for job in active:
                reserved = add(reserved, job.demand)
            told = subtract(cluster.total, reserved)
            free = {k: min(told.get(k, 0.0), cluster.available.get(k, 0.0)) for k in cluster.total}
            queued = self.store.queued()
            quotas = self.store.identities.quotas()
            plan = self.policy.plan(
                queued, active, free, total=cluster.total, quotas=quotas,
                deployed=self.store.deployments(),
            )  # fmt: skip
            if cluster.total != self.last_total:  # what `orch teams set` checks quotas against
                self.store.record_cluster(cluster.total)
            self.last_total = cluster.total
            by_id = {j.id: j for j in queued}
            for job_id in plan.admit:
                self._admit(by_id[job_id])
            active_by_id = {j.id: j for j in active}
            for job_id in plan.preempt:
                self._preempt(active_by_id[job_id], by_id.get(plan.preempt_for))
            held = _held_outside(told, cluster.available)
            for job_id, reason in plan.waiting.items():
                job = by_id[job_id]
                if job.preemptions:
                    reason = f"preempted {job.preemptions}x, resumes from its checkpoint; {reason}"
                if held and not reason.startswith("behind") and fits(job.demand, told):
                    # it would fit what orch's own jobs leave free: something else holds it
                    reason += (
                        f"; Ray reports {format_resources(held)} in use beyond orch's running "
                        "jobs (a stopped job's workers still exiting, or work outside the queue)"
                    )
                if job.reason != reason:
                    job.reason = reason
                    self.store.save(job)
            self.last_plan, self.last_free = plan, free
            self.last_pass_at = time.time()
            return plan

    def _admit(self, job: JobInfo) -> None:
        job.attempt += 1
        job.submission_id = f"orch-{self.store.queue_id}-{job.id}-{job.attempt}"
        job.submission_ids.append(job.submission_id)
        job.moved("starting", f"admitted (attempt {job.attempt}); Ray job {job.submission_id}")
        self.store.save(job)  # write-ahead: a restart adopts or submits this id
        self._audit("admit", job, f"ok: attempt {job.attempt}, Ray job {job.submission_id}")
        if os.environ.get(FAULT_ENV) == "kill-after-admit-record":
            os.kill(os.getpid(), signal.SIGKILL)  # chaos tests: die between record and submit
        self._submit_to_ray(job)

    def _audit(self, action: str, job: JobInfo, outcome: str) -> None:
        """The scheduler's own decisions in the audit trail, beside the calls that led to
        them (the user column says the scheduler decided; the detail names the owner)."""
        self.store.audit.append(
            user=SCHEDULER, team=job.team, action=action, target=job.id, address="server",
            outcome=outcome, detail=f"owner {job.owner}, demand {format_resources(job.demand)}",
        )  # fmt: skip

    def _submit_to_ray(self, job: JobInfo) -> None:
        try:
            folder, plan_file = self._write_job_files(job)
        except (SpecError, OutsideBoundary) as exc:  # invalid now, or its locations moved
            why = "no longer validates" if isinstance(exc, SpecError) else "is refused at start"
            job.moved("failed", f"its spec {why}: {exc}")
            job.finished_at = time.time()
            self.store.save(job)
            return
        arguments = ["run", "spec.yaml", "--json", "--run-name", job.run_name]
        arguments += ["--result-file", str(self._outcome_file(job)), "--plan", str(plan_file)]
        entrypoint = isolated_command(self.python, folder, arguments)
        try:
            self.ray.submit(
                job.submission_id,
                entrypoint,
                # the driver's chatter stays in the Ray job's log, which `orch logs` shows
                # the run's MLflow tags name its owner (orch.user / orch.team)
                env_vars={
                    **job.env,
                    "ORCH_LOG_TO_STDERR": "1",
                    "ORCH_USER": job.owner,
                    "ORCH_TEAM": job.team,
                },
                # orch_queue: several queues (one per ORCH_HOME) may share a cluster,
                # and each numbers its jobs from job-000001
                metadata={
                    "orch_queue": self.store.queue_id,
                    "orch_job": job.id,
                    "name": job.name,
                    "attempt": job.attempt,
                },
            )
        except RayUnavailable as exc:
            log.warning("submitting %s failed (%s); retried on the next pass", job.id, exc)

    def _outcome_file(self, job: JobInfo, attempt: int | None = None) -> Path:
        """Where an attempt's ``orch run`` writes its outcome (orchestrator.result_file)."""
        return self.state_dir / "jobs" / job.id / f"outcome-{attempt or job.attempt}.json"

    def _write_job_files(self, job: JobInfo) -> tuple[Path, Path]:
        """The job's folder (its working directory: only the server writes it), holding the
        spec as the user wrote it with relative locations anchored to ``job.cwd``, and the
        plan the job was admitted with: the study runs the trials at once its demand was
        counted for.

        Raises:
            SpecError: the spec no longer validates (queued by an older release).
            OutsideBoundary: a member's location now leads outside the team's roots (a
                symlink swapped after submit): checked again here, at start.
        """
        folder = self.state_dir / "jobs" / job.id
        folder.mkdir(parents=True, exist_ok=True)
        from orchestrator.loader import parse_spec

        spec, _ = parse_spec(job.spec_text, Path(job.spec_path))
        team = self._member_team(self._owner(job))
        if team is not None:
            check_member_spec(spec, team, Path(job.cwd))
        (folder / "spec.yaml").write_text(anchored_spec_text(job.spec_text, job.cwd))
        admitted = Demand(
            total=job.demand, bundle=job.bundle, concurrent_trials=job.concurrent_trials
        )
        return folder, plan_with(spec, admitted).write(folder / "plan.json")

    def _preempt(self, job: JobInfo, preemptor: JobInfo | None) -> None:
        job.preemptions += 1
        job.moved("preempting", "preempted for a higher-priority job; stopping its Ray job")
        self.store.save(job)
        for_whom = (
            f"for {preemptor.id} of {preemptor.owner} (team {preemptor.team}, priority "
            f"{preemptor.priority} over {job.priority})"
            if preemptor
            else "for a higher priority"
        )
        self._audit("preempt", job, f"ok: {for_whom}")
        self._stop_quietly(job.submission_id)

    def _stop_quietly(self, submission_id: str | None) -> None:
        if not submission_id:
            return
        try:
            self.ray.stop(submission_id)
        except RayUnavailable as exc:
            log.warning("stopping %s failed (%s); retried on the next pass", submission_id, exc)

    def _reconcile(self, job: JobInfo) -> JobInfo:
        status, message = self.ray.status(job.submission_id) if job.submission_id else (None, "")
        before = (job.state, job.reason)
        if status is None:
            if job.state == "starting":  # recorded, never reached Ray: submit it now
                self._submit_to_ray(job)
            elif job.state in ("cancelling", "preempting"):
                self._finish_stop(job)
            else:
                job.moved("failed", f"its Ray job {job.submission_id} disappeared")
                job.finished_at = time.time()
        elif status in ("PENDING", "RUNNING"):
            if job.state in ("cancelling", "preempting"):
                self._stop_quietly(job.submission_id)
            elif status == "RUNNING" and job.state == "starting":
                job.started_at = job.started_at or time.time()
                job.moved("running", f"Ray job {job.submission_id}")
        elif status in TERMINAL_RAY_STATES:
            if job.state in ("cancelling", "preempting"):
                self._finish_stop(job)
            elif status == "SUCCEEDED":
                self._succeeded_or_not(job)
            elif status == "STOPPED":
                job.moved("cancelled", f"Ray job {job.submission_id} was stopped outside orch")
                job.finished_at = time.time()
            else:
                job.moved("failed", self._failure(job, message))
                job.finished_at = time.time()
        if (job.state, job.reason) != before:
            self.store.save(job)
        return job

    def _succeeded_or_not(self, job: JobInfo) -> None:
        """A Ray job that exited 0 succeeded only if its ``orch run`` wrote its outcome:
        a driver that never reached our code (or code that exits 0 early) did not run the
        pipeline, whatever its exit status says."""
        job.finished_at = time.time()
        job.result = read_outcome(self._outcome_file(job))
        if job.result is None:
            job.moved(
                "failed",
                f"its Ray job {job.submission_id} exited 0 without writing its outcome "
                "(the pipeline did not finish; see orch logs)",
            )
        elif job.result.get("error"):
            job.moved("failed", str(job.result["error"]))
        else:
            job.moved("succeeded", _summary(job.result))
            self._charge_what_it_left(job)

    def _charge_what_it_left(self, job: JobInfo) -> None:
        """A succeeded job's Serve application keeps running after it: its team and owner
        are charged for it until it is taken down (``undeploy``)."""
        from orchestrator.loader import parse_spec

        try:
            spec, _ = parse_spec(job.spec_text, Path(job.spec_path))
        except SpecError:  # queued by an older release, invalid under this one
            log.warning("%s: its spec no longer validates; its Serve app is not charged", job.id)
            return
        deployment = left_deployed(job, spec)
        if deployment is not None:
            self.store.record_deployment(deployment)

    def _failure(self, job: JobInfo, message: str) -> str:
        """Why the attempt failed: its outcome file's error; else (killed before it could
        write one, or started before result files existed) what its log or Ray says."""
        outcome = read_outcome(self._outcome_file(job))
        if outcome is not None and outcome.get("error"):
            return str(outcome["error"])
        return _failure(message, self.ray.logs(job.submission_id))

    def _finish_stop(self, job: JobInfo) -> None:
        if job.state == "cancelling":
            job.moved("cancelled", "cancelled; its Ray job stopped")
            job.finished_at = time.time()
        else:
            job.enqueued_at = time.time()
            job.moved("queued", f"preempted (#{job.preemptions}); resumes from its checkpoint")


def _held_outside(told: dict[str, float], available: dict[str, float]) -> dict[str, float]:
    """What Ray reports in use beyond what orch's active jobs were granted."""
    gaps = {k: v - available.get(k, 0.0) for k, v in told.items()}
    return {k: gap for k, gap in gaps.items() if gap > 1e-6}


def _check_size(request: SubmitRequest, max_bytes: int) -> None:
    """Raises SpecTooLarge when the spec is over the server's ``max_spec_bytes``."""
    size = len(request.spec_text.encode())
    if size > max_bytes:
        raise SpecTooLarge(
            f"{request.spec_path}: the spec is {size:,} bytes; this server takes at most "
            f"{max_bytes:,} (its admin sets orch server --max-spec-bytes)"
        )


def _check_data_path(source: str | list[str], cwd: str, spec_path: str) -> None:
    """Each local source exists (a glob: the folder before its first pattern); object
    storage is checked when the job reads it, with the job's credentials."""
    for location in [source] if isinstance(source, str) else source:
        if "://" in location and not location.startswith("file://"):
            continue
        path = Path(location.removeprefix("file://"))
        if not path.is_absolute():
            path = Path(cwd) / path
        while any(c in path.name for c in "*?[") or any(c in str(path.parent) for c in "*?["):
            path = path.parent
        if not path.exists():
            raise SpecError(
                f"{spec_path}: data.source: {location!r} does not exist (relative paths "
                f"resolve from {cwd}, where the job runs)"
            )


def _summary(result: dict | None) -> str:
    if not result:
        return "finished"
    metrics = ", ".join(
        f"{k}={v:.4g}" for k, v in result.get("metrics", {}).items() if k != "epoch"
    )
    return f"finished: {metrics}"


def _failure(message: str, logs: str) -> str:
    """The error line of a log, else Ray's message: for an attempt without an outcome."""
    for line in reversed(logs.splitlines()):
        if line.startswith("error: ") or '"error"' in line:
            try:
                return json.loads(line)["error"]
            except (ValueError, KeyError, TypeError):
                return line.removeprefix("error: ")
    return message or "the Ray job failed (see orch logs)"
