"""Data beyond the driver: sources as folders, globs and lists; Ray Data streaming with a
shard per data-parallel rank; statistics from one distributed pass, cached; bad sources
refused in one line that names the location."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from jobs.data import load, prepare, probe, stream
from jobs.errors import DataError
from jobs.rows import validation_mask
from jobs.spec import DataSpec, ModelSpec, TrainSpec

FEATURES = [f"f{j}" for j in range(8)]


def write_parts(folder, files=4, rows=2500, seed=0):
    """Hive-partitioned Parquet (region=eu|us) of 8 float32 features; the label is a known
    rule of two of them."""
    rng = np.random.default_rng(seed)
    for i in range(files):
        x = rng.normal(3.0, 2.0, (rows, len(FEATURES))).astype(np.float32)
        y = (x[:, 0] + x[:, 1] > 6).astype(np.int64)
        part = folder / f"region={'eu' if i % 2 else 'us'}"
        part.mkdir(parents=True, exist_ok=True)
        table = pa.table({**{f: x[:, j] for j, f in enumerate(FEATURES)}, "label": y})
        pq.write_table(table, part / f"p{i}.parquet")
    return folder


@pytest.fixture
def parts(tmp_path):
    return write_parts(tmp_path / "parts")


def test_a_folder_a_glob_a_list_and_a_partition_filter_name_their_rows(parts):
    def rows(source, **extra) -> int:
        info = prepare(DataSpec(source=source, label="label", **extra)).info
        return info.n_train + info.n_val

    assert rows(str(parts)) == 10_000
    assert rows(f"{parts}/*/p1.parquet") == 2_500
    assert rows([f"{parts}/region=eu/p1.parquet", f"file://{parts}/region=us"]) == 7_500
    assert rows(str(parts), filter=[["region", "==", "eu"]]) == 5_000
    # partition folders are columns, but features only when listed
    assert probe(DataSpec(source=str(parts), label="label")).features == FEATURES


def test_the_split_is_a_hash_of_each_row_the_same_in_any_order(parts):
    table = pq.read_table(parts / "region=us" / "p0.parquet")
    mask = validation_mask(table, FEATURES, seed=3, fraction=0.2)
    reversed_mask = validation_mask(table.take(np.arange(len(table))[::-1]), FEATURES, 3, 0.2)
    np.testing.assert_array_equal(mask, reversed_mask[::-1])
    assert 0.17 < mask.mean() < 0.23
    assert not np.array_equal(mask, validation_mask(table, FEATURES, seed=4, fraction=0.2))


def _ragged_csv(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.csv").write_text("f0,label\n1.0,0\n2.0,1\n")
    (tmp_path / "r" / "b.csv").write_text("f0,label\n1.0,0\n2.0\n3.0,1\n")
    return str(tmp_path / "r")


def _differing_schemas(tmp_path):
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"f0": [1.0, 2.0], "label": [0, 1]}), tmp_path / "d" / "a.parquet")
    pq.write_table(pa.table({"f0": ["x", "y"], "label": [0, 1]}), tmp_path / "d" / "b.parquet")
    return str(tmp_path / "d")


def _mixed_formats(tmp_path):
    (tmp_path / "m").mkdir()
    pq.write_table(pa.table({"f0": [1.0], "label": [0]}), tmp_path / "m" / "a.parquet")
    pacsv.write_csv(pa.table({"f0": [1.0], "label": [0]}), tmp_path / "m" / "b.csv")
    return str(tmp_path / "m")


def _empty_folder(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "_SUCCESS").write_text("")
    return str(tmp_path / "e")


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda t: str(t / "nowhere"), r"data\.source: .*nowhere does not exist"),
        (_empty_folder, r"data\.source: .*/e is an empty folder"),
        (lambda t: f"{t}/*.parquet", r"matches no file"),
        (_mixed_formats, r"one kind only"),
        (_differing_schemas, r"b\.parquet: column 'f0' is string, but double in .*a\.parquet"),
        (_ragged_csv, r"cannot read .*b\.csv: .*(Expected 2 columns|columns)"),
        (lambda t: ["s3://bucket/a.parquet", str(t)], r"2 filesystems"),
        (lambda t: "ftp://host/x.csv", r"unsupported scheme 'ftp'"),
    ],
    ids=["missing", "empty", "glob", "mixed", "schemas", "ragged", "two-fs", "scheme"],
)
def test_a_bad_source_is_one_line_naming_the_location(tmp_path, make, expected):
    with pytest.raises(DataError, match=expected) as caught:
        prepare(DataSpec(source=make(tmp_path), label="label"))
    assert "\n" not in str(caught.value)


def test_a_filter_on_an_unknown_column_has_a_did_you_mean(parts):
    with pytest.raises(DataError, match=r"data\.filter: unknown column 'regoin'; did you mean"):
        probe(DataSpec(source=str(parts), label="label", filter=[["regoin", "==", "eu"]]))


def test_the_statistics_pass_equals_numpy_and_is_cached(ray_session, parts):
    spec = DataSpec(source=str(parts), label="label", streaming=True)
    first = stream(spec)
    assert first.stats_cached is False and first.info.reading == "streamed"
    table = pq.read_table(parts, columns=[*FEATURES, "label"], partitioning=None)
    train = ~validation_mask(table, FEATURES, spec.seed, spec.validation_split)
    x = np.column_stack([table.column(f).to_numpy() for f in FEATURES])[train].astype(np.float64)
    np.testing.assert_allclose(first.info.feature_mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(first.info.feature_std, x.std(0), rtol=1e-6)
    assert (first.info.n_train, first.info.n_val) == (int(train.sum()), int((~train).sum()))
    assert first.info.classes == [0, 1]
    again = stream(spec)  # a study's trials, a rerun: no second scan
    assert again.stats_cached is True and again.info == first.info
    touched = parts / "region=eu" / "p1.parquet"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert stream(spec).stats_cached is False  # the listing changed: scanned again


def _fit(data, train: dict, tmp_path, name):
    from jobs.trainer import fit

    return fit(
        ModelSpec(type="mlp", params={"hidden_sizes": [32]}),
        TrainSpec.model_validate({"epochs": 3, "batch_size": 128, **train}),
        data,
        seed=5,
        run_name=name,
        storage_path=str(tmp_path / "runs"),
    )


def test_streamed_shards_train_to_the_in_memory_accuracy(ray_session, parts, tmp_path):
    """The same held-out rows in memory and streamed, on 2 CPUs. Data parallel 2 with 1 CPU
    per worker (Train holds every CPU; Ray Data still reads, in the CPU the workers leave
    it): each rank trains on about half of the training rows per epoch. Pipeline 2 x data
    parallel 2 (the first stage of each replica reads its shard and broadcasts each batch
    to the second). Both reach the in-memory accuracy within 0.01."""
    spec = {"source": str(parts), "label": "label"}
    two = {"workers": 2, "resources_per_worker": {"CPU": 1}}
    a = _fit(load(DataSpec(**spec)), two, tmp_path, "memory").metrics["val_accuracy"]
    data = load(DataSpec(**spec, streaming=True))
    assert data.info.reading == "streamed"
    streamed = _fit(data, two, tmp_path, "two-shards")
    half = data.info.n_train / 2
    assert all(abs(epoch["rank_rows"] - half) <= 0.1 * half for epoch in streamed.history)
    pipeline = {"workers": 4, "resources_per_worker": {"CPU": 0.5}}
    piped = _fit(data, {**pipeline, "deepspeed": {"pipeline_stages": 2}}, tmp_path, "pp")
    # rank 0 is replica 0's first stage: its replica's shard, half of the rows
    assert all(abs(epoch["rank_rows"] - half) <= 0.1 * half for epoch in piped.history)
    b, c = streamed.metrics["val_accuracy"], piped.metrics["val_accuracy"]
    assert a > 0.9 and abs(a - b) <= 0.01 and abs(a - c) <= 0.01, (a, b, c)


def test_steps_per_epoch_bounds_every_epoch(ray_session, tmp_path):
    data = load(DataSpec(source="sklearn://digits"))
    result = _fit(data, {"steps_per_epoch": 3, "batch_size": 64}, tmp_path, "bounded")
    assert [epoch["rank_rows"] for epoch in result.history] == [192.0] * 3


def test_a_study_on_a_streamed_source_scans_once(ray_session, parts, tmp_path, monkeypatch):
    """A 4-trial study (2 at once on 2 CPUs) on a streamed source finishes; its statistics
    come from the cache the first pass (here, in this test's Ray) filled: `orch run` in its
    own process and Ray."""
    import json
    import subprocess
    import sys

    home = tmp_path / "home"
    env = {**os.environ, "ORCH_HOME": str(home)}
    monkeypatch.setenv("ORCH_HOME", str(home))  # the first pass fills the same cache
    assert stream(DataSpec(source=str(parts), label="label", streaming=True)).stats_cached is False
    spec = tmp_path / "study.yaml"
    spec.write_text(
        f"name: streamed-study\n"
        f"data: {{source: '{parts}', label: label, streaming: true}}\n"
        "model: {type: mlp, params: {hidden_sizes: [16]}}\n"
        "train: {epochs: 2, batch_size: 128, resources_per_worker: {CPU: 1}}\n"
        "tune:\n  metric: val_accuracy\n  num_samples: 4\n  max_concurrent_trials: 2\n"
        "  space: {train.optimizer.lr: {loguniform: [0.001, 0.01]}}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(spec), "--json"],
        capture_output=True, text=True, timeout=420, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["data"] == {**result["data"], "reading": "streamed", "stats_cached": True}
    assert len(result["study"]["trials"]) == 4
    assert result["metrics"]["val_accuracy"] > 0.85


def test_a_file_gone_mid_run_fails_the_run_by_name_and_its_checkpoint_resumes(
    ray_session, parts, tmp_path
):
    """A source file moved away after epoch 1: the run fails naming that file; put back,
    the same run (``--run-name``) resumes from its last checkpoint and finishes. (The
    driver hears of epoch 1 while the workers go on: epochs enough that one reads after.)"""
    from jobs.events import EpochEnded
    from orchestrator import Client
    from orchestrator.exceptions import JobFailedError

    spec = tmp_path / "gone.yaml"
    spec.write_text(
        f"name: gone\ndata: {{source: '{parts}', label: label, streaming: true}}\n"
        "model: {type: mlp, params: {hidden_sizes: [16]}}\n"
        "train: {epochs: 30, batch_size: 256, checkpoint: {every_epochs: 1}}\n"
    )
    victim, aside = parts / "region=eu" / "p1.parquet", tmp_path / "p1.parquet"

    def move_after_epoch_1(event) -> None:
        if isinstance(event, EpochEnded) and victim.exists():
            victim.rename(aside)

    with pytest.raises(JobFailedError, match=r"p1\.parquet") as caught:
        Client().run(spec, on_event=move_after_epoch_1, run_name="gone-1")
    assert "\n" not in str(caught.value), caught.value
    assert "FileNotFoundError" in str(caught.value)
    aside.rename(victim)
    result = Client().run(spec, run_name="gone-1")  # orch run --run-name gone-1
    assert result.status == "succeeded" and result.metrics["epoch"] == 30
    assert len(result.resumed_from_epochs) == 1 and 1 <= result.resumed_from_epochs[0] < 30
