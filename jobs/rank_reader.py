"""A file source read by the training ranks themselves: each data-parallel rank reads its
own rows with pyarrow, in threads of its own process, and no rank reads the whole source.

Why not Ray Data for this part: measured on 2 cores (issue 30, BENCHMARKS.md), a rank's
shard through ``streaming_split`` took 0.04-0.09x the rows/s of a one-process pyarrow scan
of the same files: each pass restarts Data's reader pool (5-17 s to a first batch), its
tasks ask for CPU the training workers hold (a read waits forever when Train holds every
CPU: ray-project/ray #41603), and the reading tasks and the consumer share the cores the
scan uses alone. Reading its own row groups, as torchtitan's ``split_dataset_by_node``
does, a rank needs no CPU beyond its own. Ray Data still runs the one distributed pass
that computes the statistics (``jobs.streaming.scan_statistics``), and streams image
folders and bundled sets.

- **Units**: a Parquet file's row groups, a CSV file whole (read in pyarrow's batches).
  The statistics pass counts each unit's training and validation rows (after
  ``data.filter``, with the split's row hash: ``jobs.rows``), so before reading a row
  every rank knows which rows are its own.
- **Equal shards**: of a split's ``total`` rows in listing order, rank ``r`` of ``n`` takes
  rows ``[r*q, (r+1)*q)``, ``q = total // n``: every rank takes as many steps and as many
  validation chunks (the last ``total % n`` rows are left out, as Ray Data's
  ``streaming_split(equal=True)`` leaves them). A rank opens only the units its rows lie
  in; a unit shared by two ranks is read by both, each keeping its own rows.
- **Order**: each epoch reads the rank's pieces in an order seeded by the epoch's seed,
  each piece's rows permuted by the reading thread (the gather that makes the row-major
  matrix also shuffles it: no second copy, off the loop's thread); validation reads in
  listing order. ``READ_THREADS`` threads read ahead, at most ``READ_AHEAD`` pieces, in
  order: the same seed gives the same batches. A batch's rows come from one piece (a
  Parquet row group, or a CSV file's slice) except where pieces meet.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa

READ_THREADS = 2
READ_AHEAD = 4


@dataclass(frozen=True)
class UnitRows:
    """One unit of a file source and how many of its rows each split holds."""

    path: str
    row_group: int | None  # None: the whole file (CSV)
    n_train: int
    n_val: int

    def rows(self, split: str) -> int:
        return self.n_train if split == "train" else self.n_val


@dataclass(frozen=True)
class Piece:
    """Rows ``[lo, hi)`` of one unit's rows of a split."""

    unit: UnitRows
    lo: int
    hi: int


def pieces_of(units: list[UnitRows], split: str, rank: int, ranks: int) -> list[Piece]:
    """The pieces of ``split`` that rank ``rank`` of ``ranks`` reads (equal shards)."""
    share = sum(u.rows(split) for u in units) // ranks
    start, stop = rank * share, (rank + 1) * share
    pieces, offset = [], 0
    for unit in units:
        n = unit.rows(split)
        lo, hi = max(start - offset, 0), min(stop - offset, n)
        if lo < hi:
            pieces.append(Piece(unit, lo, hi))
        offset += n
        if offset >= stop:
            break
    return pieces


class UnitReader:
    """Reads units of one ``ResolvedSource``: the columns asked, as Arrow tables, through
    the same pyarrow dataset (partition columns, CSV options) as the in-memory path."""

    def __init__(self, source, columns: list[str]):
        self.source, self.columns = source, columns

    @cached_property
    def _dataset(self):
        from jobs.sources import open_dataset

        return open_dataset(self.source)

    @cached_property
    def _fragments(self) -> dict:
        return {fragment.path: fragment for fragment in self._dataset.get_fragments()}

    def row_groups(self, path: str) -> list[int | None]:
        """The units of one file: its row groups (Parquet), or the file whole (CSV)."""
        fragment = self._fragments[path]
        if self.source.format != "parquet":
            return [None]
        return [g.id for g in fragment.row_groups] or [None]

    def tables(self, path: str, row_group: int | None) -> Iterator[pa.Table]:
        """A unit's rows in listing order: a row group as one table, a CSV file in batches."""
        fragment, schema = self._fragments[path], self._dataset.schema
        if row_group is not None:
            unit = fragment.subset(row_group_ids=[row_group])
            yield unit.to_table(schema=schema, columns=self.columns)
            return
        for batch in fragment.to_batches(schema=schema, columns=self.columns):
            yield pa.Table.from_batches([batch])


class RankRows:
    """One split's rows that one data-parallel rank reads, as blocks ``{"x", "y"}`` of
    float32 standardised features and encoded labels (``jobs.rows.SplitRows``)."""

    shuffled = True  # blocks(seed) permutes rows itself (jobs.splits.ShardSplit)

    def __init__(self, data, split: str, rank: int, ranks: int, reader: UnitReader | None = None):
        """``reader``: one the rank's other split uses (the dataset is opened once)."""
        from jobs.rows import SplitRows

        self.pieces = pieces_of(units_of(data.units), split, rank, ranks)
        self._reader = reader or unit_reader(data)
        self._map = SplitRows(data.info, data.spec, validation=split == "val")

    def blocks(self, seed: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The rank's rows: pieces in an order seeded by ``seed`` (listing order for None)."""
        order = list(enumerate(self.pieces))
        if seed is not None:
            random.Random(seed).shuffle(order)
        with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="orch-read") as pool:
            ahead: deque = deque()
            for i, piece in order:
                rng = None if seed is None else np.random.default_rng([seed, i])
                ahead.append(pool.submit(self._read, piece, rng))
                if len(ahead) >= READ_AHEAD:
                    yield from _nonempty(ahead.popleft().result())
            while ahead:
                yield from _nonempty(ahead.popleft().result())

    def _read(self, piece: Piece, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        """One piece: its unit's tables mapped to the split's rows, rows lo..hi kept
        (permuted by ``rng`` when given)."""
        xs, ys, cursor = [], [], _Cursor(piece, rng)
        for table in self._reader.tables(piece.unit.path, piece.unit.row_group):
            if cursor.offset >= piece.hi:
                break
            block = self._map(table, cursor.pick)
            if len(block["y"]):
                xs.append(block["x"])
                ys.append(block["y"])
        if not ys:
            return {"x": np.empty((0, 0), np.float32), "y": np.empty(0)}
        if len(ys) == 1:
            return {"x": xs[0], "y": ys[0]}
        return {"x": np.concatenate(xs), "y": np.concatenate(ys)}


class _Cursor:
    """Where a piece's reading stands in its unit's split rows, table after table."""

    def __init__(self, piece: Piece, rng: np.random.Generator | None):
        self.piece, self.rng, self.offset = piece, rng, 0

    def pick(self, rows: np.ndarray) -> np.ndarray:
        """``SplitRows``' pick: of this table's split rows, the piece's (permuted), and
        the cursor moves past them all."""
        lo, hi = self.piece.lo - self.offset, self.piece.hi - self.offset
        self.offset += len(rows)
        mine = rows[max(lo, 0) : max(hi, 0)]
        return self.rng.permutation(mine) if self.rng is not None else mine


def unit_reader(data) -> UnitReader:
    """A reader of a streamed source's label and feature columns."""
    return UnitReader(data.source, [*data.info.feature_columns, data.info.label])


def _nonempty(block: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    if len(block["y"]):
        yield block


def units_of(rows: list) -> list[UnitRows]:
    """``DataInfo.units`` (JSON lists: path, row group, training rows, validation rows)."""
    return [UnitRows(path, group, n_train, n_val) for path, group, n_train, n_val in rows]


def reads_by_rank(data) -> bool:
    """Whether a streamed source is read by the ranks themselves (files), rather than by
    Ray Data (an image folder, a bundled set)."""
    return bool(getattr(data, "units", None))


def rank_splits(data, rank: int, dp_size: int) -> dict:
    """``{"train", "val"}`` splits of the rank with world rank ``rank``: ranks
    ``0..dp_size-1`` (the first pipeline stage in DeepSpeed's pipe-major topology) read
    their own rows; later stages get None and receive their replica's batches from its
    first stage (``jobs.splits.BroadcastSplit``)."""
    from jobs.splits import ShardSplit

    if rank >= dp_size:
        return {"train": None, "val": None}
    reader = unit_reader(data)
    return {
        name: ShardSplit(RankRows(data, name, rank, dp_size, reader)) for name in ("train", "val")
    }
