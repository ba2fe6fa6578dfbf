"""Sources on object storage, against a real S3 HTTP server in a process (moto's server
mode), reached the way a user's job reaches S3: by s3:// URI, with the endpoint and the
credentials in the standard environment variables, never in the spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from jobs.data import prepare
from jobs.errors import DataError
from jobs.spec import DataSpec
from tests.conftest import free_port
from tests.jobs.test_streaming import write_parts

pytestmark = pytest.mark.slow


@pytest.fixture
def s3(monkeypatch, tmp_path):
    """moto's S3 server in its own process on a loopback port, a bucket ``lake``, and the
    environment that points boto3, pyarrow and a job's processes at it."""
    import boto3
    import botocore.exceptions

    port = free_port()
    log = (tmp_path / "moto.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    try:
        deadline = time.monotonic() + 60
        while True:  # until the server answers (it imports moto's services first)
            assert server.poll() is None, (tmp_path / "moto.log").read_text()[-2000:]
            try:
                client.create_bucket(Bucket="lake")
                break
            except botocore.exceptions.EndpointConnectionError:
                assert time.monotonic() < deadline, "moto_server did not answer in 60 s"
                time.sleep(0.1)
        yield client, env
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def upload(client, folder, prefix):
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            client.put_object(Bucket="lake", Key=key, Body=path.read_bytes())


def test_a_parquet_folder_and_a_csv_folder_on_s3_read_as_the_local_files(s3, tmp_path):
    client, _ = s3
    local = write_parts(tmp_path / "parts", files=2, rows=500)
    upload(client, local, "parts")
    csv = tmp_path / "csv"
    csv.mkdir()
    for i, part in enumerate(sorted(local.rglob("*.parquet"))):
        pacsv.write_csv(pq.read_table(part), csv / f"c{i}.csv")
    upload(client, csv, "csv")
    for here, there in ((local, "s3://lake/parts"), (csv, "s3://lake/csv/")):
        a = prepare(DataSpec(source=str(here), label="label"))
        b = prepare(DataSpec(source=there, label="label"))
        assert (a.info.n_train, a.info.n_val) == (b.info.n_train, b.info.n_val) == (800, 200) or (
            a.info.n_train + a.info.n_val == 1000 and a.info.n_val == b.info.n_val
        )
        np.testing.assert_allclose(a.info.feature_mean, b.info.feature_mean, rtol=1e-9)
        np.testing.assert_array_equal(a.x_val, b.x_val)


def test_a_missing_bucket_or_prefix_is_one_line(s3):
    with pytest.raises(DataError, match=r"s3://lake/nothing does not exist"):
        prepare(DataSpec(source="s3://lake/nothing", label="label"))
    with pytest.raises(DataError, match=r"data\.source: .*s3://nobucket/x"):
        prepare(DataSpec(source="s3://nobucket/x", label="label"))


def test_orch_run_streams_an_s3_source_and_trains_as_on_local_files(s3, ray_session, tmp_path):
    """`orch run` in a fresh process (its embedded Ray's workers read S3 with the same
    environment): an s3:// source streams (auto), and trains to the accuracy of the same
    spec on the same files streamed from the local disk (here, in this test's Ray; the
    in-memory path's equal is test_streaming's)."""
    from orchestrator import Client

    client, env = s3
    local = write_parts(tmp_path / "parts", files=2, rows=2000)
    upload(client, local, "parts")

    def spec(source: str, name: str, streaming: str = "") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            f"name: {name}\n"
            f"data: {{source: '{source}', label: label{streaming}}}\n"
            "model: {type: mlp, params: {hidden_sizes: [32]}}\n"
            "train: {epochs: 3, batch_size: 128, optimizer: {lr: 0.01}}\n"
        )
        return path

    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(spec("s3://lake/parts", "remote")),
         "--json"],
        capture_output=True, text=True, timeout=420, cwd=tmp_path,
        env={**os.environ, **env, "ORCH_HOME": str(tmp_path / "home-remote")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    remote = json.loads(proc.stdout)
    assert remote["data"]["reading"] == "streamed"
    local_run = Client().run(spec(str(local), "local", ", streaming: true"))
    assert local_run.data.reading == "streamed"
    a, b = remote["metrics"]["val_accuracy"], local_run.metrics["val_accuracy"]
    assert a > 0.9 and abs(a - b) <= 0.02, (a, b)
