"""The runs side of MLflow (its epoch writes are ``jobs.outbox``; reading models back is
``jobs.model_loading``; every client comes from ``jobs.mlflow_store``).

One MLflow run per training: the flattened spec as params, per-epoch metrics, the resolved
spec as an artifact, and the consolidated model (``pt2`` format: torch.export, loads
without unpickling) with its signature and an input example.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jobs.mlflow_fluent import fluent_calls
from jobs.mlflow_store import mlflow_client
from jobs.outbox import Outbox
from jobs.prepared import DataInfo

if TYPE_CHECKING:  # torch (about 2 s): a driver imports it while it waits for training
    from jobs.export import InferenceModel

MODEL_ARTIFACT = "model"

_export_warm_up: threading.Thread | None = None


def warm_up_export() -> None:
    """Pay a model save's first-use costs on a thread, while the driver waits for training;
    ``log_model`` waits for it to end.

    A process's first ``mlflow.pytorch.save_model`` costs about 2.5 s here: torch.export's
    first use (importing torch._dynamo, its lazy set-up) and MLflow's map of installed
    packages (built once per process to check the model's requirements). Saving a tiny
    module once, through the same public call, makes ``log_model`` pay only its own model.
    Once per process.
    """
    global _export_warm_up
    if _export_warm_up is None:
        _export_warm_up = threading.Thread(
            target=_save_once, name="orch-export-warm-up", daemon=True
        )
        _export_warm_up.start()


def _save_once() -> None:
    import mlflow.pytorch
    import torch

    _quiet_requirement_checks()
    try:
        with tempfile.TemporaryDirectory(prefix="orch-warm-up-") as tmp:
            mlflow.pytorch.save_model(
                torch.nn.Linear(2, 2),
                f"{tmp}/model",
                serialization_format="pt2",
                input_example=np.zeros((2, 2), dtype=np.float32),
                pip_requirements=[_torch_requirement()],
            )
    except Exception:  # a warm-up only: log_model reports what really fails
        logging.getLogger(__name__).debug("model save warm-up failed", exc_info=True)


def _torch_requirement() -> str:
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


def _quiet_requirement_checks() -> None:
    # "torch 2.13.0+cpu has a local version label" is noise for every CPU install.
    logging.getLogger("mlflow.utils.requirements_utils").setLevel(logging.ERROR)


def _export_warmed_up() -> None:
    if _export_warm_up is not None:
        _export_warm_up.join()


def _metric_batch(metrics: dict, step: int) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, int | float)
    ]


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{"train": {"optimizer": {"lr": 0.1}}} -> {"train.optimizer.lr": "0.1"}."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = json.dumps(value) if not isinstance(value, str) else value
    return flat


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3.17's UI opens an experiment without this tag on its GenAI "Overview" (traces),
where none of our runs show; with it, the experiment opens on its training runs."""


def ensure_experiment(client, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if missing, tagged as model training.

    Every experiment orch logs to goes through here. A kind already set (by the user, or
    ``genai_development`` for a shared experiment) is left alone.

    Args:
        client: an ``mlflow.MlflowClient`` for the tracking URI.
        name: the experiment's name.
        artifact_location: where a new experiment keeps its artifacts (None: the server's
            default); an existing experiment keeps its own.

    Returns:
        The experiment id.
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=artifact_location,
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException:  # another run created it since the lookup
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


class RunTracker:
    """Context manager around one MLflow run; the run ends FAILED if the block raises."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str | None = None):
        import mlflow

        self._mlflow = mlflow
        self.client = mlflow_client(tracking_uri)
        self.tracking_uri = tracking_uri
        location = (
            f"{Path(artifact_root).resolve().as_uri()}/{experiment}" if artifact_root else None
        )
        self.experiment_id = ensure_experiment(self.client, experiment, artifact_location=location)
        self.run_id: str | None = None

    def start(self, run_name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        return self.run_id

    def reopen(self, run_id: str) -> str:
        """Continue an existing run (a resumed study): it is RUNNING again."""
        self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        return run_id

    def child(self) -> RunTracker:
        """A tracker for another run in the same experiment, sharing this one's client."""
        other = object.__new__(RunTracker)
        other._mlflow, other.client = self._mlflow, self.client
        other.tracking_uri, other.experiment_id, other.run_id = (
            self.tracking_uri,
            self.experiment_id,
            None,
        )
        return other

    def find_runs(self, tags: dict[str, str]) -> list[str]:
        """Ids of this experiment's runs carrying all of ``tags``."""
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000)
        return [run.info.run_id for run in runs]

    def end(self, status: str) -> None:
        """FINISHED | FAILED | KILLED."""
        self.client.set_terminated(self.run_id, status)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, local_path, artifact_path)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        """A folder's files under ``artifact_path`` (e.g. a profile's trace and tables)."""
        self.client.log_artifacts(self.run_id, local_dir, artifact_path)

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FAILED" if exc_type else "FINISHED")

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.client.log_batch(self.run_id, metrics=_metric_batch(metrics, step))

    def outbox(self) -> Outbox:
        """Background writes for this run (epoch metrics during training)."""
        if getattr(self, "_outbox", None) is None:
            self._outbox = Outbox(self.client, self.run_id)
        return self._outbox

    def log_metrics_later(self, metrics: dict, step: int) -> None:
        """Queue epoch metrics with their time now; written in order when MLflow answers."""
        self.outbox().put(metrics=_metric_batch(metrics, step))

    def set_tags_later(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.outbox().put(tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def flush(self, timeout_s: float = 600.0) -> None:
        """Wait for the queued writes.

        Raises:
            ConnectionError: MLflow did not take them within ``timeout_s`` (its last error).
        """
        box = getattr(self, "_outbox", None)
        if box is not None and not box.flush(timeout_s):
            raise ConnectionError(
                f"MLflow at {self.tracking_uri} did not accept the run's metrics within "
                f"{timeout_s:.0f} s: {box.last_error}"
            )

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_model(self, model: InferenceModel, info: DataInfo, example: np.ndarray) -> str:
        """Log the plain torch model; returns its ``runs:/`` URI."""
        _export_warmed_up()  # no two exports at once
        import mlflow
        import mlflow.pytorch
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        outputs = (-1, info.n_outputs) if info.task == "classification" else (-1,)
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, info.n_features))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), outputs)]),
        )
        _quiet_requirement_checks()
        with fluent_calls(self.tracking_uri), mlflow.start_run(run_id=self.run_id):
            logged = mlflow.pytorch.log_model(
                model,
                name=MODEL_ARTIFACT,
                signature=signature,
                input_example=example.astype(np.float32),
                serialization_format="pt2",
                # Inferring requirements runs a subprocess that imports the model (~7 s).
                pip_requirements=[_torch_requirement()],
                metadata={
                    "task": info.task,
                    "classes": info.classes,
                    "feature_names": info.feature_names,
                },
            )
            self.client.log_text(self.run_id, info.model_dump_json(indent=2), "data_info.json")
        return logged.model_uri


def run_tags(run_id: str, tracking_uri: str) -> dict[str, str]:
    """The tags of a run (what a later stage reads of an earlier one)."""
    return dict(mlflow_client(tracking_uri).get_run(run_id).data.tags)
