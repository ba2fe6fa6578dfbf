"""The actor a single-worker ``orch run`` trains in, startable before the driver imports torch.

This module imports neither torch nor DeepSpeed: the driver starts the actor as soon as it is
connected, so the actor's process start and its torch and DeepSpeed imports (several seconds
on 2 cores) run while the driver is still importing its own and setting up MLflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobs.prepared import TrainingData
    from jobs.spec import TrainSpec
    from jobs.worker import LoopConfig


class LocalWorker:
    """The Ray actor that runs a single-worker ``orch run`` (one per run attempt)."""

    def __init__(self):
        from jobs.worker import import_deepspeed, select_accelerator

        select_accelerator()
        import_deepspeed()
        # A torch optimizer's constructor imports torch._dynamo (about 1.5 s): here, while
        # the driver is still setting up MLflow, rather than once the run has been handed over.
        import torch._dynamo  # noqa: F401

    def run(self, job: LoopConfig, data: TrainingData, run_dir: str, events, run_key: str):
        from jobs.local import run_standalone

        return run_standalone(job, data, run_dir, events, run_key)


def start_local_worker(train: TrainSpec, data_cpus: float = 0.0):
    """A ``LocalWorker`` actor holding one worker's ``resources_per_worker``, less the CPU
    its streamed data's Ray Data tasks take (``data_cpus``)."""
    import ray

    resources = dict(train.resources_per_worker)
    if data_cpus:
        resources["CPU"] = resources.get("CPU", 1.0) - data_cpus
    return (
        ray.remote(LocalWorker)
        .options(
            num_cpus=resources.pop("CPU", 0),
            num_gpus=resources.pop("GPU", 0),
            resources=resources or None,
            max_restarts=0,
            max_task_retries=0,
        )
        .remote()
    )
