"""Orchestrator: the pipeline spec, the ``orch`` CLI and the Python SDK.

from orchestrator import Client
result = Client().run("examples/digits.yaml")
print(result.metrics["val_accuracy"], result.mlflow_run_id)
"""

from orchestrator.client import Client, RunResult
from orchestrator.exceptions import (
    ClusterError,
    JobFailedError,
    OrchestratorError,
    SpecError,
)
from orchestrator.loader import load_spec
from orchestrator.spec import PipelineSpec, json_schema

__all__ = [
    "Client",
    "ClusterError",
    "JobFailedError",
    "OrchestratorError",
    "PipelineSpec",
    "RunResult",
    "SpecError",
    "json_schema",
    "load_spec",
]
