"""A pipeline planned for one cluster, once: which runner trains, what the job holds at once
and in its largest piece, and how many trials run at once.

The queue plans a job when it is submitted (its admission checks the plan's demand) and
hands the same plan to the job's ``orch run --plan``, so the study runs exactly the trials
at once it was admitted for; the user's spec is passed on as written, never rewritten. A
run without a plan (``orch run``, ``Client.run``) plans at start with the same rule
(``tuning.study.trials_at_once``) on what its trials declare; the queue's plan counts what
it charges (``scheduling.demand.charged``: CPUs in tenths, at least 1 GiB of memory per
worker), so a queued study may run fewer trials at once.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from orchestrator.scheduling.demand import Demand, job_demand
from orchestrator.spec import PipelineSpec


class RunPlan(BaseModel):
    """What a spec holds and runs on a cluster (``plan_for``)."""

    pipeline: str = Field(description="The spec's name.")
    stages: list[str] = Field(description="In order: train or tune, register, serve.")
    runner: str = Field(description="Who runs a training: local | ray-train.")
    demand: Demand

    @property
    def concurrent_trials(self) -> int | None:
        """Trials at once (tuning jobs)."""
        return self.demand.concurrent_trials

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def read(cls, path: str | Path) -> RunPlan:
        """Raises: ValueError (pydantic's ValidationError) for a file that is not a plan."""
        return cls.model_validate_json(Path(path).read_text())


def plan_for(spec: PipelineSpec, cluster_total: dict[str, float]) -> RunPlan:
    """``spec`` planned for a cluster of ``cluster_total`` resources."""
    return plan_with(spec, job_demand(spec, cluster_total))


def plan_with(spec: PipelineSpec, demand: Demand) -> RunPlan:
    """``spec``'s plan with a demand decided earlier (the one a queued job was admitted for)."""
    stages = ["tune" if spec.tune is not None else "train", "register"]
    if spec.serve is not None:
        stages.append("serve")
    return RunPlan(
        pipeline=spec.name, stages=stages, runner=spec.train.resolved_runner, demand=demand
    )
