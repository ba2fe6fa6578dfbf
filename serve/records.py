"""What the model registry holds, as typed records: registered models, their versions, an
alias moved, and the report of a served variant. Light to import (pydantic only): the
CLI, the SDK, the queue server and ``RunResult`` read them without Serve, torch or ONNX.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class VariantReport(BaseModel):
    """What a served variant is and how it measured (logged on the model version)."""

    model_name: str
    version: str
    quantization: str
    runtime: str = Field(description="onnxruntime | torch")
    run_id: str = Field(description="The version's MLflow run, which holds the file.")
    artifact_path: str = Field(description="The file, relative to the run's artifacts.")
    size_bytes: int
    fp32_size_bytes: int
    metric: str = Field(description="val_accuracy (classification) or val_rmse (regression).")
    value: float = Field(description="The variant's metric on the validation split.")
    fp32_value: float = Field(description="The float32 model's metric on the same rows.")
    drop: float = Field(
        description="Accuracy lost (classification) or relative RMSE increase (regression)."
    )
    latency_ms_batch_1: float
    latency_ms_max_batch: float
    max_batch_size: int
    calibration_samples: int | None = None
    fallback: str | None = Field(
        None,
        description="Why the model serves in PyTorch float32 instead of as asked (ONNX could "
        "not export it); None when it serves as asked.",
    )

    @property
    def served_quantization(self) -> str:
        """What the replicas run: the asked quantization, or ``none`` after a fallback."""
        return "none" if self.fallback else self.quantization

    def describe_fallback(self) -> str | None:
        """One line for the terminal and the run's result, or None."""
        if self.fallback is None:
            return None
        skipped = "" if self.quantization == "none" else f"; {self.quantization} skipped"
        return (
            f"{self.model_name} v{self.version}: {self.fallback}, so it serves in PyTorch "
            f"float32 (a torch.export program){skipped}. Export-friendly operators in the "
            "model bring ONNX Runtime and int8 back"
        )


class RegisteredModel(BaseModel):
    """One registered model (``orch models list``, ``Client.list_models``)."""

    name: str
    versions: int = Field(description="How many versions it has.")
    latest: int = Field(description="Its newest version.")
    aliases: dict[str, str] = Field(description="Alias -> the version holding it.")


class ModelVersion(BaseModel):
    """One version of a registered model: where it came from and how it measured."""

    version: str
    run_id: str | None = Field(description="The MLflow run that logged it.")
    source: str = Field(description="Where its files are.")
    created: int = Field(description="Registered at (milliseconds since the epoch).")
    metrics: dict[str, float] = Field(description="Its final metrics (tags metric.<name>).")
    tags: dict[str, str] = Field(description="Its lineage: orch.* tags.")
    served_variants: dict[str, VariantReport] = Field(
        description="Quantization -> the variant measured and logged when it was served."
    )


class ModelDetails(BaseModel):
    """A registered model with its aliases and every version (``orch models show``)."""

    name: str
    aliases: dict[str, str]
    versions: list[ModelVersion]


class AliasMoved(BaseModel):
    """An alias moved by hand: ``promote`` or ``rollback`` (``from`` is ``-`` for none)."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    name: str
    alias: str
    from_version: str = Field(alias="from")
    to_version: str = Field(alias="to")
