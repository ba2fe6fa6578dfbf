"""The ``register`` section: where a pipeline's model lands in the MLflow registry, and when
its alias moves to it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

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


_MODEL_URI = r"^models:/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(@[A-Za-z][A-Za-z0-9_-]{0,63}|/[0-9]+)$"
_ALIAS = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


class BatchingSpec(_Section):
    """Dynamic batching of concurrent requests (``@serve.batch``)."""

    max_batch_size: int = Field(
        32, ge=1, le=4096, description="Most requests run through the model in one call."
    )
    batch_wait_timeout_s: float = Field(
        0.005,
        ge=0.0,
        le=10.0,
        description="How long the first request of a batch waits for others to join, when "
        "other requests are in the replica; a request alone runs at once. "
        "0 with max_batch_size 1 = no batching.",
    )


class AutoscalingSpec(_Section):
    """Ray Serve ``autoscaling_config``: replicas follow the number of ongoing requests."""

    min_replicas: int = Field(1, ge=1, description="Replicas kept even when idle.")
    max_replicas: int = Field(2, ge=1, description="Most replicas under load.")
    target_ongoing_requests: float = Field(
        8, gt=0, description="Ongoing requests per replica the autoscaler aims for."
    )
    upscale_delay_s: float = Field(
        10.0, ge=0, description="Load must last this long before a replica is added."
    )
    downscale_delay_s: float = Field(
        60.0, ge=0, description="Idleness must last this long before a replica is removed."
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self


class AuthSpec(_Section):
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of an environment variable holding the bearer key clients must send "
        "(Authorization: Bearer <key>). null = no key. Only its SHA-256 reaches the cluster.",
    )


def quantizations() -> list[str]:
    """The registered quantizations (``serve.quantize.QUANTIZERS``): one decorated function
    adds one to the spec and its JSON Schema."""
    from serve.quantize import QUANTIZERS

    return list(QUANTIZERS)


class ServeSpec(_Section):
    """Ray Serve application for the pipeline's model: ``/<name>/predict`` and OIP v2."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Serve application name and HTTP route prefix (/<name>); lower case.",
    )
    model: str | None = Field(
        None,
        pattern=_MODEL_URI,
        description="Registry URI models:/<name>@<alias> or models:/<name>/<version>. "
        "null = models:/<register.model_name>@<register.alias>.",
    )
    quantization: str = Field(
        "none",
        description="none (fp32, ONNX Runtime) | dynamic-int8 | static-int8 (ONNX Runtime) | "
        "bf16 (torch); any other registered with serve.quantize.quantizer.",
        json_schema_extra=lambda schema: schema.update(enum=quantizations()),
    )

    @field_validator("quantization")
    @classmethod
    def _registered(cls, value: str) -> str:
        known = quantizations()
        if value not in known:
            expected = ", ".join(repr(q) for q in known[:-1]) + f" or {known[-1]!r}"
            raise PydanticCustomError(
                "literal_error", "Input should be {expected}", {"expected": expected}
            )
        return value

    calibration_samples: int = Field(
        512, ge=1, description="static-int8: training rows used to calibrate activations."
    )
    max_accuracy_drop: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Deploy stops if the quantized model's validation accuracy is this much "
        "below fp32's (regression: relative increase of RMSE).",
    )
    batching: BatchingSpec = Field(default_factory=BatchingSpec, description="Dynamic batching.")
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec, description="Replica autoscaling."
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one replica works on at once (caps batch size too)."
    )
    max_queued_requests: int = Field(
        256,
        ge=1,
        description="Requests waiting for a replica; beyond this clients get 503 + Retry-After.",
    )
    traffic: dict[str, int] | None = Field(
        None,
        description="Split requests between aliases of the model by percent, e.g. "
        "{champion: 90, challenger: 10}. null = all to `model`.",
    )
    auth: AuthSpec = Field(default_factory=AuthSpec, description="Bearer-key authentication.")
    host: str = Field("127.0.0.1", description="Serve HTTP bind address.")
    port: int = Field(8000, ge=1, le=65535, description="Serve HTTP port.")
    grpc_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve gRPC port for the Open Inference Protocol v2 service (KServe and "
        "Triton's GRPCInferenceService; clients send metadata application: orch-v2), on "
        "serve.host. null = no gRPC. Needs auth.api_key_env: Ray opens each replica's gRPC "
        "port on every interface, so the key guards it. Like port, it is the cluster's: "
        "the first pipeline served sets it.",
    )
    cpus_per_replica: float = Field(
        1.0, gt=0, description="CPUs reserved per replica (also its inference threads)."
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body accepted; larger gets 413."
    )

    @model_validator(mode="after")
    def _cross_fields(self) -> ServeSpec:
        if self.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) is below "
                f"batching.max_batch_size ({self.batching.max_batch_size}): batches could "
                "never fill; raise max_ongoing_requests"
            )
        if self.grpc_port is not None:
            if self.grpc_port == self.port:
                raise ValueError(f"grpc_port and port are both {self.port}; give gRPC its own")
            if self.auth.api_key_env is None:
                raise ValueError(
                    "grpc_port needs auth.api_key_env: in Ray 2.60 each replica's gRPC server "
                    "listens on every interface, and the bearer key is what keeps others out; "
                    "set auth: {api_key_env: MY_KEY_VAR} or drop grpc_port"
                )
        if self.traffic is not None:
            import re

            bad = [a for a in self.traffic if not re.match(_ALIAS, a)]
            if bad:
                raise ValueError(f"traffic: {bad[0]!r} is not an alias name")
            if len(self.traffic) < 2:
                raise ValueError("traffic splits between at least two aliases; null = no split")
            if any(p < 0 for p in self.traffic.values()) or sum(self.traffic.values()) != 100:
                raise ValueError(
                    f"traffic percentages must be >= 0 and add up to 100, got {self.traffic}"
                )
            if self.model is not None and "@" not in self.model and "/" in self.model[8:]:
                raise ValueError(
                    "traffic splits between aliases; give model as models:/<name>@<alias> "
                    "(or null), not a version"
                )
        return self

    def model_uri(self, registered_name: str, alias: str) -> str:
        return self.model or f"models:/{registered_name}@{alias}"
