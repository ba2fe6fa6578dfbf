"""A training or validation split as the training loop reads it, in memory or streamed.

Small splits (up to ``IN_MEMORY_LIMIT_BYTES``) travel to the workers through Ray's object
store as numpy arrays: no Ray Data pipeline, no DatasetManager actor, nothing to stream.
Larger splits stay Ray Data datasets that every worker streams (``StreamedSplit``). Both
give every worker the same global batches in the same seeded order, so a rank's slice of
each batch is the same whichever form the split takes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from jobs.prepared import PreparedData

# Splits up to this size go through the object store (and stay in each worker's memory);
# larger ones stream through Ray Data. ORCH_IN_MEMORY_DATA_MB sets it in the driver (read
# once, at import): bench/small_jobs.py forces streaming with 0 to time Ray Data's cost.
IN_MEMORY_LIMIT_BYTES = int(float(os.environ.get("ORCH_IN_MEMORY_DATA_MB", "256")) * 2**20)
# A streamed split up to this size is read once and then reshuffled in memory each epoch.
CACHE_LIMIT_BYTES = 512 << 20


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor
    y: torch.Tensor


def fits_in_memory(data: PreparedData) -> bool:
    size = sum(a.nbytes for a in (data.x_train, data.y_train, data.x_val, data.y_val))
    return size <= IN_MEMORY_LIMIT_BYTES


class InMemorySplit:
    """Rows held as tensors; each epoch is a seeded permutation, in full batches."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        # from_numpy shares the (read-only, object-store) buffer; copy once so that torch
        # may own it and no warning about non-writable arrays is printed.
        self.x = torch.from_numpy(np.array(x, copy=True))
        self.y = torch.from_numpy(np.array(y, copy=True))

    def epoch_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(seed))
        for i in range(len(order) // batch_size):  # drop_last: every step sees a full batch
            rows = order[i * batch_size : (i + 1) * batch_size]
            yield Batch(self.x[rows], self.y[rows])

    def in_order(self, chunk: int) -> Iterator[Batch]:
        for lo in range(0, len(self.x), chunk):
            yield Batch(self.x[lo : lo + chunk], self.y[lo : lo + chunk])


class StreamedSplit:
    """A Ray Data shard. Read once into memory when small enough, streamed otherwise."""

    def __init__(self, shard, n_rows: int, row_bytes: int):
        self.shard = shard
        self.n_rows = n_rows
        self.row_bytes = row_bytes
        self._cached: InMemorySplit | None = None

    def epoch_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        if self.n_rows * self.row_bytes <= CACHE_LIMIT_BYTES:
            if self._cached is None:
                parts = list(self.shard.iter_torch_batches(batch_size=8192))
                x = torch.cat([p["x"] for p in parts]).numpy()
                y = torch.cat([p["y"] for p in parts]).numpy()
                self._cached = InMemorySplit(x, y)
            yield from self._cached.epoch_batches(batch_size, seed)
            return
        for batch in self.shard.iter_torch_batches(
            batch_size=batch_size,
            drop_last=True,
            local_shuffle_buffer_size=min(self.n_rows, 100_000),
            local_shuffle_seed=seed,
        ):
            yield Batch(batch["x"], batch["y"])

    def in_order(self, chunk: int) -> Iterator[Batch]:
        for batch in self.shard.iter_torch_batches(batch_size=chunk):
            yield Batch(batch["x"], batch["y"])


Split = InMemorySplit | StreamedSplit
