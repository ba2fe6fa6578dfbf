"""A pipeline's stages, one module each: ``train``, ``tune``, ``register`` (serving is
``orchestrator.serving``); ``common`` holds what they share."""

from orchestrator.stages.common import spec_hash
from orchestrator.stages.register import Registration, run_registration
from orchestrator.stages.train import TrainingRun, run_training
from orchestrator.stages.tune import RefitRun, StudyRun, run_study_pipeline

__all__ = [
    "RefitRun",
    "Registration",
    "StudyRun",
    "TrainingRun",
    "run_registration",
    "run_study_pipeline",
    "run_training",
    "spec_hash",
]
