"""Files streamed by the ranks themselves: each data-parallel rank reads its own equal
share of a split's rows, only the units those rows lie in, in a seeded order per epoch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.data import prepare, stream
from jobs.rank_reader import RankRows, UnitReader, UnitRows, pieces_of
from jobs.spec import DataSpec
from jobs.splits import ShardSplit
from tests.jobs.test_streaming import FEATURES, write_parts

unit_counts = st.lists(st.integers(0, 50), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(counts=unit_counts, ranks=st.integers(1, 8))
def test_every_rank_gets_an_equal_disjoint_share_in_listing_order(counts, ranks):
    units = [UnitRows(f"f{i}", None, n, 0) for i, n in enumerate(counts)]
    share = sum(counts) // ranks
    starts = np.cumsum([0, *counts])
    taken = []
    for rank in range(ranks):
        pieces = pieces_of(units, "train", rank, ranks)
        rows = [int(starts[units.index(p.unit)]) + i for p in pieces for i in range(p.lo, p.hi)]
        assert rows == list(range(rank * share, (rank + 1) * share))  # its own, in order
        assert all(p.lo < p.hi <= p.unit.n_train for p in pieces)  # no empty or past-end piece
        taken += rows
    assert sorted(taken) == list(range(share * ranks))  # no row twice, none of a share lost


def test_no_rank_opens_a_unit_its_rows_do_not_lie_in():
    units = [UnitRows(f"f{i}", 0, 100, 25) for i in range(8)]
    opened = [{p.unit.path for p in pieces_of(units, "train", r, 4)} for r in range(4)]
    assert opened == [{"f0", "f1"}, {"f2", "f3"}, {"f4", "f5"}, {"f6", "f7"}]
    # 3 ranks of 800 rows: 266 each; a unit on a boundary is opened by both ranks
    opened = [{p.unit.path for p in pieces_of(units, "val", r, 3)} for r in range(3)]
    assert opened == [{"f0", "f1", "f2"}, {"f2", "f3", "f4", "f5"}, {"f5", "f6", "f7"}]


@pytest.fixture
def parts(tmp_path):
    return write_parts(tmp_path / "parts", files=5, rows=1500)


def _rows(rows: RankRows, seed) -> tuple[np.ndarray, np.ndarray]:
    blocks = list(rows.blocks(seed))
    return np.concatenate([b["x"] for b in blocks]), np.concatenate([b["y"] for b in blocks])


def _sorted(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T[::-1])]


def test_two_ranks_read_exactly_the_in_memory_split_between_them(ray_session, parts):
    """The ranks' rows together are the in-memory path's rows of each split (the same
    hash split, the same standardisation), less fewer than 2 rows of each."""
    spec = DataSpec(source=str(parts), label="label", streaming=True)
    data, memory = stream(spec), prepare(DataSpec(source=str(parts), label="label"))
    for split, x_all, y_all in (
        ("train", memory.x_train, memory.y_train),
        ("val", memory.x_val, memory.y_val),
    ):
        halves = [_rows(RankRows(data, split, rank, 2), seed=3) for rank in range(2)]
        assert len(halves[0][1]) == len(halves[1][1]) == len(y_all) // 2
        x = np.concatenate([h[0] for h in halves])
        y = np.concatenate([h[1] for h in halves])
        both = _sorted(np.column_stack([x, y]))
        every = _sorted(np.column_stack([x_all, y_all]))
        matched = np.isin(both.view([("", both.dtype)] * both.shape[1]),
                          every.view([("", every.dtype)] * every.shape[1]))  # fmt: skip
        assert matched.all() and len(both) >= len(every) - 1


def test_an_epoch_is_shuffled_by_its_seed_and_the_same_seed_repeats_it(ray_session, parts):
    data = stream(DataSpec(source=str(parts), label="label", streaming=True))
    rows = RankRows(data, "train", 0, 1)
    a, b, c = _rows(rows, 1)[0], _rows(rows, 1)[0], _rows(rows, 2)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and np.allclose(_sorted(a), _sorted(c))
    in_listing_order = _rows(rows, None)[0]
    assert not np.array_equal(a, in_listing_order)


def test_validation_chunks_are_as_many_on_every_rank(ray_session, parts):
    """Equal shards in equal chunks whatever the units' sizes: a forward pass that
    communicates (ZeRO-3) runs as many times on each rank."""
    data = stream(DataSpec(source=str(parts), label="label", streaming=True))
    chunks = [
        [len(b.y) for b in ShardSplit(RankRows(data, "val", r, 3)).in_order(97)] for r in range(3)
    ]
    assert chunks[0] == chunks[1] == chunks[2] and sum(chunks[0]) == data.info.n_val // 3


def test_a_csv_file_read_in_batches_splits_between_ranks(ray_session, tmp_path):
    """One CSV file, read by pyarrow in batches far smaller than the file: its rows are
    shared between 2 ranks without a row lost or read twice."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (20000, len(FEATURES))).astype(np.float32)
    table = pa.table({**{f: x[:, j] for j, f in enumerate(FEATURES)},
                      "label": (x[:, 0] > 0).astype(np.int64)})  # fmt: skip
    path = tmp_path / "rows.csv"
    pacsv.write_csv(table, path)
    data = stream(DataSpec(source=str(path), label="label", streaming=True))
    assert data.units == [[str(path), None, data.info.n_train, data.info.n_val]]
    assert len(list(UnitReader(data.source, FEATURES).tables(str(path), None))) > 1
    halves = [_rows(RankRows(data, "train", r, 2), seed=None)[0] for r in range(2)]
    both = np.concatenate(halves)
    assert len(halves[0]) == len(halves[1]) == data.info.n_train // 2
    assert len(np.unique(both, axis=0)) == len(both)
