"""The admission policy, without Ray: order, aging, gang admission, strict order, preemption."""

from __future__ import annotations

import pytest

from orchestrator.scheduling.identity import GIB, Quota, Quotas
from orchestrator.scheduling.policy import PolicyConfig, PriorityPolicy, create_policy
from orchestrator.scheduling.record import JobInfo

NOW = 1_000_000.0


def job(seq: int, priority: int, cpus: float, *, state="queued", waited_s=0.0, **extra) -> JobInfo:
    return JobInfo(
        id=f"job-{seq:06d}",
        seq=seq,
        name=f"j{seq}",
        pipeline="p",
        priority=priority,
        state=state,
        demand={"CPU": cpus},
        spec_path="p.yaml",
        cwd="/",
        enqueued_at=NOW - waited_s,
        submitted_at=NOW - waited_s,
        **extra,
    )


def test_highest_priority_first_then_fifo():
    queued = [job(1, 0, 1), job(2, 100, 1), job(3, 50, 1), job(4, 100, 1)]
    plan = PriorityPolicy().plan(queued, [], {"CPU": 2}, now=NOW)
    assert plan.order == ["job-000002", "job-000004", "job-000003", "job-000001"]
    assert plan.admit == ["job-000002", "job-000004"]  # gang: each whole, 2 CPUs in all
    assert set(plan.waiting) == {"job-000003", "job-000001"}


def test_aging_lets_a_long_waiting_low_job_overtake_a_new_high_one():
    policy = PriorityPolicy(PolicyConfig(aging_per_minute=1.0))
    old_low = job(1, 0, 1, waited_s=101 * 60)  # 0 + 101 points of waiting
    new_high = job(2, 100, 1)
    assert [j.id for j in policy.order([new_high, old_low], NOW)] == ["job-000001", "job-000002"]
    assert [j.id for j in policy.order([new_high, job(3, 0, 1, waited_s=60)], NOW)] == [
        "job-000002",
        "job-000003",
    ]


def test_gang_admission_needs_the_whole_demand_free():
    plan = PriorityPolicy().plan([job(1, 50, 2)], [], {"CPU": 1.5}, now=NOW)
    assert plan.admit == []
    assert plan.waiting["job-000001"] == "needs {CPU 2}, {CPU 0.5} short"


def test_a_smaller_later_job_does_not_jump_a_blocked_one():
    big, small = job(1, 50, 2), job(2, 50, 1)
    plan = PriorityPolicy().plan([big, small], [], {"CPU": 1}, now=NOW)
    assert plan.admit == []
    assert plan.waiting["job-000002"] == "behind job-000001 (normal), which waits for {CPU 1} more"


def test_a_job_larger_than_the_cluster_now_does_not_hold_up_the_others():
    plan = PriorityPolicy().plan(
        [job(1, 100, 4), job(2, 50, 1)], [], {"CPU": 2}, now=NOW, total={"CPU": 2}
    )
    assert plan.admit == ["job-000002"]
    assert "more than the whole cluster has now" in plan.waiting["job-000001"]


def test_preemption_stops_the_fewest_lowest_priority_most_recent_jobs():
    running = [
        job(1, 0, 1, state="running", started_at=NOW - 300),
        job(2, 0, 1, state="running", started_at=NOW - 10),
        job(3, 50, 1, state="running", started_at=NOW - 5),
    ]
    plan = PriorityPolicy().plan([job(4, 100, 1)], running, {"CPU": 0}, now=NOW)
    assert plan.preempt == ["job-000002"]  # one CPU needed: the newest of the lowest
    assert plan.admit == []
    assert plan.waiting["job-000004"].endswith("preempting job-000002")

    plan = PriorityPolicy().plan([job(5, 100, 2)], running, {"CPU": 0}, now=NOW)
    assert sorted(plan.preempt) == ["job-000001", "job-000002"]


def test_no_preemption_of_equal_priority_non_preemptible_or_because_of_aging():
    policy = PriorityPolicy()
    equal = [job(1, 50, 2, state="running")]
    assert policy.plan([job(2, 50, 2)], equal, {"CPU": 0}, now=NOW).preempt == []
    pinned = [job(1, 0, 2, state="running", preemptible=False)]
    assert policy.plan([job(2, 100, 2)], pinned, {"CPU": 0}, now=NOW).preempt == []
    aged = job(2, 0, 2, waited_s=10_000 * 60)  # aged far above 50, but its priority is 0
    assert policy.plan([aged], [job(1, 0, 2, state="running")], {"CPU": 0}, now=NOW).preempt == []
    # freeing every lower job would still not fit: nobody is stopped for nothing
    low = [job(1, 0, 1, state="running"), job(3, 100, 1, state="running")]
    assert policy.plan([job(2, 100, 2)], low, {"CPU": 0}, now=NOW).preempt == []


def test_while_a_preempted_job_stops_nothing_more_is_preempted():
    active = [job(1, 0, 2, state="preempting"), job(3, 0, 1, state="running")]
    plan = PriorityPolicy().plan([job(2, 100, 2)], active, {"CPU": 0}, now=NOW)
    assert plan.preempt == []
    assert "waiting for preempted job-000001" in plan.waiting["job-000002"]


def test_preemption_can_be_turned_off():
    policy = PriorityPolicy(PolicyConfig(preemption=False))
    plan = policy.plan([job(2, 100, 1)], [job(1, 0, 1, state="running")], {"CPU": 0}, now=NOW)
    assert plan.preempt == []


def test_unknown_policy_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown scheduling policy 'fair'; use one of priority"):
        create_policy("fair")


# --------------------------------------------------------------------------- teams


def team_job(seq: int, team: str, cpus: float = 1, priority: int = 50, **extra) -> JobInfo:
    return job(seq, priority, cpus, team=team, owner=f"{team}-user", **extra)


def test_fair_share_a_team_that_floods_the_queue_cannot_starve_another():
    """vision queues 10 one-CPU jobs, then nlp 3, same priority, 2 CPUs: replaying the
    scheduler (two finish, the next two start), nlp's three start before vision's fifth."""
    policy = PriorityPolicy(PolicyConfig(aging_per_minute=0))
    total = {"CPU": 2.0}
    queued = [team_job(i, "vision") for i in range(1, 11)]
    queued += [team_job(i, "nlp") for i in range(11, 14)]
    running = [team_job(i, "vision", state="running") for i in (98, 99)]  # vision's first two
    started: list[str] = []
    while queued:
        running.pop(0)  # the oldest running job finishes, freeing one CPU
        free = {"CPU": total["CPU"] - sum(j.demand["CPU"] for j in running)}
        plan = policy.plan(queued, running, free, NOW, total)
        admitted = [j for j in queued if j.id in plan.admit]
        started += [f"{j.team}:{j.seq}" for j in admitted]
        running += [j.model_copy(update={"state": "running"}) for j in admitted]
        queued = [j for j in queued if j.id not in plan.admit]
    assert started[:6] == ["nlp:11", "vision:1", "nlp:12", "vision:2", "nlp:13", "vision:3"]
    fifth_vision = started.index("vision:5")
    assert all(started.index(f"nlp:{n}") < fifth_vision for n in (11, 12, 13))


def test_fair_share_comes_after_priority_and_is_fifo_within_a_team():
    policy = PriorityPolicy(PolicyConfig(aging_per_minute=0))
    total = {"CPU": 4.0}
    busy = [team_job(90, "vision", cpus=3, state="running")]
    queued = [team_job(1, "vision", priority=100), team_job(2, "vision"), team_job(3, "nlp"),
              team_job(4, "vision"), team_job(5, "nlp")]  # fmt: skip
    order = [j.seq for j in policy.order(queued, NOW, busy, total)]
    assert order == [1, 3, 5, 2, 4]  # high first; then nlp (holding nothing) before vision
    alone = [team_job(7, "admins"), team_job(6, "admins", priority=60)]
    assert [j.seq for j in policy.order(alone, NOW, busy, total)] == [6, 7]  # the old order


def test_a_job_over_its_team_quota_waits_with_the_reason_and_blocks_no_other_team():
    """vision limited to 2 CPUs on a 4-CPU cluster: its second 2-CPU job waits with the quota
    reason while nlp's job starts beside the first."""
    policy = PriorityPolicy()
    first = team_job(1, "vision", cpus=2, state="running")
    queued = [team_job(2, "vision", cpus=2), team_job(3, "nlp", cpus=2)]
    quotas = Quotas(teams={"vision": Quota(cpus=2)})
    plan = policy.plan(queued, [first], {"CPU": 2.0}, NOW, {"CPU": 4.0}, quotas)
    assert plan.admit == ["job-000003"]
    assert plan.waiting["job-000002"] == "quota: team vision holds CPU 2 of 2 (this job needs 2)"
    running_cap = Quotas(teams={"nlp": Quota(running=1)})
    two = [team_job(4, "nlp"), team_job(5, "nlp")]
    plan = policy.plan(two, [], {"CPU": 4.0}, NOW, {"CPU": 4.0}, running_cap)
    assert plan.admit == ["job-000004"]
    assert plan.waiting["job-000005"] == "quota: team nlp runs 1 of 1 jobs"


def test_a_user_quota_holds_beside_the_team_quota_and_memory_counts_in_gib():
    """alice may run one job of her own even though her team may run three; bob, in the same
    team, is not held up by her limit. Memory quotas compare Ray's bytes with GiB."""
    policy = PriorityPolicy()
    alice_running = job(1, 50, 1, state="running", team="vision", owner="alice")
    queued = [
        job(2, 50, 1, team="vision", owner="alice"),
        job(3, 50, 1, team="vision", owner="bob"),
    ]
    quotas = Quotas(teams={"vision": Quota(running=3)}, users={"alice": Quota(running=1)})
    plan = policy.plan(queued, [alice_running], {"CPU": 3.0}, NOW, {"CPU": 4.0}, quotas)
    assert plan.admit == ["job-000003"]
    assert plan.waiting["job-000002"] == "quota: user alice runs 1 of 1 jobs"

    big = job(4, 50, 1, team="nlp", owner="carol")
    big.demand["memory"] = 3 * GIB
    capped = Quotas(teams={"nlp": Quota(memory=2)})
    plan = policy.plan([big], [], {"CPU": 4.0, "memory": 8 * GIB}, NOW, None, capped)
    assert plan.waiting["job-000004"] == (
        "quota: team nlp holds memory 0 GiB of 2 GiB (this job needs 3 GiB)"
    )


def test_preemption_takes_back_from_a_team_over_its_quota_first():
    """vision's quota was lowered to 1 CPU under its two running low jobs (it is over its
    quota); nlp, under its quota, needs 1 CPU at high priority on a full cluster. Of the
    three low jobs running, the one stopped is vision's, though nlp's own low job started
    last (the rule without quotas would stop that one)."""
    policy = PriorityPolicy()
    active = [
        job(1, 0, 1, state="running", team="vision", owner="alice", started_at=NOW - 300),
        job(2, 0, 1, state="running", team="vision", owner="alice", started_at=NOW - 200),
        job(3, 0, 1, state="running", team="nlp", owner="bob", started_at=NOW - 10),
    ]
    urgent = job(4, 100, 1, team="nlp", owner="bob")
    quotas = Quotas(teams={"vision": Quota(cpus=1), "nlp": Quota(cpus=3)})
    plan = policy.plan([urgent], active, {"CPU": 0.0}, NOW, {"CPU": 3.0}, quotas)
    assert plan.preempt == ["job-000002"] and plan.preempt_for == "job-000004"
    without = policy.plan([urgent], active, {"CPU": 0.0}, NOW, {"CPU": 3.0})
    assert without.preempt == ["job-000003"]


def test_a_job_waiting_for_its_own_quota_preempts_nobody():
    """nlp is at its 1-CPU quota: its high-priority job waits for that quota and stops none
    of vision's low jobs, however much higher its priority is."""
    policy = PriorityPolicy()
    active = [
        job(1, 0, 1, state="running", team="vision", owner="alice"),
        job(2, 0, 1, state="running", team="nlp", owner="bob"),
    ]
    urgent = job(3, 100, 1, team="nlp", owner="bob")
    plan = policy.plan([urgent], active, {"CPU": 0.0}, NOW, {"CPU": 2.0},
                       Quotas(teams={"nlp": Quota(cpus=1)}))  # fmt: skip
    assert plan.preempt == []
    assert plan.waiting["job-000003"].startswith("quota: team nlp holds CPU 1 of 1")
