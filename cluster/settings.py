"""What every deployment of orch shares: image, ports, environment, entrypoint, head services.

The launcher YAMLs (``cluster/launcher/``) and the KubeRay manifests (``cluster/kuberay/``)
are written by hand for people to read and edit; ``tests/cluster/test_configs.py`` checks
them against these values, so a port or an entrypoint cannot drift from the code.
"""

from __future__ import annotations

RAY_VERSION = "2.60.0"
IMAGE = "ghcr.io/orch-platform/orch:0.1.0"  # built by cluster/Dockerfile
PORTS = {"gcs": 6379, "dashboard": 8265, "serve": 8000, "mlflow": 5000}
DATA_DIR = "/data/orch"
# The environment of every Ray container/node: token auth on, the embedded state on the
# head's volume, MLflow on the head (job drivers run on the head, so 127.0.0.1 reaches it).
ENV = {
    "RAY_AUTH_MODE": "token",
    "ORCH_HOME": DATA_DIR,
    "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{PORTS['mlflow']}",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Serve's ingress: HAProxy on each node in front of the replicas' own ports (README,
    # "Serving ingress"); it must be in the Ray processes' environment before Serve starts
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
}
# What a pipeline job runs (as under `ray job submit --`).
ENTRYPOINT = "python -m orchestrator run"
# The MLflow server on the head: loopback only, one worker, no job execution (0.5 GiB), with
# accounts (MLflow's basic-auth app). cluster/mlflow_auth.py makes its secrets at first boot
# in MLFLOW_AUTH_DIR (0700, files 0600: the admin's password, never one from the repository)
# and writes the admin's client login there, which the head links as ~/.mlflow/credentials.
MLFLOW_AUTH_DIR = f"{DATA_DIR}/mlflow-auth"
MLFLOW_SERVER = (
    f"python -m cluster.mlflow_auth --dir {MLFLOW_AUTH_DIR} -- "
    f"mlflow server --app-name basic-auth --host 127.0.0.1 --port {PORTS['mlflow']} --workers 1 "
    f"--backend-store-uri sqlite:///{DATA_DIR}/mlflow.db "
    f"--artifacts-destination {DATA_DIR}/mlartifacts"
)
# Run on the head before anything logs to MLflow: MLflow's client there (the queue server,
# its jobs, `orch users add`) then logs in as the admin with nothing in its environment.
MLFLOW_CREDENTIALS_LINK = (
    f"mkdir -p ~/.mlflow && ln -sfn {MLFLOW_AUTH_DIR}/credentials ~/.mlflow/credentials"
)
