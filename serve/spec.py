"""The ``register`` section: where a pipeline's model lands in the MLflow registry, and when
its alias moves to it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromoteIf(_Section):
    """When the alias moves to a newly registered version."""

    metric: str | None = Field(
        None,
        description="Metric compared (the model's final metrics). null = the tune metric, "
        "else val_accuracy (classification) or val_rmse (regression).",
    )
    mode: Literal["max", "min"] | None = Field(
        None, description="max | min: which way is better. null = the metric's natural direction."
    )
    min: float | None = Field(
        None, description="The metric must be at least this. null = no floor."
    )
    max: float | None = Field(
        None, description="The metric must be at most this (for losses). null = no ceiling."
    )
    better_than_current: bool = Field(
        True, description="Also require beating the version that holds the alias now."
    )

    @model_validator(mode="after")
    def _range(self) -> PromoteIf:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max}); no model could pass")
        return self


class RegisterSpec(_Section):
    """Every run registers a model version; the alias moves only when ``promote_if`` holds."""

    model_name: str | None = Field(
        None, pattern=_NAME, description="Registered model name. null = the pipeline name."
    )
    alias: str = Field(
        "champion",
        pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$",
        description="Alias that serving follows (models:/<name>@<alias>).",
    )
    promote_if: PromoteIf = Field(
        default_factory=PromoteIf, description="Promotion policy for the alias."
    )
