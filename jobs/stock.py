"""``ORCH_STOCK_DEEPSPEED=1``: train with DeepSpeed and torch as they come.

The training step is tuned here (``jobs.worker``: DDP's overlapped all-reduce at ZeRO-0,
bf16 as autocast at ZeRO-0, ZeRO options for gloo; ``jobs.schedule``: fused Adam). With
this variable set in the workers' environment none of that applies: ``make bench``
measures before and after in one run with it, and a user who suspects the tuning of a
wrong result can rule it out. Gradient clipping follows the spec either way (0 = off).
"""

from __future__ import annotations

import os

STOCK_ENV = "ORCH_STOCK_DEEPSPEED"


def stock_deepspeed() -> bool:
    """Whether this process trains without the step tuning."""
    return os.environ.get(STOCK_ENV, "") not in ("", "0")
