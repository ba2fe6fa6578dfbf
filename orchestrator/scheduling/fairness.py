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

**Quotas.** A job whose team would hold more than its CPU/GPU quota, or run more jobs than
its running quota, waits with the reason (``quota: team vision holds CPU 2 of 2``) and does
not hold up the jobs behind it: a quota wait is not part of the strict-order gang rule.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Callable

from orchestrator.scheduling.demand import add
from orchestrator.scheduling.identity import Quota
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


class QuotaBook:
    """What each team holds and runs during one scheduling pass, against its quota."""

    def __init__(self, quotas: dict[str, Quota], active: list[JobInfo]):
        self.quotas = quotas
        self.held = held_by_team(active)
        self.running: dict[str, int] = defaultdict(int)
        for job in active:
            self.running[job.team] += 1

    def reason(self, job: JobInfo) -> str | None:
        """Why ``job`` must wait for its team's quota; None when it may start."""
        quota = self.quotas.get(job.team)
        if quota is None:
            return None
        held = self.held[job.team]
        for key, limit in quota.held_limits().items():
            if held.get(key, 0.0) + job.demand.get(key, 0.0) > limit + 1e-9:
                return (
                    f"quota: team {job.team} holds {key} {held.get(key, 0.0):g} of {limit:g} "
                    f"(this job needs {job.demand.get(key, 0.0):g})"
                )
        if quota.running is not None and self.running[job.team] >= quota.running:
            return f"quota: team {job.team} runs {self.running[job.team]} of {quota.running} jobs"
        return None

    def admitted(self, job: JobInfo) -> None:
        self.held[job.team] = add(self.held[job.team], job.demand)
        self.running[job.team] += 1
