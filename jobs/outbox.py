"""Epoch metrics and tags on their way to MLflow, kept while the tracking server is away.

A training never waits on MLflow: its driver queues each epoch's metrics here and a
background thread writes them, in order, retrying with backoff while the server is down;
``flush`` at the end waits for everything to land.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from jobs.errors import first_line

log = logging.getLogger("jobs.tracking")  # where its warnings have always been logged
_MAX_METRICS, _MAX_TAGS = 1000, 100  # what one MLflow request takes (its client splits more)


class Outbox:
    """Epoch metrics and tags written by a background thread, kept and retried in order while
    the tracking server is away, so training never waits on (or fails because of) MLflow.
    ``flush`` at the end waits for everything to land."""

    def __init__(self, client, run_id: str):
        self._client, self._run_id = client, run_id
        self._items: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._busy = False
        self.retries = 0
        self.last_error = ""
        threading.Thread(target=self._drain, name="orch-mlflow-outbox", daemon=True).start()

    def put(self, metrics: list | None = None, tags: list | None = None) -> None:
        with self._cv:
            self._items.append((metrics or [], tags or []))
            self._cv.notify()

    def _drain(self) -> None:
        delay = 0.5
        while True:
            with self._cv:
                while not self._items:
                    self._busy = False
                    self._cv.notify_all()
                    self._cv.wait()
                self._busy = True
                count, metrics, tags = self._next_batch()
            try:
                self._client.log_batch(self._run_id, metrics=metrics, tags=tags)
            except Exception as exc:  # server away: keep the item, retry with backoff
                self.retries += 1
                self.last_error = first_line(exc)
                log.warning("MLflow write failed (%s); retrying in %.1f s", self.last_error, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.5
            with self._cv:
                for _ in range(count):
                    self._items.popleft()

    def _next_batch(self) -> tuple[int, list, list]:
        """The oldest queued items that fit one MLflow request (1000 metrics, 100 tags), as
        one ``log_batch``: a short training's epochs queue faster than one write each lands.
        Within one request a write lands whole or not at all, so a retry repeats no point."""
        count, metrics, tags = 0, [], []
        for item_metrics, item_tags in self._items:
            fits = (
                len(metrics) + len(item_metrics) <= _MAX_METRICS
                and len(tags) + len(item_tags) <= _MAX_TAGS
            )
            if count and not fits:
                break
            count += 1
            metrics += item_metrics
            tags += item_tags
        return count, metrics, tags

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything is written; False if ``timeout_s`` passed first."""
        deadline = time.time() + timeout_s
        with self._cv:
            while self._items or self._busy:
                left = deadline - time.time()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 1.0))
        return True
