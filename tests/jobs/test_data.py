"""Data: bundled sets, Parquet/CSV files and folders; split by seed; standardised on train only."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from jobs.data import prepare, probe
from jobs.errors import DataError
from jobs.spec import DataSpec


def _frame(n=200, seed=1):
    rng = np.random.default_rng(seed)
    x1 = rng.normal(5.0, 2.0, n)
    x2 = rng.normal(-3.0, 0.5, n)
    label = np.where(x1 + x2 > 2, "yes", "no")
    return pa.table({"x1": x1, "x2": x2, "note": ["n"] * n, "label": label})


@pytest.mark.parametrize(
    "name,task,n_features,n_rows",
    [
        ("digits", "classification", 64, 1797),
        ("wine", "classification", 13, 178),
        ("breast_cancer", "classification", 30, 569),
        ("iris", "classification", 4, 150),
        ("diabetes", "regression", 10, 442),
    ],
)
def test_sklearn_sets(name, task, n_features, n_rows):
    spec = DataSpec(source=f"sklearn://{name}")
    data = prepare(spec)
    assert data.info.task == task
    assert data.x_train.shape[1] == n_features == data.info.n_features
    assert (data.info.n_train, data.info.n_val) == (len(data.x_train), len(data.x_val))
    assert data.info.n_train + data.info.n_val == n_rows  # every row, in one split only
    # a hash of each row decides its split: the share is validation_split in expectation
    sigma = (n_rows * spec.validation_split * (1 - spec.validation_split)) ** 0.5
    assert abs(data.info.n_val - spec.validation_split * n_rows) <= 4 * sigma


def test_split_is_deterministic_in_seed():
    a = prepare(DataSpec(source="sklearn://iris", seed=3))
    b = prepare(DataSpec(source="sklearn://iris", seed=3))
    c = prepare(DataSpec(source="sklearn://iris", seed=4))
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.x_val, c.x_val)


def test_standardisation_is_fitted_on_train_only():
    data = prepare(DataSpec(source="sklearn://wine"))
    np.testing.assert_allclose(data.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(0), 1, atol=1e-4)
    assert np.abs(data.x_val.mean(0)).max() > 1e-3  # validation is not refitted


def test_parquet_directory_with_string_labels(tmp_path):
    table = _frame()
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(table.slice(0, 120), folder / "a.parquet")
    pq.write_table(table.slice(120), folder / "b.parquet")
    data = prepare(DataSpec(source=str(folder), label="label", features=["x1", "x2"]))
    assert data.info.classes == ["no", "yes"]
    assert data.info.task == "classification"
    assert data.info.n_train + data.info.n_val == 200
    assert data.info.feature_mean[0] == pytest.approx(5.0, abs=0.5)


def test_csv_file_regression_is_inferred_from_float_label(tmp_path):
    table = _frame().drop(["note", "label"]).append_column("y", pa.array(np.arange(200) * 0.5))
    pacsv.write_csv(table, tmp_path / "d.csv")
    data = prepare(DataSpec(source=f"file://{tmp_path / 'd.csv'}", label="y"))
    assert data.info.task == "regression"
    assert data.info.target_std > 1
    np.testing.assert_allclose(data.y_train.mean(), 0, atol=1e-5)


def test_non_numeric_feature_is_named(tmp_path):
    pq.write_table(_frame(), tmp_path / "d.parquet")
    with pytest.raises(
        DataError,
        match=r"data\.features: feature column\(s\) \['note'\] are not "
        r"numeric",
    ):
        probe(DataSpec(source=str(tmp_path / "d.parquet"), label="label"))


def test_wrong_file_type(tmp_path):
    (tmp_path / "d.json").write_text("{}")
    with pytest.raises(DataError, match=r"expected \.parquet or \.csv files"):
        probe(DataSpec(source=str(tmp_path / "d.json")))


def test_missing_values_are_reported(tmp_path):
    pq.write_table(
        pa.table({"a": [1.0, None, 3.0, 4.0], "y": [0, 1, 0, 1]}), tmp_path / "d.parquet"
    )
    with pytest.raises(DataError, match=r"missing values in column\(s\) \['a'\]"):
        prepare(DataSpec(source=str(tmp_path / "d.parquet"), label="y"))
