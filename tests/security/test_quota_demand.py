"""Attack: a member's spec asks little and takes more than the team's quota. The tune's
refit, the largest values of its search space, Serve's replicas up to max_replicas, a Serve
application left running after the job, undeclared memory and tiny CPU fractions were not
charged, and two racing submits both got past a queued-jobs cap. Each is charged now: the
demand is the most the job can take (``scheduling.demand``), admission holds what passes
the quota, and the queued-jobs check and the insert are one transaction."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orchestrator.loader import parse_spec
from orchestrator.scheduling.demand import (
    SERVE_ROUTER_CPUS,
    Demand,
    job_demand,
    left_deployed,
)
from orchestrator.scheduling.identity import GIB, Quota, Quotas
from orchestrator.scheduling.policy import PriorityPolicy
from orchestrator.scheduling.record import JobInfo
from orchestrator.scheduling.store import JobStore
from tests.helpers import spec_text

CLUSTER = {"CPU": 64.0, "memory": 256 * GIB}  # free and large: only the quota holds a job
ONE_TRIAL = {"metric": "val_accuracy", "num_samples": 4, "max_concurrent_trials": 1}
LR = {"train.optimizer.lr": {"loguniform": [0.001, 0.01]}}


def demand_of(**sections) -> Demand:
    spec, _ = parse_spec(spec_text("vision-x", "rows.csv", **sections), Path("p.yaml"))
    return job_demand(spec, CLUSTER)


def job_of(demand: Demand, seq: int = 1, team: str = "vision", owner: str = "alice") -> JobInfo:
    return JobInfo(id=f"job-{seq:06d}", seq=seq, name="x", pipeline="x", owner=owner,
                   team=team, priority=50, demand=demand.total, bundle=demand.bundle,
                   spec_path="p.yaml", cwd="/")  # fmt: skip


def held_back(demand: Demand, quota: Quota, deployed=None) -> str | None:
    """Why alice's job of ``demand`` waits under team vision's ``quota`` on a free cluster;
    None when it is admitted."""
    job = job_of(demand)
    quotas = Quotas(teams={"vision": quota})
    plan = PriorityPolicy().plan([job], [], CLUSTER, quotas=quotas, deployed=deployed)
    assert (plan.admit == [job.id]) == (job.id not in plan.waiting)
    return plan.waiting.get(job.id)


def test_the_refit_after_the_study_is_charged():
    """One cheap trial at a time, then ``tune.refit`` retrains the winner on 4 workers."""
    demand = demand_of(
        train={"workers": 1, "resources_per_worker": {"CPU": 1}},
        tune={**ONE_TRIAL, "space": LR, "refit": {"workers": 4}},
    )
    assert demand.total == {"CPU": 4.0, "memory": 4 * GIB}  # the refit, not the trial's 1
    assert demand.bundles == 4 and demand.concurrent_trials == 1
    assert held_back(demand, Quota(cpus=2)) == (
        "quota: team vision holds CPU 0 of 2 (this job needs 4)"
    )
    assert held_back(demand, Quota(cpus=4)) is None
    bigger = demand_of(
        tune={**ONE_TRIAL, "space": LR, "refit": {"resources_per_worker": {"CPU": 6}}}
    )
    assert bigger.total["CPU"] == 6.0 and bigger.bundle["CPU"] == 6.0


@pytest.mark.parametrize(
    "space, cpus, bundle_cpus, workers",
    [
        ({"train.workers": {"choice": [1, 4]}}, 4.0, 1.0, 4),
        ({"train.resources_per_worker.CPU": {"uniform": [0.5, 4.0]}}, 4.0, 4.0, 1),
        ({"train.resources_per_worker": {"choice": [{"CPU": 1}, {"CPU": 4}]}}, 4.0, 4.0, 1),
        ({"train": {"choice": [{"workers": 1}, {"workers": 4}]}}, 4.0, 1.0, 4),
        ({"train.workers": {"int": [1, 4]}, "train.resources_per_worker.CPU": {"choice": [1, 2]}},
         8.0, 2.0, 4),
    ],
)  # fmt: skip
def test_the_largest_workers_and_resources_of_the_search_space_are_charged(
    space, cpus, bundle_cpus, workers
):
    """The spec says 1 worker of 1 CPU; the space may pick more of either."""
    demand = demand_of(
        train={"workers": 1, "resources_per_worker": {"CPU": 1}},
        tune={**ONE_TRIAL, "space": {**LR, **space}},
    )
    assert demand.total["CPU"] == cpus
    assert demand.bundle["CPU"] == bundle_cpus and demand.bundles == workers  # one node each
    assert held_back(demand, Quota(cpus=2)) == (
        f"quota: team vision holds CPU 0 of 2 (this job needs {cpus:g})"
    )


def test_serve_is_charged_at_max_replicas_not_min_replicas():
    """min_replicas 1 at submit; under load the app scales to 4 replicas of 1 CPU."""
    serve = {"name": "vision-app", "cpus_per_replica": 1,
             "autoscaling": {"min_replicas": 1, "max_replicas": 4}}  # fmt: skip
    demand = demand_of(serve=serve)
    assert demand.total == {"CPU": 4 + SERVE_ROUTER_CPUS, "memory": 4 * GIB}
    assert demand.detached == demand.total  # it stays up after the job: see below
    assert held_back(demand, Quota(cpus=2)) == (
        "quota: team vision holds CPU 0 of 2 (this job needs 4.1)"
    )
    # a traffic split runs up to max_replicas of each alias, and its own ingress
    split = demand_of(serve={**serve, "traffic": {"champion": 50, "challenger": 50}})
    assert split.total["CPU"] == pytest.approx(2 * 4 + 4 * SERVE_ROUTER_CPUS + SERVE_ROUTER_CPUS)
    assert split.total["memory"] == (2 * 4 + 4) * GIB


def test_serve_demand_reads_what_the_deploy_asks_of_ray():
    """The charge counts the knobs the deploy hands Ray Serve: if a replica comes to ask
    for more (GPUs), this fails until ``demand.serve_demand`` charges it too."""
    from serve.deploy import deployment_options
    from serve.spec import ServeSpec
    from serve.v2 import ROUTER_CPUS

    options = deployment_options(
        ServeSpec(name="a", cpus_per_replica=0.5, autoscaling={"max_replicas": 3})
    )
    assert options["ray_actor_options"] == {"num_cpus": 0.5}
    assert options["autoscaling_config"]["max_replicas"] == 3
    assert SERVE_ROUTER_CPUS == ROUTER_CPUS


def test_a_deployed_app_holds_its_teams_quota_until_it_is_taken_down(tmp_path):
    """alice's serving job succeeded; its app runs on, detached from any job. Her next job
    must fit beside it; bob's team is not charged for it."""
    store = JobStore(tmp_path / "queue.db")
    spec, _ = parse_spec(
        spec_text("vision-serve", "rows.csv", serve={"name": "vision-app"}), Path("p.yaml")
    )
    served = job_of(job_demand(spec, CLUSTER))
    store.record_deployment(left_deployed(served, spec))
    (app,) = store.deployments()
    assert (app.app, app.team, app.owner) == ("vision-app", "vision", "alice")
    assert app.resources == {"CPU": 2 + SERVE_ROUTER_CPUS, "memory": 2 * GIB}  # max_replicas 2

    small = demand_of(train={"workers": 1, "resources_per_worker": {"CPU": 1}})
    quotas = Quotas(teams={"vision": Quota(cpus=3), "nlp": Quota(cpus=3)})
    hers, his = job_of(small, 2), job_of(small, 3, team="nlp", owner="bob")
    plan = PriorityPolicy().plan(
        [hers, his], [], CLUSTER, quotas=quotas, deployed=store.deployments()
    )
    assert plan.admit == [his.id]
    assert plan.waiting[hers.id] == "quota: team vision holds CPU 2.1 of 3 (this job needs 1)"

    assert store.end_deployment("vision-app").app == "vision-app"  # taken down
    assert store.end_deployment("vision-app") is None and store.deployments() == []
    plan = PriorityPolicy().plan([hers], [], CLUSTER, quotas=quotas, deployed=[])
    assert plan.admit == [hers.id]
    store.close()


@pytest.mark.parametrize(
    "per_worker", [{"CPU": 0.5}, {"CPU": 0.5, "memory": 1}], ids=["undeclared", "one-byte"]
)
def test_memory_a_worker_does_not_declare_is_charged(per_worker):
    """4 workers and no memory (or 1 byte) asked: Ray holds them to neither, so each is
    charged 1 GiB, and a memory quota of 2 GiB holds the job."""
    demand = demand_of(train={"workers": 4, "resources_per_worker": per_worker})
    assert demand.total == {"CPU": 2.0, "memory": 4 * GIB}
    assert held_back(demand, Quota(memory=2)) == (
        "quota: team vision holds memory 0 GiB of 2 GiB (this job needs 4 GiB)"
    )


@pytest.mark.parametrize(
    "per_worker", [{"CPU": 0.001}, {"CPU": 0.01}, {"slot": 0.001}, {"CPU": 0.001, "GPU": 0.001}]
)
def test_tiny_cpu_fractions_do_not_multiply_past_the_quota(per_worker):
    """1,000 workers of 0.001 CPU ask 1 CPU in all: 1,000 processes. Each worker is charged
    a tenth of a CPU at least (also one that asks none), so the job is charged 100."""
    demand = demand_of(
        train={"workers": 1000, "batch_size": 1000, "resources_per_worker": per_worker}
    )
    assert demand.total["CPU"] == pytest.approx(100.0)
    assert demand.total.get("GPU", 100.0) == pytest.approx(100.0)
    assert held_back(demand, Quota(cpus=2)) == (
        "quota: team vision holds CPU 0 of 2 (this job needs 100)"
    )


def test_the_rounding_that_charges_is_the_one_that_admits():
    """With 4 CPUs of quota: 40 workers of 0.01 CPU are charged 4 and admitted; a second
    such job, or one of 41 workers, waits (the quota sees the same charge as the fit)."""
    forty, more = (
        demand_of(train={"workers": n, "batch_size": n, "resources_per_worker": {"CPU": 0.01}})
        for n in (40, 41)
    )
    assert forty.total["CPU"] == pytest.approx(4.0) and more.total["CPU"] == pytest.approx(4.1)
    assert held_back(forty, Quota(cpus=4)) is None
    assert held_back(more, Quota(cpus=4)).startswith("quota: team vision holds CPU 0 of 4")
    quotas = Quotas(teams={"vision": Quota(cpus=4)})
    first, second = job_of(forty, 1), job_of(forty, 2)
    plan = PriorityPolicy().plan([first, second], [], CLUSTER, quotas=quotas)
    assert plan.admit == [first.id] and plan.waiting[second.id].startswith(
        "quota: team vision holds CPU 4 of 4"
    )
    # and without a quota, the fit: 4 CPUs free hold the first, not the 41 workers
    free = {"CPU": 4.0, "memory": 256 * GIB}
    assert PriorityPolicy().plan([job_of(forty)], [], free).admit == ["job-000001"]
    waits = PriorityPolicy().plan([job_of(more)], [], free).waiting["job-000001"]
    assert waits.startswith("needs {CPU 4.1, memory 41 GiB}, {CPU 0.1") and "short" in waits


class _SlowCluster:
    """Ray as the submit sees it (a 4-CPU, 8 GiB node), answering slowly: each submit asks
    for the cluster after its first quota check and before its insert, and the answer comes
    only once all ``racers`` are asking, so every submit is in that window at once."""

    def __init__(self, racers: int):
        self.all_asking = threading.Barrier(racers, timeout=60)

    def resources(self):
        from types import SimpleNamespace

        self.all_asking.wait()
        node = {"CPU": 4.0, "memory": 8.0 * GIB}
        return SimpleNamespace(total=node, available=dict(node), nodes=[node])


def test_racing_submits_never_pass_the_queued_jobs_quota(tenancy):
    """alice may have 1 job queued; she sends 20 submits at once, and all 20 pass the first
    check of her quota before any is inserted. Exactly one is queued."""
    from orchestrator.scheduling.policy import create_policy
    from orchestrator.scheduling.scheduler import QuotaRefused, Scheduler, SubmitRequest

    tenancy.store.identities.set_user_quota("alice", queued=1)
    alice = tenancy.store.identities.user("alice")
    scheduler = Scheduler(tenancy.store, _SlowCluster(20), create_policy(), tenancy.state)
    outcomes: list[str] = []

    def submit(i: int) -> None:
        ask = SubmitRequest(spec_text=spec_text(f"vision-{i}", "rows.csv"), spec_path="p.yaml",
                            cwd="/somewhere")  # fmt: skip
        try:
            scheduler.submit(ask, alice)
            outcomes.append("queued")
        except QuotaRefused as exc:
            outcomes.append(str(exc))
        except Exception as exc:  # shown by the assertion below
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    refused = [o for o in outcomes if o != "queued"]
    assert outcomes.count("queued") == 1, outcomes
    assert len(refused) == 19
    assert all(o.startswith("user alice has 1 jobs queued, its limit is 1") for o in refused)
    assert [j.owner for j in tenancy.store.queued()] == ["alice"]


def test_only_its_owner_or_an_admin_takes_a_charged_app_down(tenancy):
    """Attack: bob frees his team's quota... by taking down alice's app (its charge would go
    with it). 403, audited, the app still runs and is still charged; alice may."""
    from orchestrator.scheduling.demand import Deployment

    app = Deployment(app="vision-app", job_id="job-000007", team="vision", owner="alice",
                     resources={"CPU": 2.1})  # fmt: skip
    tenancy.store.record_deployment(app)
    api = tenancy.serve()
    listed = api.as_("bob").get("/deployments").json()
    assert [(d["app"], d["owner"]) for d in listed] == [("vision-app", "alice")]

    refused = api.as_("bob").delete("/deployments/vision-app")
    assert refused.status_code == 403 and "belongs to alice" in refused.json()["detail"]
    assert api.scheduler.ray.undeployed == []
    assert [d.app for d in tenancy.store.deployments()] == ["vision-app"]
    last = tenancy.store.audit.entries()[-1]
    assert (last.user, last.action, last.outcome.split(":")[0]) == (
        "bob",
        "undeploy",
        "refused (403)",
    )

    taken = api.as_("alice").delete("/deployments/vision-app")
    assert taken.status_code == 200 and taken.json()["resources"] == {"CPU": 2.1}
    assert api.scheduler.ray.undeployed == ["vision-app"]
    assert tenancy.store.deployments() == []
    assert api.as_("alice").delete("/deployments/vision-app").status_code == 404
