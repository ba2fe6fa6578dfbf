"""Training: data, the model zoo, DeepSpeed on Ray Train, and MLflow runs."""

from jobs.data import DataInfo, PreparedData, prepare, probe
from jobs.errors import DataError, JobsError, TrainingError
from jobs.export import InferenceModel
from jobs.models import MODEL_ZOO, DataShape, ZooParams, build_layers, register_model
from jobs.spec import DataSpec, ModelSpec, TrackingSpec, TrainSpec
from jobs.trainer import TrainResult, fit

__all__ = [
    "MODEL_ZOO",
    "DataError",
    "DataInfo",
    "DataShape",
    "DataSpec",
    "InferenceModel",
    "JobsError",
    "ModelSpec",
    "PreparedData",
    "TrackingSpec",
    "TrainResult",
    "TrainSpec",
    "TrainingError",
    "ZooParams",
    "build_layers",
    "fit",
    "prepare",
    "probe",
    "register_model",
]
