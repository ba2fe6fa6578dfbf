"""Sharing the cluster between teams: fair order at equal priority, and team quotas.

**Fair share (the exact rule).** Within a team, jobs keep the queue's order (effective
priority, aging included, then submission order). Across teams the queue is merged one job
at a time: among the teams whose next job sits in the highest whole-point effective
priority, the next place goes to the team with the smallest dominant share, i.e. the
largest fraction of any one cluster resource (CPU, GPU, ...) held by its running jobs plus
the jobs already placed ahead of it in this order; ties go to the earlier submission. So
priority (with aging) decides first, usage between teams second, submission order last; a
team that floods the queue gets its turn after each job of a team holding less, and cannot
starve it. With one team (or no users) this is exactly the old order.

**Quotas.** Teams and users may each have one; a job meets its team's and its owner's. A
job whose team or owner would hold more than its CPU/GPU/memory quota, or run more jobs than
its running quota, waits with the reason (``quota: team vision holds CPU 2 of 2``) and does
not hold up the jobs behind it: a quota wait is not part of the strict-order gang rule.
A team or user holding more than its quota (an admin lowered it under running jobs) is
*over* its quota: preemption stops its jobs first (``policy``). What a team and a user hold
includes the Serve applications their finished jobs left deployed (``demand.Deployment``,
charged ``Demand.detached``) until those are taken down; they hold no running-job slot.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Callable, Iterable

from orchestrator.scheduling.demand import Deployment, add
from orchestrator.scheduling.identity import GIB, Quotas
from orchestrator.scheduling.record import JobInfo


def dominant_share(held: dict[str, float], total: dict[str, float]) -> float:
    """The largest fraction of any cluster resource that ``held`` takes."""
    return max((held[k] / total[k] for k in held if total.get(k)), default=0.0)


def held_by_team(active: list[JobInfo]) -> dict[str, dict[str, float]]:
    held: dict[str, dict[str, float]] = defaultdict(dict)
    for job in active:
        held[job.team] = add(held[job.team], job.demand)
    return held


def fair_order(
    queued: list[JobInfo],
    active: list[JobInfo],
    total: dict[str, float],
    effective_priority: Callable[[JobInfo], float],
) -> list[JobInfo]:
    """``queued`` in admission order (the module's rule)."""
    by_team: dict[str, list[JobInfo]] = defaultdict(list)
    for job in queued:
        by_team[job.team].append(job)
    if len(by_team) < 2:
        return sorted(queued, key=lambda j: (-effective_priority(j), j.seq))
    lines = {
        team: deque(sorted(jobs, key=lambda j: (-effective_priority(j), j.seq)))
        for team, jobs in by_team.items()
    }
    held = held_by_team(active)
    share = {team: dominant_share(held[team], total) for team in lines}
    band = {team: math.floor(effective_priority(line[0])) for team, line in lines.items()}
    ordered: list[JobInfo] = []
    while lines:
        top = max(band.values())
        team = min((t for t in lines if band[t] == top), key=lambda t: (share[t], lines[t][0].seq))
        job = lines[team].popleft()
        ordered.append(job)
        held[team] = add(held[team], job.demand)
        share[team] = dominant_share(held[team], total)
        if lines[team]:
            band[team] = math.floor(effective_priority(lines[team][0]))
        else:
            del lines[team], band[team]
    return ordered


def _amount(key: str, value: float) -> str:
    return f"{value / GIB:g} GiB" if key == "memory" else f"{value:g}"


class QuotaBook:
    """What each team and user holds and runs during one scheduling pass, against their
    quotas: their active jobs, and the applications ``deployed`` by their finished ones."""

    def __init__(
        self,
        quotas: Quotas | None,
        active: list[JobInfo],
        deployed: Iterable[Deployment] = (),
    ):
        self.quotas = quotas or Quotas()
        self.held: dict[str, dict[str, float]] = defaultdict(dict)  # "team x" / "user y"
        self.running: dict[str, int] = defaultdict(int)
        for job in active:
            self.admitted(job)
        for app in deployed:
            for scope in (f"team {app.team}", f"user {app.owner}"):  # QuotaScope.label's form
                self.held[scope] = add(self.held[scope], app.resources)

    def _scopes(self, job: JobInfo):
        return self.quotas.of(job.team, job.owner)

    def reason(self, job: JobInfo) -> str | None:
        """Why ``job`` must wait for its team's or owner's quota; None when it may start."""
        for scope in self._scopes(job):
            who, quota = scope.label, scope.quota
            held = self.held[who]
            for key, limit in quota.held_limits().items():
                if held.get(key, 0.0) + job.demand.get(key, 0.0) > limit + 1e-9:
                    return (
                        f"quota: {who} holds {key} {_amount(key, held.get(key, 0.0))} of "
                        f"{_amount(key, limit)} (this job needs "
                        f"{_amount(key, job.demand.get(key, 0.0))})"
                    )
            if quota.running is not None and self.running[who] >= quota.running:
                return f"quota: {who} runs {self.running[who]} of {quota.running} jobs"
        return None

    def over(self, job: JobInfo) -> bool:
        """True when ``job``'s team or owner holds more than its quota now."""
        for scope in self._scopes(job):
            held, quota = self.held[scope.label], scope.quota
            if any(held.get(k, 0.0) > v + 1e-9 for k, v in quota.held_limits().items()):
                return True
            if quota.running is not None and self.running[scope.label] > quota.running:
                return True
        return False

    def admitted(self, job: JobInfo) -> None:
        for scope in (f"team {job.team}", f"user {job.owner}"):  # QuotaScope.label's form
            self.held[scope] = add(self.held[scope], job.demand)
            self.running[scope] += 1
