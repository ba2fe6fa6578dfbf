"""The registry side of MLflow: the only module that registers, promotes and rolls back.

Every version carries lineage tags (``orch.*``) and its metrics (``metric.<name>``), so a
promotion decision and ``orch models show`` read everything from the registry itself. The
alias's past holders are kept as a registered-model tag (``orch.alias_history.<alias>``,
JSON list of versions) so that ``rollback`` can move the alias back.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

from serve.records import AliasMoved, ModelDetails, ModelVersion, RegisteredModel, VariantReport
from serve.spec import PromoteIf

METRIC_TAG = "metric."
SERVED_TAG = "orch.serve."  # + quantization: the measured serving variant (serve.variant)


class RegistryError(Exception):
    """A registry request that cannot be done as asked; the message says why."""


@dataclass
class Decision:
    promote: bool
    reason: str


def decide(
    policy: PromoteIf,
    metric: str,
    mode: str,
    value: float | None,
    current: tuple[str, float | None] | None,
) -> Decision:
    """Whether a version with ``value`` of ``metric`` takes the alias.

    Args:
        current: (version, its value) of the alias holder now, or None when none holds it.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Decision(False, f"the model has no {metric} to judge it by")
    if policy.min is not None and value < policy.min:
        return Decision(False, f"{metric} {value:.4g} is below promote_if.min {policy.min:g}")
    if policy.max is not None and value > policy.max:
        return Decision(False, f"{metric} {value:.4g} is above promote_if.max {policy.max:g}")
    if policy.better_than_current and current is not None:
        version, held = current
        if held is not None:
            better = value > held if mode == "max" else value < held
            if not better:
                return Decision(
                    False,
                    f"{metric} {value:.4g} is not better than version {version}'s {held:.4g} "
                    f"({mode} is better)",
                )
            return Decision(True, f"{metric} {value:.4g} beats version {version}'s {held:.4g}")
    return Decision(True, f"{metric} {value:.4g} meets the policy")


class Registry:
    """MLflow model registry facade (same tracking URI as the runs)."""

    def __init__(self, tracking_uri: str):
        from jobs.mlflow_store import mlflow_client

        # Downloads print a progress bar per file otherwise (into replica logs, CLI stderr).
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.tracking_uri = tracking_uri
        self.client = mlflow_client(tracking_uri)

    # ----------------------------------------------------------------- writing

    def register(self, model_uri: str, name: str, tags: dict[str, str], metrics: dict) -> str:
        """A new version of ``name`` from ``model_uri`` (a logged model's ``models:/m-...``
        or a ``runs:/`` URI); returns its version number."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

        from jobs.model_uri import parse_models_uri

        all_tags = dict(tags) | {f"{METRIC_TAG}{k}": repr(float(v)) for k, v in metrics.items()}
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:  # a later version of a known model
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        source, run_id, model_id = model_uri, None, None
        if model_uri.startswith("models:/"):  # a logged model (MLflow 3), by its id
            model_id = parse_models_uri(model_uri).logged_model_id
            # its files and run, from our store: MLflow's registry would look a models:/
            # source up through its process-wide tracking URI, whatever store this is
            logged = self.client.get_logged_model(model_id)
            source, run_id = logged.artifact_location, logged.source_run_id
        version = self.client.create_model_version(
            name, source=source, run_id=run_id, tags=all_tags, model_id=model_id
        )
        return str(version.version)

    def promote(self, name: str, version: str, alias: str) -> None:
        """Point ``alias`` at ``version`` and remember it for rollback."""
        self._version(name, version)
        self.client.set_registered_model_alias(name, alias, version)
        history = self._history(name, alias)
        if not history or history[-1] != version:
            history.append(version)
        self.client.set_registered_model_tag(
            name, f"orch.alias_history.{alias}", json.dumps(history)
        )

    def rollback(self, name: str, alias: str) -> AliasMoved:
        """Move ``alias`` back to its previous holder."""
        current = self.alias_holder(name, alias)
        history = self._history(name, alias)
        while history and history[-1] == current:
            history.pop()
        if not history:
            raise RegistryError(
                f"{name}@{alias}: no earlier version held this alias, nothing to roll back to"
            )
        previous = history[-1]
        self.client.set_registered_model_alias(name, alias, previous)
        self.client.set_registered_model_tag(
            name, f"orch.alias_history.{alias}", json.dumps(history)
        )
        return AliasMoved(name=name, alias=alias, from_version=current or "-", to_version=previous)

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, value)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str) -> None:
        self.client.log_artifact(run_id, local_path, artifact_path)

    # ----------------------------------------------------------------- reading

    def resolve(self, model_uri: str) -> tuple[str, str]:
        """models:/<name>@<alias> or models:/<name>/<version> -> (name, version)."""
        from jobs.model_uri import parse_models_uri

        try:
            ref = parse_models_uri(model_uri)
        except ValueError as exc:
            raise RegistryError(str(exc)) from None
        if ref.logged_model_id is not None:
            raise RegistryError(
                f"{model_uri!r} is a logged model, not a registered one: use "
                "models:/<name>@<alias> or models:/<name>/<version>"
            )
        name = ref.name
        if ref.alias is not None:
            alias = ref.alias
            self._model(name)
            holder = self.alias_holder(name, alias)
            if holder is None:
                raise RegistryError(
                    f"{model_uri}: no version of {name} holds alias {alias!r} (aliases: "
                    f"{', '.join(self._model(name).aliases) or 'none'}); promote one with "
                    f"`orch models promote {name} <version> --alias {alias}`"
                )
            return name, holder
        self._version(name, ref.version)
        return name, ref.version

    def version_run(self, name: str, version: str) -> str:
        return self._version(name, version).run_id

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self._version(name, version).tags)

    def download(self, run_id: str, artifact_path: str, dst: str) -> str:
        return self.client.download_artifacts(run_id, artifact_path, dst)

    def alias_holder(self, name: str, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except Exception:  # MlflowException: no such alias (or model)
            return None

    def metric_of(self, name: str, version: str, metric: str) -> float | None:
        tag = self._version(name, version).tags.get(f"{METRIC_TAG}{metric}")
        return float(tag) if tag is not None else None

    def models(self) -> list[RegisteredModel]:
        out = []
        for model in self.client.search_registered_models(max_results=1000):
            versions = self.client.search_model_versions(f"name='{model.name}'")
            out.append(
                RegisteredModel(
                    name=model.name,
                    versions=len(versions),
                    latest=max((int(v.version) for v in versions), default=0),
                    aliases={a: str(v) for a, v in model.aliases.items()},
                )
            )
        return out

    def show(self, name: str) -> ModelDetails:
        model = self._model(name)
        versions = sorted(
            self.client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)
        )
        return ModelDetails(
            name=name,
            aliases={a: str(v) for a, v in model.aliases.items()},
            versions=[_version_of(v) for v in versions],
        )

    def _model(self, name: str):
        try:
            return self.client.get_registered_model(name)
        except Exception:
            known = [m.name for m in self.client.search_registered_models(max_results=1000)]
            raise RegistryError(
                f"no registered model {name!r}; registered: {', '.join(known) or 'none yet'}"
            ) from None

    def _version(self, name: str, version: str):
        self._model(name)
        try:
            return self.client.get_model_version(name, str(version))
        except Exception:
            raise RegistryError(f"{name} has no version {version!r}") from None

    def _history(self, name: str, alias: str) -> list[str]:
        raw = self._model(name).tags.get(f"orch.alias_history.{alias}")
        return json.loads(raw) if raw else []


def _version_of(version) -> ModelVersion:
    """An MLflow model version as the registry's record: metrics, lineage, variants."""
    tags = version.tags
    return ModelVersion(
        version=str(version.version),
        run_id=version.run_id,
        source=version.source,
        created=version.creation_timestamp,
        metrics={
            k.removeprefix(METRIC_TAG): float(t)
            for k, t in tags.items()
            if k.startswith(METRIC_TAG)
        },
        tags={
            k: t for k, t in tags.items() if k.startswith("orch.") and not k.startswith(SERVED_TAG)
        },
        served_variants={
            k.removeprefix(SERVED_TAG): VariantReport.model_validate_json(t)
            for k, t in tags.items()
            if k.startswith(SERVED_TAG)
        },
    )
