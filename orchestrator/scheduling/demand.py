"""A job's resource demand, computed from its spec: the most the job can hold at once.

One number serves admission (the whole of it must be free) and the quotas (the job's team
and owner are charged it), so the queue never admits a job past a quota for less than the
job can take. Whatever its search space picks:

- Training: ``train.workers`` workers of ``train.resources_per_worker``. On streamed data
  each worker leaves part of its CPU to its Ray Data tasks (``jobs.streaming.
  data_cpu_share``): the data's CPU is inside what the worker declares, and so charged.
- Tuning: the trials run at once (``tune.max_concurrent_trials``, or when null as many as
  the cluster holds, up to the trials planned) times the largest trial of the space: its
  most workers with its largest resources, for every value the space may give ``train``,
  ``train.workers``, ``train.resources_per_worker`` or one of its keys
  (``tuning.study.trial_trains``). After the study, ``tune.refit`` trains the best
  configuration again on its own: the job needs the larger of the two.
- Serving: up to ``autoscaling.max_replicas`` replicas of ``cpus_per_replica`` for each
  model served (one, or one per alias of a ``traffic`` split, whose ingress also scales to
  max_replicas replicas of ``SERVE_ROUTER_CPUS``), and the /v2 router's share. It runs
  after training, so the job needs the larger of the two. The application outlives the
  job: ``Demand.detached`` stays charged to the job's team and owner after the job
  succeeded (a ``Deployment``), until the application is taken down.

What one worker or replica is charged (``charged``); Ray holds a worker to none of these
amounts, so a small declared one bounds nothing:

- CPU: rounded up to a tenth (``CPU_STEPS``), and at least a tenth, also when the worker
  declares none: 1,000 workers of 0.001 CPU are charged 100 CPUs, not 1.
- GPU: rounded up to a tenth.
- memory (Ray's ``memory`` resource, bytes): the declared amount, and at least
  ``DEFAULT_MEMORY`` (1 GiB), also when none is declared.
- any other resource: as declared.
"""

from __future__ import annotations

import math
import time

from pydantic import BaseModel, Field

from orchestrator.scheduling.identity import GIB
from orchestrator.scheduling.record import JobInfo
from orchestrator.spec import PipelineSpec
from serve.spec import ServeSpec

EPS = 1e-9

CPU_STEPS = 10
"""CPU and GPU are charged in steps of 1/CPU_STEPS per worker or replica, rounded up."""

DEFAULT_MEMORY = 1 * GIB
"""Bytes of Ray's ``memory`` resource charged per training worker and per Serve replica
at least (the amount charged when the spec declares none)."""

SERVE_ROUTER_CPUS = 0.1
"""CPUs of a router replica: the /v2 router's and a traffic split's ingress (the value of
``serve.v2.ROUTER_CPUS``, not imported: it would bring Ray Serve into the queue server;
tests/security/test_quota_demand.py keeps the two equal)."""


class Demand(BaseModel):
    """What one job holds while it runs, and what it leaves held after."""

    total: dict[str, float] = Field(
        description="Resources the whole job can hold at once, as charged (``charged``): "
        "admission needs them free and the team's and owner's quotas count them."
    )
    bundle: dict[str, float] = Field(
        description="The largest single piece (one training worker or one Serve replica), "
        "as charged: some node must hold it whole."
    )
    bundles: int = Field(1, description="How many such pieces run at once (workers x trials).")
    concurrent_trials: int | None = Field(
        None, description="Trials the job runs at once (tuning jobs): fixed at admission."
    )
    detached: dict[str, float] = Field(
        default_factory=dict,
        description="What the job leaves running after it succeeds (its Serve application "
        "at max_replicas, as charged), charged to its team until taken down. {} = nothing.",
    )

    def describe(self) -> str:
        return format_resources(self.total)


class Deployment(BaseModel):
    """A Serve application a finished job left running: its team and owner hold
    ``resources`` until it is taken down."""

    app: str = Field(description="The Serve application's name (serve.name).")
    job_id: str = Field(description="The job that deployed it last.")
    team: str = Field(description="The team charged.")
    owner: str = Field(description="The user charged.")
    resources: dict[str, float] = Field(description="The job's ``Demand.detached``.")
    since: float = Field(default_factory=time.time, description="When it was recorded.")


def format_resources(resources: dict[str, float], zeros: bool = False) -> str:
    """``{CPU 2, memory 1 GiB}``: memory in GiB; amounts of 0 left out unless ``zeros``."""
    parts = [
        f"{name} {amount / GIB:g} GiB" if name == "memory" else f"{name} {amount:g}"
        for name, amount in sorted(resources.items())
        if zeros or amount > EPS
    ]
    return "{" + ", ".join(parts) + "}" if parts else "{}"


def _merge_max(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: max(a.get(k, 0.0), b.get(k, 0.0)) for k in set(a) | set(b)}


def _times(resources: dict[str, float], n: int) -> dict[str, float]:
    return {k: v * n for k, v in resources.items()}


def _tenths(amount: float, least: int = 0) -> float:
    return max(least, math.ceil(amount * CPU_STEPS - 1e-6)) / CPU_STEPS


def charged(resources: dict[str, float]) -> dict[str, float]:
    """What one worker or replica asking ``resources`` is charged (the module's rule).

    Example: ``charged({"CPU": 0.001})`` is ``{"CPU": 0.1, "memory": 2**30}``.
    """
    out = dict(resources)
    out["CPU"] = _tenths(resources.get("CPU", 0.0), least=1)
    if "GPU" in resources:
        out["GPU"] = _tenths(resources["GPU"])
    out["memory"] = max(resources.get("memory", 0.0), DEFAULT_MEMORY)
    return out


def _largest(trains) -> tuple[dict[str, float], dict[str, float], int]:
    """Over ``trains`` (TrainSpecs): the most one run holds, its largest worker, and its
    most workers, as charged."""
    total: dict[str, float] = {}
    bundle: dict[str, float] = {}
    workers = 0
    for train in trains:
        worker = charged(train.resources_per_worker)
        total = _merge_max(total, _times(worker, train.workers))
        bundle = _merge_max(bundle, worker)
        workers = max(workers, train.workers)
    return total, bundle, workers


def _refits(trains, refit: dict) -> list:
    """The refit's train section for each train section a trial may have (those that do
    not validate are left out: such a refit fails before it holds anything)."""
    from pydantic import ValidationError

    from tuning.spec import refit_train

    out = []
    for train in trains:
        try:
            out.append(refit_train(train.model_dump(mode="json"), refit))
        except ValidationError:
            continue
    return out


def _tuning(spec: PipelineSpec, cluster_total: dict[str, float]) -> Demand:
    """A study's demand: its trials at once, or its refit after, whichever is larger."""
    from tuning.study import trial_demand, trial_trains, trials_at_once

    sections = spec.model_dump(mode="json", include={"data", "model", "train"})
    trains = trial_trains(spec.tune, sections)
    per_trial, bundle, workers = _largest(trains)
    # a local trial on data Ray Data may stream holds a whole CPU for Data's listing
    per_trial = _merge_max(per_trial, trial_demand(spec.tune, sections))
    # at least one: a job whose one trial cannot fit is refused by never_fits
    concurrent = max(1, trials_at_once(spec.tune, per_trial, cluster_total))
    total, bundles = _times(per_trial, concurrent), workers * concurrent
    if spec.tune.refit is not None:
        refit_total, refit_bundle, refit_workers = _largest(_refits(trains, spec.tune.refit))
        total = _merge_max(total, refit_total)
        bundle = _merge_max(bundle, refit_bundle)
        bundles = max(bundles, refit_workers)
    return Demand(total=total, bundle=bundle, bundles=bundles, concurrent_trials=concurrent)


def serve_demand(serve: ServeSpec) -> tuple[dict[str, float], dict[str, float], int]:
    """What ``serve``'s application can hold at max_replicas (the module's rule), its
    largest replica, and how many of those, as charged."""
    replicas = serve.autoscaling.max_replicas
    replica = charged({"CPU": serve.cpus_per_replica})
    models = len(serve.traffic) if serve.traffic else 1
    total = _times(replica, replicas * models)
    if serve.traffic:  # the split's own ingress, with the same autoscaling
        total = add(total, _times(charged({"CPU": SERVE_ROUTER_CPUS}), replicas))
    total = add(total, {"CPU": SERVE_ROUTER_CPUS})  # the /v2 router, one shared replica
    return total, replica, replicas * models


def job_demand(spec: PipelineSpec, cluster_total: dict[str, float]) -> Demand:
    """The demand of ``spec`` on a cluster of ``cluster_total`` resources (the module's
    rule)."""
    if spec.tune is not None:
        demand = _tuning(spec, cluster_total)
    else:
        total, bundle, workers = _largest([spec.train])
        demand = Demand(total=total, bundle=bundle, bundles=workers)
    if spec.serve is not None:
        serving, replica, pieces = serve_demand(spec.serve)
        demand.total = _merge_max(demand.total, serving)
        demand.bundle = _merge_max(demand.bundle, replica)
        demand.bundles = max(demand.bundles, pieces)
        demand.detached = serving
    return demand


def left_deployed(job: JobInfo, spec: PipelineSpec) -> Deployment | None:
    """What ``job``, once it succeeded, leaves charged to its team and owner: its Serve
    application (None without a serve section)."""
    if spec.serve is None:
        return None
    serving, _, _ = serve_demand(spec.serve)
    return Deployment(
        app=spec.serve.name, job_id=job.id, team=job.team, owner=job.owner, resources=serving
    )


def fits(need: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + EPS >= v for k, v in need.items() if v > EPS)


def shortfall(need: dict[str, float], free: dict[str, float]) -> dict[str, float]:
    """What is missing from ``free`` for ``need`` (empty when it fits)."""
    return {
        k: v - free.get(k, 0.0) for k, v in need.items() if v > EPS and free.get(k, 0.0) + EPS < v
    }


def never_fits(demand: Demand, total: dict[str, float], node_max: list[dict[str, float]]) -> str:
    """Why ``demand`` can never run on this cluster ('' when it can)."""
    missing = shortfall(demand.total, total)
    if missing:
        return (
            f"needs {format_resources(demand.total)} at once but the whole cluster has "
            f"{format_resources({k: total.get(k, 0.0) for k in demand.total}, zeros=True)}; lower "
            "train.workers, train.resources_per_worker, tune.max_concurrent_trials or "
            "serve.autoscaling.max_replicas, or add nodes"
        )
    if node_max and sum(_pieces(demand.bundle, node) for node in node_max) < demand.bundles:
        return (
            f"needs {demand.bundles} workers of {format_resources(demand.bundle)} and the "
            f"nodes hold only {sum(_pieces(demand.bundle, n) for n in node_max)} of them (no "
            "single node has that much free in all); lower train.resources_per_worker"
        )
    return ""


def _pieces(bundle: dict[str, float], node: dict[str, float]) -> int:
    """How many ``bundle``s one node holds."""
    counts = [int(node.get(k, 0.0) / v + EPS) for k, v in bundle.items() if v > EPS]
    return min(counts) if counts else 0


def subtract(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) - b.get(k, 0.0) for k in set(a) | set(b)}


def add(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in set(a) | set(b)}
