"""Training: data, the model zoo, DeepSpeed on Ray Train, and MLflow runs.

Names are imported on first use: the spec sections (``jobs.spec``) and the zoo's params
must load without torch or Ray, so that ``orch validate`` answers at editor speed.
"""

from importlib import import_module

_EXPORTS = {
    "DataInfo": "jobs.prepared",
    "PreparedData": "jobs.prepared",
    "prepare": "jobs.data",
    "probe": "jobs.data",
    "DataError": "jobs.errors",
    "Diverged": "jobs.events",
    "EpochEnded": "jobs.events",
    "TrainingEvent": "jobs.events",
    "TrainingWarning": "jobs.events",
    "WorkerStarted": "jobs.events",
    "JobsError": "jobs.errors",
    "TrainingError": "jobs.errors",
    "InferenceModel": "jobs.export",
    "MODEL_ZOO": "jobs.models",
    "DataShape": "jobs.models",
    "ZooParams": "jobs.models",
    "build_layers": "jobs.models",
    "build_network": "jobs.models",
    "get_entry": "jobs.models",
    "model_plugin": "jobs.plugins",
    "PluginMetric": "jobs.plugins",
    "register_model": "jobs.models",
    "DataSpec": "jobs.spec",
    "ModelSpec": "jobs.spec",
    "TrackingSpec": "jobs.spec",
    "TrainSpec": "jobs.spec",
    "TrainResult": "jobs.trainer",
    "TrainingRuntime": "jobs.runtime",
    "fit": "jobs.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jobs' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
