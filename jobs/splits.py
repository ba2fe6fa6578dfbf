"""A training or validation split as the training loop reads it, in memory or streamed.

- ``InMemorySplit``: rows held as tensors (data read by the driver, sent through the
  object store). Every worker sees the same global batches in the same seeded order and
  keeps its data-parallel slice of each (``per_rank`` False).
- ``ShardSplit``: this rank's own shard of a stream, so no worker reads the whole source
  (``per_rank`` True): the files it reads itself (``jobs.rank_reader.RankRows``, pieces
  in a seeded order per epoch), or a Ray Data shard (``DataIteratorBlocks``, in Ray
  Data's block order). Each epoch is shuffled in a window of ``SHUFFLE_WINDOW_ROWS``
  rows, seeded per epoch; a bounded epoch (``train.steps_per_epoch``) walks on through
  the stream from where the last one stopped.
- ``BroadcastSplit``: the later stages of a pipeline-parallel replica; the first stage
  reads the shard and sends each batch over the replica's pipe group, so every stage of a
  replica sees the same batches (the first needs the inputs, the last the labels).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

SHUFFLE_WINDOW_ROWS = 65_536


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor
    y: torch.Tensor


class InMemorySplit:
    """Rows held as tensors; each epoch is a seeded permutation, in full batches."""

    per_rank = False

    def __init__(self, x: np.ndarray, y: np.ndarray):
        # from_numpy shares the (read-only, object-store) buffer; copy once so that torch
        # may own it and no warning about non-writable arrays is printed.
        self.x = torch.from_numpy(np.array(x, copy=True))
        self.y = torch.from_numpy(np.array(y, copy=True))

    def epoch_batches(
        self, batch_size: int, seed: int, steps: int | None = None
    ) -> Iterator[Batch]:
        """One seeded permutation in full batches; with ``steps``, that many batches of an
        endless walk (a new permutation whenever one is used up)."""
        if steps is None:
            yield from self._permutation(batch_size, seed)
            return
        if getattr(self, "_stream", None) is None:
            self._stream = self._endless(batch_size, seed)
        for _ in range(steps):
            yield next(self._stream)

    def _permutation(self, batch_size: int, seed: int) -> Iterator[Batch]:
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(seed))
        for i in range(len(order) // batch_size):  # drop_last: every step sees a full batch
            rows = order[i * batch_size : (i + 1) * batch_size]
            yield Batch(self.x[rows], self.y[rows])

    def _endless(self, batch_size: int, seed: int) -> Iterator[Batch]:
        passes = 0
        while True:
            yield from self._permutation(batch_size, seed + 7919 * passes)
            passes += 1

    def in_order(self, chunk: int) -> Iterator[Batch]:
        for lo in range(0, len(self.x), chunk):
            yield Batch(self.x[lo : lo + chunk], self.y[lo : lo + chunk])


class DataIteratorBlocks:
    """A Ray Data shard (a ``DataIterator``) as blocks ``{"x", "y"}``, taken whole as NumPy
    arrays (no re-batching, no per-batch tensor conversion: that cost more than reading
    and decoding the rows). Ray Data orders the blocks; the seed is not used."""

    def __init__(self, iterator):
        self.iterator = iterator

    def blocks(self, seed: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        for block in self.iterator.iter_batches(batch_size=None, batch_format="numpy"):
            if len(block["y"]):
                yield block


class ShardSplit:
    """This rank's shard of a stream: anything with ``blocks(seed)`` giving ``{"x", "y"}``
    NumPy blocks (``jobs.rank_reader.RankRows``, ``DataIteratorBlocks``)."""

    per_rank = True

    def __init__(self, shard):
        self.shard = shard
        self._stream: Iterator[Batch] | None = None

    def _windows(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The shard in windows of about SHUFFLE_WINDOW_ROWS rows, each permuted (blocks
        whose source shuffled them already pass as they come)."""
        if getattr(self.shard, "shuffled", False):
            for block in self.shard.blocks(seed):
                yield torch.from_numpy(block["x"]), torch.from_numpy(block["y"])
            return
        generator = np.random.default_rng(seed)
        xs, ys, held = [], [], 0
        for block in self.shard.blocks(seed):
            xs.append(block["x"])
            ys.append(block["y"])
            held += len(block["y"])
            if held >= SHUFFLE_WINDOW_ROWS:
                yield _permuted(xs, ys, generator)
                xs, ys, held = [], [], 0
        if held:
            yield _permuted(xs, ys, generator)

    def _pass(self, batch_size: int, seed: int) -> Iterator[Batch]:
        """One pass over the shard in full batches (rows left over carry into the next
        window; the last partial batch of the pass is dropped)."""
        carry_x = carry_y = None
        for x, y in self._windows(seed):
            start = 0
            if carry_x is not None:  # the carried rows and the first of this window
                start = min(batch_size - len(carry_y), len(y))
                x_head, y_head = torch.cat([carry_x, x[:start]]), torch.cat([carry_y, y[:start]])
                if len(y_head) < batch_size:
                    carry_x, carry_y = x_head, y_head
                    continue
                yield Batch(x_head, y_head)
            full = start + (len(y) - start) // batch_size * batch_size
            for lo in range(start, full, batch_size):
                yield Batch(x[lo : lo + batch_size], y[lo : lo + batch_size])
            carry_x, carry_y = (x[full:], y[full:]) if full < len(y) else (None, None)

    def epoch_batches(self, batch_size: int, seed: int, steps: int | None = None):
        """One pass (``steps`` None), or the next ``steps`` batches of a stream that
        starts a new pass (a new seed) whenever one ends."""
        if steps is None:
            yield from self._pass(batch_size, seed)
            return
        if self._stream is None:
            self._stream = self._endless(batch_size, seed)
        for _ in range(steps):
            yield next(self._stream)

    def _endless(self, batch_size: int, seed: int) -> Iterator[Batch]:
        passes = 0
        while True:
            empty = True
            for batch in self._pass(batch_size, seed + 7919 * passes):
                empty = False
                yield batch
            if empty:
                return
            passes += 1

    def in_order(self, chunk: int) -> Iterator[Batch]:
        """The shard in order, in chunks of ``chunk`` rows whatever the blocks' sizes (the
        last may be short): equal shards give every rank as many chunks, so a model whose
        forward pass communicates (ZeRO-3) runs as many on each."""
        xs, ys, held = [], [], 0
        for block in self.shard.blocks(None):
            xs.append(block["x"])
            ys.append(block["y"])
            held += len(block["y"])
            if held < chunk:
                continue
            x, y = _tensor(xs), _tensor(ys)
            full = len(y) // chunk * chunk
            for lo in range(0, full, chunk):
                yield Batch(x[lo : lo + chunk], y[lo : lo + chunk])
            xs, ys, held = [x[full:].numpy()], [y[full:].numpy()], len(y) - full
        if held:
            yield Batch(_tensor(xs), _tensor(ys))


def _tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    """Blocks' arrays as one tensor torch may own (Ray's are read-only views)."""
    return torch.from_numpy(np.concatenate(arrays) if len(arrays) > 1 else arrays[0].copy())


def _permuted(xs, ys, generator: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks' rows in one random order (NumPy's gather: 3x torch indexing's speed)."""
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = generator.permutation(len(y))
    return torch.from_numpy(x.take(order, axis=0)), torch.from_numpy(y.take(order))


class BroadcastSplit:
    """A later pipeline stage's view of its replica's shard: what the first stage sends.

    The first stage (``source`` set) iterates its ``ShardSplit`` and broadcasts, per batch,
    a header (1 = a batch follows, its row count) then ``x`` and ``y``; a header of 0 ends
    the epoch. Every stage calls the same methods in the same order.
    """

    per_rank = True

    def __init__(self, source, group, src_rank: int, n_features: int, y_dtype, device):
        self.source, self.group, self.src = source, group, src_rank
        self.n_features, self.y_dtype, self.device = n_features, y_dtype, device

    def _relay(self, batches: Iterator[Batch] | None) -> Iterator[Batch]:
        import torch.distributed as dist

        header = torch.zeros(2, dtype=torch.int64, device=self.device)
        while True:
            batch = next(batches, None) if batches is not None else None
            if batches is not None:
                header[0], header[1] = (1, len(batch.y)) if batch is not None else (0, 0)
            dist.broadcast(header, self.src, group=self.group)
            if int(header[0]) == 0:
                return
            rows = int(header[1])
            if batches is not None:
                x, y = batch.x.to(self.device).contiguous(), batch.y.to(self.device).contiguous()
            else:
                x = torch.empty(rows, self.n_features, dtype=torch.float32, device=self.device)
                y = torch.empty(rows, dtype=self.y_dtype, device=self.device)
            dist.broadcast(x, self.src, group=self.group)
            dist.broadcast(y, self.src, group=self.group)
            yield Batch(x, y)

    def epoch_batches(self, batch_size: int, seed: int, steps: int | None = None):
        inner = self.source.epoch_batches(batch_size, seed, steps) if self.source else None
        return self._relay(iter(inner) if inner is not None else None)

    def in_order(self, chunk: int) -> Iterator[Batch]:
        inner = self.source.in_order(chunk) if self.source else None
        return self._relay(iter(inner) if inner is not None else None)


Split = InMemorySplit | ShardSplit | BroadcastSplit
