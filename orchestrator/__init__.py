"""Orchestrator: the pipeline spec, the ``orch`` CLI, the Python SDK and the job queue.

from orchestrator import Client
result = Client().run("examples/digits.yaml")            # run now, in this process
print(result.metrics["val_accuracy"], result.mlflow_run_id)

job = Client("http://127.0.0.1:8265").submit("examples/digits.yaml", priority="high")
job.wait(timeout=600); print(job.status, job.result().metrics)   # through the queue

Names are imported on first use, so ``orch submit`` and ``orch queue`` start in a fraction
of a second instead of loading torch, Ray Train and MLflow.
"""

from importlib import import_module

_EXPORTS = {
    "Client": "orchestrator.client",
    "RunResult": "orchestrator.results",
    "ClusterError": "orchestrator.exceptions",
    "JobFailedError": "orchestrator.exceptions",
    "OrchestratorError": "orchestrator.exceptions",
    "SpecError": "orchestrator.exceptions",
    "load_spec": "orchestrator.loader",
    "PipelineSpec": "orchestrator.spec",
    "json_schema": "orchestrator.spec",
    "QueueClient": "orchestrator.queue_client",
    "Job": "orchestrator.queue_client",
    "JobInfo": "orchestrator.scheduling.record",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
