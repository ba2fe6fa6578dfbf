"""The MLflow UI on the embedded store, bound to 127.0.0.1 by default (``orch ui``,
``Client.ui``)."""

from __future__ import annotations

import os
import shutil
import sys

from orchestrator.exceptions import OrchestratorError


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line for the embedded store and its artifacts.

    Raises:
        OrchestratorError: the ``mlflow`` command is not installed in this environment.
    """
    from orchestrator.runtime import artifact_root, default_tracking_uri

    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow")
    if mlflow is None:
        raise OrchestratorError("the mlflow command is not installed in this environment")
    return [
        mlflow, "ui",
        "--backend-store-uri", default_tracking_uri(),
        "--default-artifact-root", artifact_root().as_uri(),
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
