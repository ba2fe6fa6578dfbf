"""Admission policy: who runs next, who waits and why, and whom to preempt.

The default, ``PriorityPolicy``:
- order: effective priority (priority + ``aging_per_minute`` x minutes waited), then
  submission order (FIFO within a priority). Aging lets a low job overtake newer high ones
  after waiting long enough, so nothing starves.
- teams (``fairness``): at equal priority, teams take turns by their dominant share of the
  cluster; a job over its team's quota waits without holding up other teams' jobs.
- gang admission: a job starts only when its whole demand fits what is free.
- strict order, no backfill: when the first job in order does not fit, the jobs behind it
  wait too, even a smaller one that would fit. A stream of small jobs can then never delay a
  big one indefinitely; the price is idle resources while the big one waits for them.
- preemption: when the first job does not fit and running jobs of a strictly lower
  (un-aged) priority that are preemptible would free enough, the fewest of them are stopped:
  jobs of a team or user over its quota first, then the lowest priority, then the most
  recently started. They go back to the queue and resume from their last checkpoint. Aging
  never causes preemption. Preemption respects quotas: a job that waits for its own team's
  or owner's quota preempts nobody (only a team under its quota takes resources back), and
  a team over its quota (an admin lowered it under running jobs) gives back first.
- quotas count what a job can take (``demand``) and the Serve applications a team's
  finished jobs left ``deployed`` (``demand.Deployment``).
"""

from __future__ import annotations

import abc
import time

from pydantic import BaseModel, Field

from orchestrator.scheduling.demand import (
    Deployment,
    add,
    fits,
    format_resources,
    shortfall,
    subtract,
)
from orchestrator.scheduling.fairness import QuotaBook, fair_order
from orchestrator.scheduling.identity import Quotas
from orchestrator.scheduling.record import JobInfo
from orchestrator.scheduling.spec import priority_label


class PolicyConfig(BaseModel):
    """Knobs of the admission policy (``orch server`` flags)."""

    aging_per_minute: float = Field(
        1.0, ge=0, description="Priority points a queued job gains per minute of waiting."
    )
    preemption: bool = Field(True, description="Stop lower-priority jobs to admit higher ones.")


class Plan(BaseModel):
    """One scheduling pass: the decisions to carry out."""

    admit: list[str] = Field(default_factory=list, description="Job ids to start, in order.")
    preempt: list[str] = Field(default_factory=list, description="Running job ids to stop.")
    preempt_for: str | None = Field(None, description="The queued job they are stopped for.")
    waiting: dict[str, str] = Field(default_factory=dict, description="Job id -> why it waits.")
    order: list[str] = Field(default_factory=list, description="Queued ids in admission order.")

    @property
    def decisions(self) -> int:
        return len(self.admit) + len(self.waiting)


class SchedulingPolicy(abc.ABC):
    """Decides admission from the queued jobs, the active ones and the free resources."""

    @abc.abstractmethod
    def order(
        self,
        queued: list[JobInfo],
        now: float,
        active: list[JobInfo] | None = None,
        total: dict[str, float] | None = None,
    ) -> list[JobInfo]:
        """Queued jobs in the order they are to be admitted (with ``active`` and ``total``,
        shared fairly between teams: ``fairness``)."""

    @abc.abstractmethod
    def plan(
        self,
        queued: list[JobInfo],
        active: list[JobInfo],
        free: dict[str, float],
        now: float | None = None,
        total: dict[str, float] | None = None,
        quotas: Quotas | None = None,
        deployed: list[Deployment] | None = None,
    ) -> Plan:
        """The admissions and preemptions for this moment, within the teams' and users'
        ``quotas``, of which the applications ``deployed`` by finished jobs hold part."""


class PriorityPolicy(SchedulingPolicy):
    def __init__(self, config: PolicyConfig | None = None):
        self.config = config or PolicyConfig()

    def effective_priority(self, job: JobInfo, now: float) -> float:
        waited_min = max(0.0, now - job.enqueued_at) / 60.0
        return job.priority + self.config.aging_per_minute * waited_min

    def order(self, queued, now, active=None, total=None) -> list[JobInfo]:
        return fair_order(
            queued, active or [], total or {}, lambda j: self.effective_priority(j, now)
        )

    def plan(self, queued, active, free, now=None, total=None, quotas=None, deployed=None) -> Plan:
        now = time.time() if now is None else now
        ordered = self.order(queued, now, active, total)
        plan = Plan(order=[j.id for j in ordered])
        free = dict(free)
        book = QuotaBook(quotas, active, deployed or ())
        head: JobInfo | None = None
        for job in ordered:
            over = book.reason(job)
            if over is not None:  # waits for its own team, holds up no one else
                plan.waiting[job.id] = over
                continue
            if total is not None and not fits(job.demand, total):
                # the cluster shrank below this job: it must not hold up the others
                plan.waiting[job.id] = (
                    f"needs {format_resources(job.demand)}, more than the whole cluster has now "
                    f"({format_resources(total)}); waits for nodes to return"
                )
                continue
            if head is None and fits(job.demand, free):
                plan.admit.append(job.id)
                free = subtract(free, job.demand)
                book.admitted(job)
                continue
            if head is not None:
                plan.waiting[job.id] = (
                    f"behind {head.id} ({priority_label(head.priority)}), which waits for "
                    f"{format_resources(shortfall(head.demand, free))} more"
                )
                continue
            head = job
            missing = shortfall(job.demand, free)
            reason = f"needs {format_resources(job.demand)}, {format_resources(missing)} short"
            stopping = [a for a in active if a.state == "preempting"]
            if stopping:
                reason += "; waiting for preempted " + ", ".join(a.id for a in stopping)
            elif self.config.preemption:
                victims = self.victims(job, active, free, QuotaBook(quotas, active, deployed or ()))
                if victims:
                    plan.preempt, plan.preempt_for = [v.id for v in victims], job.id
                    reason += "; preempting " + ", ".join(v.id for v in victims)
            plan.waiting[job.id] = reason
        return plan

    def victims(
        self,
        job: JobInfo,
        active: list[JobInfo],
        free: dict[str, float],
        book: QuotaBook | None = None,
    ) -> list[JobInfo]:
        """The fewest lower-priority preemptible jobs whose stop lets ``job`` fit ([] if
        none), those of a team or user over its quota (``book``) taken first."""
        book = book or QuotaBook(None, active)
        candidates = [
            a
            for a in active
            if a.state in ("starting", "running") and a.preemptible and a.priority < job.priority
        ]
        candidates.sort(
            key=lambda a: (not book.over(a), a.priority, -(a.started_at or a.submitted_at))
        )
        chosen: list[JobInfo] = []
        freed = dict(free)
        for candidate in candidates:
            if fits(job.demand, freed):
                break
            chosen.append(candidate)
            freed = add(freed, candidate.demand)
        if not fits(job.demand, freed):
            return []
        # drop any that turned out unnecessary (a later, bigger one freed enough)
        for candidate in list(chosen):
            rest = [c for c in chosen if c is not candidate]
            trial = dict(free)
            for c in rest:
                trial = add(trial, c.demand)
            if fits(job.demand, trial):
                chosen = rest
        return chosen


_POLICIES = {"priority": PriorityPolicy}


def create_policy(name: str = "priority", config: PolicyConfig | None = None) -> SchedulingPolicy:
    """The policy registered under ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in _POLICIES:
        raise ValueError(f"unknown scheduling policy {name!r}; use one of {', '.join(_POLICIES)}")
    return _POLICIES[name](config)
