"""A job's resource demand, computed from its spec: what admission must find free at once.

Training: ``train.workers x train.resources_per_worker``. Tuning: the largest trial of the
space times the trials run at once (``tune.max_concurrent_trials``, or when null as many as
the cluster's total holds, up to the trials planned). Serving: ``min_replicas x
cpus_per_replica``, after training, so the job needs the larger of the two.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from orchestrator.spec import PipelineSpec

EPS = 1e-9


class Demand(BaseModel):
    """What one job holds while it runs."""

    total: dict[str, float] = Field(description="Resources the whole job needs at once.")
    bundle: dict[str, float] = Field(
        description="The largest single piece (one training worker or one Serve replica): "
        "some node must hold it whole."
    )
    bundles: int = Field(1, description="How many such pieces run at once (workers x trials).")
    concurrent_trials: int | None = Field(
        None, description="Trials the job runs at once (tuning jobs): fixed at admission."
    )

    def describe(self) -> str:
        return format_resources(self.total)


def format_resources(resources: dict[str, float]) -> str:
    parts = [f"{name} {amount:g}" for name, amount in sorted(resources.items()) if amount > EPS]
    return "{" + ", ".join(parts) + "}" if parts else "{}"


def _merge_max(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: max(a.get(k, 0.0), b.get(k, 0.0)) for k in set(a) | set(b)}


def job_demand(spec: PipelineSpec, cluster_total: dict[str, float]) -> Demand:
    """The demand of ``spec`` on a cluster of ``cluster_total`` resources."""
    train = spec.train
    bundle = dict(train.resources_per_worker)
    total = {k: v * train.workers for k, v in bundle.items()}
    concurrent = None
    bundles = train.workers
    if spec.tune is not None:
        from tuning.study import trial_demand, trials_at_once

        per_trial = trial_demand(
            spec.tune, spec.model_dump(mode="json", include={"model", "train"})
        )
        # at least one: a job whose one trial cannot fit is refused by never_fits
        concurrent = max(1, trials_at_once(spec.tune, per_trial, cluster_total))
        total = {k: v * concurrent for k, v in per_trial.items()}
        bundles = train.workers * concurrent
        # a trial's largest worker: the space may vary resources_per_worker
        workers = max(1, train.workers)
        bundle = _merge_max(bundle, {k: v / workers for k, v in per_trial.items()})
    if spec.serve is not None:
        replica = {"CPU": spec.serve.cpus_per_replica}
        bundle = _merge_max(bundle, replica)
        total = _merge_max(
            total, {"CPU": spec.serve.cpus_per_replica * spec.serve.autoscaling.min_replicas}
        )
    return Demand(total=total, bundle=bundle, bundles=bundles, concurrent_trials=concurrent)


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
            f"{format_resources({k: total.get(k, 0.0) for k in demand.total})}; lower "
            "train.workers, train.resources_per_worker or tune.max_concurrent_trials, or add nodes"
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
