"""Serving from the ``orch`` process itself (embedded Ray) until Ctrl-C or SIGTERM.

Its own module, apart from ``orchestrator.serving``: ``orch run`` decides whether it will
serve in the foreground before anything else, and importing the serve stage (Ray Serve,
FastAPI: about 1 s here) for that would delay every run, served or not.
"""

from __future__ import annotations

import signal
import threading

from orchestrator.address import RayAddress


def in_foreground(address: RayAddress | None) -> bool:
    """Serving stays in this process (embedded Ray) unless a cluster was named
    (``address`` already reads RAY_ADDRESS: see ``orchestrator.address.given_address``)."""
    return address is None


class ForegroundServing:
    """Serving in this process until Ctrl-C or SIGTERM, then a clean Serve shutdown.

    ``arm()`` is called when the serve stage starts: from then on Ctrl-C only asks to stop,
    so an interrupt during the deploy still ends in ``wait_then_shutdown``'s clean exit
    instead of leaving Serve half deployed.
    """

    def __init__(self, *, shutdown_ray: bool = True):
        self.stop = threading.Event()
        self.shutdown_ray = shutdown_ray
        self._previous: dict = {}

    def arm(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous.setdefault(sig, signal.signal(sig, lambda *_: self.stop.set()))

    def wait_then_shutdown(self) -> None:
        import ray
        from ray import serve

        self.arm()
        try:
            while not self.stop.wait(0.5):
                pass
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            serve.shutdown()
            if self.shutdown_ray:
                ray.shutdown()
