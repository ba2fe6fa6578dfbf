"""Ray Train's TorchTrainer without the Ray Data actor a run on in-memory splits never uses.

Every ``fit()`` of Ray Train 2.60 starts a ``DatasetManager`` actor (its own process:
Python, Ray, Ray Data; about 2.7 s of CPU) even when no Ray Dataset is passed, and it
starts while the workers import torch and DeepSpeed, so on 2 cores it delays them. Splits
small enough for the object store (``jobs.splits.fits_in_memory``) reach the workers
through ``train_loop_config``; for those runs this trainer leaves out the callback that
starts the actor. Runs that stream through Ray Data keep it.

This reaches into Ray Train's private callback list on purpose, and is the only module
that touches Ray Train's private names (tests/test_private_names.py checks that):
tests/jobs/test_startup.py fails on the Ray upgrade that moves or renames what it relies
on, before the cost comes back unnoticed.
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback


class InMemoryDataTorchTrainer(TorchTrainer):
    """A ``TorchTrainer`` that starts no Ray Data actor when it is given no datasets."""

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [callback for callback in callbacks if not isinstance(callback, DatasetsCallback)]
