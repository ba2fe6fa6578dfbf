"""What the serve stage leaves (``RunResult.served``), importable without Ray Serve.

``orch run`` of a spec without a serve section never imports Ray Serve or FastAPI; the
result type it returns still names this class.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from serve.records import VariantReport


class ServeResult(BaseModel):
    """What the serve stage deployed (``RunResult.served``; ``orch serve --json``)."""

    app: str
    endpoint: str | None = Field(
        description="http://host:port/<name>; POST <endpoint>/predict. None with --emit-config."
    )
    v2: str | None = Field(description="Open Inference Protocol v2 base URL (…/v2).")
    grpc: str | None = Field(
        None,
        description="host:port of the v2 gRPC service (metadata application: orch-v2); "
        "None without serve.grpc_port.",
    )
    model_name: str
    versions: dict[str, str] = Field(description="alias (or 'model') -> version served")
    variants: list[VariantReport]
    config_path: str | None = None
    ingress: str | None = Field(
        None, description="How Serve takes HTTP there: haproxy | proxy (Ray's Python proxy)."
    )
