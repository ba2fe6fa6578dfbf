"""Logged and registered models read back from an MLflow store: as the ``torch.export``
program MLflow keeps (``load_model``), or as the eager ``InferenceModel`` the quantizers
need (``load_inference_model``). Neither unpickles anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from jobs.mlflow_store import mlflow_client
from jobs.model_uri import parse_models_uri
from jobs.prepared import DataInfo

if TYPE_CHECKING:
    from jobs.export import InferenceModel


def load_model(model_uri: str, tracking_uri: str):
    """Read a logged model back as a torch module (``torch.export`` program, no pickle)."""
    import tempfile

    import mlflow.pytorch

    with tempfile.TemporaryDirectory() as tmp:
        return mlflow.pytorch.load_model(_local_copy(model_uri, tracking_uri, tmp))


def _local_copy(model_uri: str, tracking_uri: str, folder: str) -> str:
    """The model's files under ``folder``, found through ``tracking_uri``'s store without
    touching MLflow's process-wide URIs (MLflow resolves a ``models:/`` URI through its
    process-wide registry URI whatever it is told, so the location is looked up here)."""
    import mlflow.artifacts

    return mlflow.artifacts.download_artifacts(
        artifact_uri=_location(mlflow_client(tracking_uri), model_uri),
        dst_path=folder,
        tracking_uri=tracking_uri,
    )


def _location(client, model_uri: str) -> str:
    """Where a ``models:/`` or ``runs:/`` model's files lie (an artifact URI)."""
    if model_uri.startswith("runs:/"):
        run_id, _, path = model_uri.removeprefix("runs:/").partition("/")
        return f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{path}"
    if not model_uri.startswith("models:/"):
        return model_uri  # already where the files are (file:, s3:, ...)
    ref = parse_models_uri(model_uri)
    if ref.logged_model_id is not None:
        return client.get_logged_model(ref.logged_model_id).artifact_location
    if ref.alias is not None:
        version = client.get_model_version_by_alias(ref.name, ref.alias)
    else:
        version = client.get_model_version(ref.name, ref.version)
    if version.model_id:  # a logged model's version (MLflow 3): its own files
        return client.get_logged_model(version.model_id).artifact_location
    return _location(client, version.source)


def load_inference_model(model_uri: str, tracking_uri: str) -> tuple[InferenceModel, DataInfo]:
    """A logged model as an eager ``InferenceModel`` (weights from the registry's pt2 file).

    Quantizers need the eager module (bf16 casts it; ONNX export traces it), which the pt2
    program alone cannot give back. The architecture comes from the run's spec
    (``best_spec.yaml`` of a study, else ``spec.yaml``) and ``data_info.json``.

    Raises:
        ValueError: the model was not logged by an orch pipeline run.
    """
    import tempfile

    import mlflow.pytorch
    import yaml

    from jobs.export import InferenceModel
    from jobs.spec import ModelSpec

    client = mlflow_client(tracking_uri)
    run_id = _run_of(client, model_uri)
    names = {a.path for a in client.list_artifacts(run_id)}
    spec_file = next((f for f in ("best_spec.yaml", "spec.yaml") if f in names), None)
    if spec_file is None or "data_info.json" not in names:
        raise ValueError(
            f"{model_uri} was not logged by an orch pipeline (its run {run_id} has no spec.yaml "
            "or data_info.json); serve a model that `orch run` registered"
        )
    with tempfile.TemporaryDirectory() as tmp:
        spec = yaml.safe_load(Path(client.download_artifacts(run_id, spec_file, tmp)).read_text())
        info = DataInfo.model_validate_json(
            Path(client.download_artifacts(run_id, "data_info.json", tmp)).read_text()
        )
        program = mlflow.pytorch.load_model(_local_copy(model_uri, tracking_uri, tmp))
    model = InferenceModel.build(ModelSpec.model_validate(spec["model"]), info)
    model.load_state_dict(program.state_dict())
    return model.eval(), info


def _run_of(client, model_uri: str) -> str:
    """The run that logged a models:/ or runs:/ URI."""
    if model_uri.startswith("runs:/"):
        return model_uri.split("/")[1]
    ref = parse_models_uri(model_uri)
    if ref.logged_model_id is not None:
        return client.get_logged_model(ref.logged_model_id).source_run_id
    if ref.alias is not None:
        return client.get_model_version_by_alias(ref.name, ref.alias).run_id
    return client.get_model_version(ref.name, ref.version).run_id
