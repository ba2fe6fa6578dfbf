"""A run's outcome as a file: what ``orch run --result-file`` writes and the queue reads.

The queue used to find a job's ``RunResult`` (or its error) by scanning the Ray job's log
for the last JSON line, which one stray line from a library could break. Now every attempt
the queue starts is told where to put its outcome, and writes it there whole (a temporary
file moved into place): a reader sees the complete document or none. The document is the
one ``orch run --json`` prints: the ``RunResult``, or ``{"status": "failed", "error": ...}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_outcome(path: str | Path, document: str) -> None:
    """Put ``document`` (JSON text) at ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    staging.write_text(document)
    os.replace(staging, target)


def read_outcome(path: str | Path) -> dict | None:
    """The outcome at ``path``; None when the run wrote none (it was killed, or it ran
    before result files existed) or the file is not a JSON object."""
    try:
        outcome = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return outcome if isinstance(outcome, dict) else None
