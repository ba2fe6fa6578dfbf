"""Chaos: the disk fills up half-way through writing a checkpoint (a small tmpfs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator import Client, JobFailedError
from tests.helpers import write

pytestmark = pytest.mark.slow

SPEC = """\
name: diskfull
data: {{source: sklearn://digits}}
model: {{type: mlp, params: {{hidden_sizes: [256, 256]}}}}
train:
  epochs: {epochs}
  batch_size: 64
  workers: 1
  resources_per_worker: {{CPU: 1}}
  max_failures: 0
  checkpoint: {{keep: 10}}
  storage_path: {storage}
"""


def _checkpoint_bytes(folder: Path) -> int:
    """The largest checkpoint of the one run under ``folder``."""
    (run,) = [p for p in folder.glob("diskfull-*") if p.is_dir()]
    return max(
        sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
        for checkpoint in run.glob("checkpoint_*")
    )


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()

    def mount_with(size_bytes: int) -> Path:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN): {done.stderr.strip()}")
        return mount

    yield mount_with
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_mid_checkpoint_keeps_the_last_one_and_says_why(
    ray_session, tmp_path, small_disk
):
    client = Client(show_worker_logs=False)
    # One epoch on a roomy disk tells how big one checkpoint is.
    roomy = tmp_path / "roomy"
    client.run(write(tmp_path, "size", SPEC.format(epochs=1, storage=roomy)))
    one = _checkpoint_bytes(roomy)

    # Room for one checkpoint and a bit (the sizing run's final one also holds the
    # consolidated model): the second checkpoint's write fails part-way.
    disk = small_disk(int(one * 1.2) // 4096 * 4096 + 4096)
    spec = write(tmp_path, "full", SPEC.format(epochs=4, storage=disk))
    with pytest.raises(JobFailedError, match="No space left on device"):
        client.run(spec)

    (run,) = [p for p in disk.glob("diskfull-*") if p.is_dir()]
    assert sorted(run.glob("checkpoint_*"))  # the last good one is still there

    # ... and loadable: the same run, moved to a roomy disk, resumes from it and finishes.
    moved = tmp_path / "moved"
    shutil.copytree(run, moved / run.name)
    resumed = client.run(
        write(tmp_path, "resume", SPEC.format(epochs=4, storage=moved)), run_name=run.name
    )
    assert resumed.resumed_from_epochs == [1]
    assert resumed.metrics["epoch"] == 4 and resumed.metrics["val_accuracy"] > 0.8
