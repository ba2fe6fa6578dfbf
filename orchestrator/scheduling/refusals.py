"""Warnings about calls the queue's API refused without writing anything: rate-limited.

A call without a valid token leaves no audit row (a flood of them would fill the disk), only
a log line, and the lines are limited too: at most one per source address every
``quiet_s`` seconds, and at most ``burst`` in any ``quiet_s`` overall (a caller on the head
can send from any of 2**24 loopback addresses). The next line written says how many were
held back since the one before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RefusalLog:
    """Rate-limited warnings about refused calls, one ``logging`` line at a time.

    Args:
        logger: where the lines go (a warning each).
        quiet_s: seconds between two lines about one address, and the window ``burst``
            counts in.
        burst: lines at most in any ``quiet_s``, all addresses together.
        remember: addresses kept at most (the ones quiet for ``quiet_s`` are forgotten
            first, then all: the ``burst`` cap still holds).
        clock: monotonic seconds (a test's clock).
    """

    def __init__(
        self,
        logger: logging.Logger,
        quiet_s: float = 10.0,
        burst: int = 10,
        remember: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._logger = logger
        self._quiet_s, self._burst, self._remember, self._clock = quiet_s, burst, remember, clock
        self._lock = threading.Lock()
        self._last_line: dict[str, float] = {}  # address -> when its last line was written
        self._window: tuple[float, int] = (float("-inf"), 0)  # its start, lines in it
        self._held_back = 0

    def refused(self, address: str, what: str) -> bool:
        """Note one refused call from ``address``; ``what`` says which and why.

        Returns:
            True when a line was written, False when it was held back (and counted).
        """
        now = self._clock()
        with self._lock:
            start, lines = self._window
            if now - start >= self._quiet_s:
                start, lines = now, 0
            if now - self._last_line.get(address, float("-inf")) < self._quiet_s or (
                lines >= self._burst
            ):
                self._held_back += 1
                return False
            held_back, self._held_back = self._held_back, 0
            self._window = (start, lines + 1)
            self._forget_quiet(now)
            self._last_line[address] = now
        more = f" ({held_back} more refused since the last such line)" if held_back else ""
        self._logger.warning("refused %s from %s%s", what, address, more)
        return True

    def _forget_quiet(self, now: float) -> None:
        if len(self._last_line) < self._remember:
            return
        for address, at in list(self._last_line.items()):
            if now - at >= self._quiet_s:
                del self._last_line[address]
        if len(self._last_line) >= self._remember:
            self._last_line.clear()
