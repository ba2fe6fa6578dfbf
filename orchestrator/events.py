"""The pipeline's own events, beside the trainer's (``jobs.events``) and the study's
(``tuning.events``): which stage starts, where the cluster's dashboard is, what the serve
stage measured and deployed, what the register stage did. Every one is a
``jobs.events.Event``: match on the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from jobs.events import Event

if TYPE_CHECKING:
    from orchestrator.serve_result import ServeResult
    from serve.records import VariantReport


@dataclass(frozen=True)
class StageStarted(Event):
    """A stage begins: data, connect, train, tune, refit, log_model, register, quantize,
    serve. The fields a stage has are set; the others stay None."""

    kind: ClassVar[str] = "stage"

    stage: str
    mlflow_run_id: str | None = None
    epochs: int | None = None  # train, refit
    study: str | None = None  # tune
    resumed: bool | None = None  # tune
    model: str | None = None  # quantize: "<name>/<version>"


@dataclass(frozen=True)
class ClusterFound(Event):
    """Ray is connected: where its dashboard is, and the file holding the token it asks for."""

    kind: ClassVar[str] = "cluster"

    dashboard_url: str | None
    token_path: str | None


@dataclass(frozen=True)
class VariantMeasured(Event):
    """The serve stage built and measured a quantized variant (it passed the gate)."""

    kind: ClassVar[str] = "variant"

    report: VariantReport


@dataclass(frozen=True)
class Served(Event):
    """The serve stage deployed the application."""

    kind: ClassVar[str] = "served"

    result: ServeResult


@dataclass(frozen=True)
class Registered(Event):
    """The register stage registered a version (and moved the alias or not)."""

    kind: ClassVar[str] = "registered"

    registration: Any  # orchestrator.stages.Registration (whose stage imports this module)


PipelineEvent = StageStarted | ClusterFound | VariantMeasured | Served | Registered
