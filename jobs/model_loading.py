"""Logged and registered models read back from an MLflow store: as the ``torch.export``
program MLflow keeps (``load_model``), or as the eager ``InferenceModel`` the quantizers
need (``load_inference_model``). Neither unpickles anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from jobs.mlflow_fluent import fluent_calls
from jobs.mlflow_store import mlflow_client
from jobs.model_uri import parse_models_uri
from jobs.prepared import DataInfo

if TYPE_CHECKING:
    from jobs.export import InferenceModel


def load_model(model_uri: str, tracking_uri: str):
    """Read a logged model back as a torch module (``torch.export`` program, no pickle)."""
    import mlflow.pytorch

    with fluent_calls(tracking_uri):
        return mlflow.pytorch.load_model(model_uri)


def load_inference_model(model_uri: str, tracking_uri: str) -> tuple[InferenceModel, DataInfo]:
    """A logged model as an eager ``InferenceModel`` (weights from the registry's pt2 file).

    Quantizers need the eager module (bf16 casts it; ONNX export traces it), which the pt2
    program alone cannot give back. The architecture comes from the run's spec
    (``best_spec.yaml`` of a study, else ``spec.yaml``) and ``data_info.json``.

    Raises:
        ValueError: the model was not logged by an orch pipeline run.
    """
    import tempfile

    import mlflow
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
    model = InferenceModel.build(ModelSpec.model_validate(spec["model"]), info)
    with fluent_calls(tracking_uri):
        program = mlflow.pytorch.load_model(model_uri)
    model.load_state_dict(program.state_dict())
    return model.eval(), info


def _run_of(client, model_uri: str) -> str:
    """The run that logged a models:/ or runs:/ URI."""
    if model_uri.startswith("runs:/"):
        return model_uri.split("/")[1]
    ref = parse_models_uri(model_uri)
    if ref.alias is not None:
        return client.get_model_version_by_alias(ref.name, ref.alias).run_id
    return client.get_model_version(ref.name, ref.version).run_id
