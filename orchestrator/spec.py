"""The pipeline spec: the sections each package owns, composed into one document.

``jobs`` owns data, model, train and tracking; later sections (tune, register, serve,
scheduling) slot in the same way, each from the package that runs it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from jobs import plugins
from jobs.spec import (
    DataSpec,
    ModelSpec,
    TrackingSpec,
    TrainSpec,
    check_pipeline_fits_model,
)
from orchestrator.scheduling.spec import SchedulingSpec
from serve.spec import RegisterSpec, ServeSpec
from tuning.space import check_space
from tuning.spec import TRAINER_METRICS, TuneSpec, is_plugin_metric, refit_train

# "register" is a field name of the user contract; pydantic warns that it shadows ABCMeta's
# class method of that name, which instances never use.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class PipelineSpec(BaseModel):
    """One YAML document: what to train, how, and where to track it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Pipeline name: letters, digits, '-', '_', '.'; names runs and experiments.",
    )
    data: DataSpec = Field(description="Where the data comes from and how it is split.")
    model: ModelSpec = Field(description="Model zoo entry and its params.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training on Ray Train.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="MLflow tracking.")
    tune: TuneSpec | None = Field(
        None, description="Hyperparameter search over this pipeline. null = train once."
    )
    register: RegisterSpec = Field(
        default_factory=RegisterSpec,
        description="MLflow model registry: every run registers a version; the alias moves "
        "when promote_if holds.",
    )
    serve: ServeSpec | None = Field(
        None,
        description="Ray Serve HTTP application for the registered model (quantized, batched, "
        "autoscaled). null = do not serve.",
    )
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec,
        description="Priority and queue when submitted with `orch submit` (the CLI's "
        "--priority overrides).",
    )

    @model_validator(mode="after")
    def _metrics_are_reported(self) -> PipelineSpec:
        metric = self.register.promote_if.metric
        if metric is not None and metric not in TRAINER_METRICS and not is_plugin_metric(metric):
            raise ValueError(
                f"register.promote_if.metric {metric!r} is not reported by the trainer; use one "
                "of " + ", ".join(TRAINER_METRICS) + ", or a model plugin's own val_<name>"
            )
        if not plugins.is_import_path(self.model.type):  # an import path: once imported
            problem = adopt_plugin_metrics(self)
            if problem:
                raise PydanticCustomError(  # the loader places it at the field's line
                    "nested_errors",
                    "{detail}",
                    {
                        "detail": f"{'.'.join(problem.loc)}: {problem.message}",
                        "errors": [{"loc": problem.loc, "msg": problem.message, "type": "metric"}],
                    },
                )
        return self

    @property
    def registered_model_name(self) -> str:
        return self.register.model_name or self.name

    def promotion_metric(self, task: str) -> tuple[str, str]:
        """(metric, mode) that promote_if compares: explicit, else the tune metric, else the
        task's validation metric."""
        metric = self.register.promote_if.metric or (
            self.tune.metric
            if self.tune is not None
            else ("val_accuracy" if task == "classification" else "val_rmse")
        )
        if self.register.promote_if.mode is not None:
            return metric, self.register.promote_if.mode
        if self.tune is not None and metric == self.tune.metric:
            return metric, self.tune.resolved_mode
        return metric, TRAINER_METRICS[metric]

    @model_validator(mode="after")
    def _pipeline_fits_model(self) -> PipelineSpec:
        check_pipeline_fits_model(self.model, self.train)
        return self

    @model_validator(mode="after")
    def _space_fits_spec(self) -> PipelineSpec:
        """Every tune.space path exists and takes each of its values (choices, range ends)."""
        if self.tune is None:
            return self
        base = self.model_dump(mode="json", exclude={"tune"})
        problems = check_space(self.tune, base, PipelineSpec.model_validate)
        if problems:
            errors = [
                {"loc": ("tune", "space", path), "msg": message, "type": "tune_space"}
                for path, message in problems
            ]
            # The loader unfolds ctx["errors"] into one error per path.
            raise PydanticCustomError(
                "nested_errors",
                "{detail}",
                {
                    "detail": "; ".join(f"tune.space.{p}: {m}" for p, m in problems),
                    "errors": errors,
                },
            )
        return self

    @model_validator(mode="after")
    def _refit_makes_a_valid_train_section(self) -> PipelineSpec:
        if self.tune is None or self.tune.refit is None:
            return self
        try:
            refit_train(self.train.model_dump(mode="json"), self.tune.refit)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(map(str, first["loc"]))
            raise ValueError(
                f"tune.refit{'.' + where if where else ''}: {first['msg']} (tune.refit takes "
                "train settings, e.g. {workers: 2, deepspeed: {zero_stage: 2}})"
            ) from None
        return self

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name


def json_schema() -> dict:
    """JSON Schema of the spec, for editors (``orch schema``)."""
    schema = PipelineSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "orch pipeline"
    return schema


@dataclass(frozen=True)
class MetricProblem:
    """A metric the spec names that its model does not report: where, and why."""

    loc: tuple[str, ...]
    message: str


def adopt_plugin_metrics(spec: PipelineSpec) -> MetricProblem | None:
    """Check that ``tune.metric`` and ``register.promote_if.metric``, where they name a
    plugin's own metric (``val_<name>``), are ones the spec's model reports, and write the
    plugin's direction into their ``mode`` where the spec left it out. Returns the problem.

    Needs the model's plugin loaded: the spec's validation does it for the zoo and installed
    plugins; for an import path, which parsing never imports, the loader calls this once
    the data check has imported it (``orchestrator.loader.check_against_data``).
    """
    from jobs.models import get_entry

    sections = [(("tune", "metric"), spec.tune)]
    sections.append((("register", "promote_if", "metric"), spec.register.promote_if))
    asked = [
        (loc, section, section.metric)
        for loc, section in sections
        if section is not None and section.metric is not None
    ]
    if all(metric in TRAINER_METRICS for _, _, metric in asked):
        return None
    modes = get_entry(spec.model.type).metric_modes()
    for loc, section, metric in asked:
        if metric in TRAINER_METRICS:
            continue
        if metric not in modes:
            offered = ", ".join(list(TRAINER_METRICS) + sorted(modes))
            message = f"{metric!r} is not reported by model {spec.model.type!r}; use one of "
            return MetricProblem(loc, message + offered)
        if section.mode is None:
            section.mode = modes[metric]
    return None
