"""The register stage: a logged model becomes a registry version, promoted by the spec's
policy; lineage comes from the run's own MLflow tags."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from orchestrator.events import Registered, StageStarted
from orchestrator.exceptions import JobFailedError
from orchestrator.spec import PipelineSpec
from orchestrator.stages.common import EventHandler, spec_hash
from serve.registry import Registry, RegistryError, decide

if TYPE_CHECKING:
    pass


class Registration(BaseModel):
    """What the register stage did (``RunResult.registered``)."""

    model_name: str
    version: str
    alias: str
    promoted: bool
    reason: str = Field(description="Why the alias moved, or why it did not.")
    model_uri: str = Field(description="models:/<name>/<version>")


def run_registration(
    spec: PipelineSpec,
    *,
    run_id: str,
    model_uri: str,
    tracking_uri: str,
    metrics: dict,
    task: str,
    on_event: EventHandler | None = None,
) -> Registration:
    """Register the run's model with lineage tags; move the alias if promote_if holds.

    Lineage comes from the run's own MLflow tags, so this stage needs only the run id.
    """
    emit = on_event or (lambda event: None)
    from jobs.models import get_entry
    from jobs.tracking import run_tags

    emit(StageStarted("register"))
    run = run_tags(run_id, tracking_uri)
    lineage = {
        "orch.pipeline": spec.name,
        "orch.spec_hash": run.get("orch.spec_hash", spec_hash(spec)),
        "orch.data_fingerprint": run.get("orch.data_fingerprint", ""),
        "orch.mlflow_run_id": run_id,
        "orch.ray_job_id": run.get("orch.ray_job_id", ""),
        "orch.trial_id": run.get("orch.best_trial_id", ""),
        "orch.study": run.get("orch.study", ""),
        "orch.user": run.get("orch.user", ""),
        "orch.team": run.get("orch.team", ""),
        "orch.model_type": spec.model.type,
    }
    # A plugin's model needs its code to load: the version says which (package, version).
    source = get_entry(spec.model.type).source
    if source is not None:
        lineage["orch.model_plugin"] = source.describe()
    name, alias = spec.registered_model_name, spec.register.alias
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    registry = Registry(tracking_uri)
    try:
        version = registry.register(model_uri, name, lineage, numeric)
        metric, mode = spec.promotion_metric(task)
        holder = registry.alias_holder(name, alias)
        current = (holder, registry.metric_of(name, holder, metric)) if holder else None
        decision = decide(spec.register.promote_if, metric, mode, numeric.get(metric), current)
        if decision.promote:
            registry.promote(name, version, alias)
    except RegistryError as exc:
        raise JobFailedError(f"{spec.name}: registering the model failed: {exc}") from None
    registration = Registration(
        model_name=name,
        version=version,
        alias=alias,
        promoted=decision.promote,
        reason=decision.reason,
        model_uri=f"models:/{name}/{version}",
    )
    emit(Registered(registration))
    return registration
