"""The MLflow UI on the embedded store, bound to 127.0.0.1 by default (``orch ui``,
``Client.ui``).

``--read-only`` is how members of a shared queue see MLflow: the UI opens the store through
a read-only SQLite connection (``mode=ro``) and serves no artifact uploads, so nothing a
member does through it can change a run, a model or an artifact (MLflow answers a write
with an error; the database refuses it). Members reach it through an SSH tunnel, like the
queue server."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from orchestrator.exceptions import OrchestratorError, UsageError


def read_only_uri(tracking_uri: str) -> str:
    """The SQLite store ``tracking_uri`` opened read-only (SQLite refuses every write).

    Raises:
        UsageError: not a SQLite file store, or the file does not exist yet.
    """
    if not tracking_uri.startswith("sqlite:///"):
        raise UsageError(
            f"--read-only serves a SQLite store, not {tracking_uri}: a tracking server gives "
            "read-only access through its own accounts (mlflow server --app-name basic-auth "
            "with default_permission = READ)"
        )
    path = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
    if not path.is_file():
        raise UsageError(f"--read-only: no MLflow store at {path} yet (run a pipeline first)")
    return f"sqlite:///file:{path}?mode=ro&uri=true"


def ui_command(host: str = "127.0.0.1", port: int = 5000, read_only: bool = False) -> list[str]:
    """The ``mlflow ui`` command line for the embedded store and its artifacts.

    Raises:
        OrchestratorError: the ``mlflow`` command is not installed in this environment.
        UsageError: ``read_only`` on a store it cannot open read-only (``read_only_uri``).
    """
    from orchestrator.runtime import artifact_root, default_tracking_uri

    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow")
    if mlflow is None:
        raise OrchestratorError("the mlflow command is not installed in this environment")
    store = default_tracking_uri()
    if read_only:
        store = read_only_uri(store)
    return [
        mlflow, "ui",
        "--backend-store-uri", store,
        "--default-artifact-root", artifact_root().as_uri(),
        "--host", host,
        "--port", str(port),
        "--workers", "1",
        *(["--no-serve-artifacts"] if read_only else []),
    ]  # fmt: skip
