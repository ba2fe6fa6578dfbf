"""Attack: a member plants Python packages in the team's data root (and a user in the folder
they submit from), hoping a queued job imports them instead of orch's and runs them with
the cluster's rights. On the real token-auth head and the real server, the job runs from
the installed code only, in its server-owned folder, and still reads its data by the
relative path the member wrote."""

from __future__ import annotations

import pytest

from orchestrator.queue_client import QueueClient
from orchestrator.scheduling.store import JobStore
from tests.helpers import wait_for, write

pytestmark = pytest.mark.slow

# Each planted module records that it ran (in a folder outside every root) and then fails
# loudly, so a job that imported one could neither hide it nor succeed.
PLANT = """\
import pathlib
pathlib.Path({marks!r}, {name!r}).write_text("ran")
raise SystemExit("planted {name} ran")
"""
PLANTED = ("orchestrator/__init__.py", "orchestrator/__main__.py", "jobs/__init__.py",
           "jobs/worker.py", "yaml.py", "ray.py", "torch.py", "sitecustomize.py")  # fmt: skip

SPEC = """\
name: {name}
data: {{source: rows.csv, task: classification, label: y}}
model: {{type: mlp, params: {{hidden_sizes: [8]}}}}
train: {{epochs: 20, batch_size: 16, workers: 1, resources_per_worker: {{CPU: 1}}}}
"""


def _rows() -> str:
    """Two well-separated classes: y is 1 exactly when a > 0.5 (b is noise)."""
    lines = ["a,b,y"]
    for i in range(240):  # distinct rows: the split is a hash of each row
        a, b = (i % 24) / 23, (i * 7 % 29) / 29
        lines.append(f"{a:.3f},{b},{int(a > 0.5)}")
    return "\n".join(lines) + "\n"


def _plant(folder, marks) -> None:
    for relative in PLANTED:
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PLANT.format(marks=str(marks), name=relative.replace("/", ".")))


def test_modules_planted_in_the_team_root_and_the_submit_folder_never_run(
    queue_client, orch_home, tmp_path, monkeypatch
):
    url = queue_client.server_url()
    store = JobStore(queue_client.state_dir / "queue.db")
    ids = store.identities
    root_token = ids.add_user("root", "admins", "admin").token
    ids.add_team("vision")
    team_root = tmp_path / "vision-data"
    team_root.mkdir()
    (team_root / "rows.csv").write_text(_rows())
    ids.set_roots("vision", [str(team_root)])
    alice = ids.add_user("alice", "vision", "member").token
    marks = tmp_path / "marks"
    marks.mkdir()
    _plant(team_root, marks)
    _plant(orch_home, marks)  # where both submit from (queue_client's working directory)
    (orch_home / "rows.csv").write_text(_rows())

    monkeypatch.setenv("ORCH_TOKEN", alice)
    member_job = QueueClient(server=url).submit(write(orch_home, "m", SPEC.format(name="vision-m")))
    monkeypatch.setenv("ORCH_TOKEN", root_token)
    admin_job = QueueClient(server=url).submit(write(orch_home, "a", SPEC.format(name="adm")))

    jobs = (member_job.id, admin_job.id)
    wait_for(lambda: all(store.get(j).terminal for j in jobs), 240, "both jobs to end",
             explain=lambda: [(store.get(j).state, store.get(j).reason) for j in jobs])  # fmt: skip
    assert sorted(p.name for p in marks.iterdir()) == []  # nothing planted ran, anywhere
    for job_id in jobs:
        job = store.get(job_id)
        assert job.state == "succeeded", job.reason
        assert job.result["metrics"]["val_accuracy"] >= 0.85, job.result
    member = store.get(member_job.id)
    assert member.cwd == str(team_root.resolve())  # its data root, read as data only
    store.close()
