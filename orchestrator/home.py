"""Where orch keeps its embedded state: one definition of ORCH_HOME.

Its own module, importing nothing of ours, so that the address parser, the runtime and the
queue client all read it without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path


def orch_home() -> Path:
    """Root of the embedded state: $ORCH_HOME, else ./.orch in the working directory."""
    return Path(os.environ.get("ORCH_HOME") or Path.cwd() / ".orch").resolve()
