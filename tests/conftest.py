"""Shared fixtures: one Ray per test session, an isolated ./.orch and MLflow store per test."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store as MLflow creates it, before anything is logged. Creating one
    runs MLflow's schema migrations: about 1.2 s of CPU in a process that has created one
    before, 2 s in a fresh one. Each test's store starts as a copy of this one instead."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def orch_home(request, tmp_path, monkeypatch) -> Path:
    """Each test gets its own embedded store (ORCH_HOME) and SQLite MLflow; none stays open.

    The MLflow store is a copy of ``empty_mlflow_store``: the same tables and rows (our
    experiments name their own artifact location), without paying MLflow's migrations per
    test. A test marked ``fresh_mlflow_store`` starts with no store, to see MLflow create it.
    """
    import mlflow

    home = tmp_path / "orch-home"
    store = f"sqlite:///{home / 'mlflow.db'}"
    monkeypatch.setenv("ORCH_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    # The process-wide URIs too: code run in-process sets them (mlflow.set_tracking_uri), and
    # they outrank the environment, so a later test would read an earlier test's store.
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    home.mkdir()
    if request.node.get_closest_marker("fresh_mlflow_store") is None:
        shutil.copyfile(request.getfixturevalue("empty_mlflow_store"), home / "mlflow.db")
    yield home

    active = mlflow.active_run()
    if active is not None:
        mlflow.end_run()
        pytest.fail(f"test left MLflow run {active.info.run_id} open")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (starting Ray costs seconds on 2 cores)."""
    import ray

    from orchestrator.runtime import init_local_ray

    init_local_ray(
        num_cpus=2,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


def free_port() -> int:
    """A loopback port free right now (for servers a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `make test` runs two pytest-xdist workers (`-n 2 --dist loadgroup`), each with its own
# embedded Ray. Tests on clusters started with `ray start` (the shared head, `orch cluster
# up`) are one unit of work: `ray start` records its cluster as the one `--address auto`
# finds, so they run one after another in one worker, never beside another `ray start`.
RAY_START_GROUP = "ray-start-clusters"
RAY_START_FILES = ("tests/chaos/test_node_loss.py", "tests/orchestrator/test_cluster_join.py")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(session, config, items):
    """One test file is one unit of work (its module fixtures, e.g. the serving tests'
    trained model, are paid once), but the `ray start` tests are one unit together.

    Order, which xdist keeps (``--no-loadscope-reorder``): the `ray start` unit first (the
    longest), then the files with slow tests, then the quick ones, so neither worker is left
    alone with a long file at the end. In the unit, the tests on the shared head
    (``queue_head``) come last, one after another: the head starts once (about 10 s with
    its stop) and does not idle under the other tests."""
    on_head = [item for item in items if "queue_head" in getattr(item, "fixturenames", ())]
    groups = {}
    for item in items:
        file = item.nodeid.split("::", 1)[0]
        on_ray_start = item in on_head or file in RAY_START_FILES
        groups[item] = RAY_START_GROUP if on_ray_start else file
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    slow_groups = {groups[item] for item in items if item.get_closest_marker("slow")}

    def rank(item) -> int:
        group = groups[item]
        return 0 if group == RAY_START_GROUP else 1 if group in slow_groups else 2

    before_head = [item for item in items if rank(item) == 0 and item not in on_head]
    rest = sorted((item for item in items if rank(item) > 0), key=rank)  # stable
    items[:] = before_head + on_head + rest


def pytest_collection_finish(session):
    """A worker whose tests lost their group would start a second shared cluster beside
    the first (pytest 9.2 moved the node id where pytest-xdist 3.8 writes the group)."""
    config = session.config
    if not (hasattr(config, "workerinput") and config.getvalue("loadgroup")):
        return
    ungrouped = [item.nodeid for item in session.items if "@" not in item.nodeid]
    if ungrouped:
        raise pytest.UsageError(
            f"pytest-xdist did not group {ungrouped[0]} (pytest {pytest.__version__}): "
            "keep pytest within the range pyproject.toml pins"
        )


def pytest_configure(config):
    """Ray writes the default token file (~/.ray/auth_token) the first time a cluster
    starts; two workers starting their Ray at once must not each write a different one.
    The pytest process makes sure it exists before the workers start."""
    # the groups are set on every test, also when pytest runs without pytest-xdist
    config.addinivalue_line("markers", "xdist_group(name): run in one pytest-xdist worker")
    if hasattr(config, "workerinput") or os.environ.get("RAY_AUTH_TOKEN"):
        return
    if os.environ.get("RAY_AUTH_TOKEN_PATH") or (Path.home() / ".ray" / "auth_token").exists():
        return
    import subprocess
    import sys

    ray_cli = Path(sys.executable).with_name("ray")
    subprocess.run([str(ray_cli), "get-auth-token", "--generate"], check=True,
                   capture_output=True, timeout=120)  # fmt: skip


@pytest.fixture(scope="session")
def queue_head(tmp_path_factory):
    """A real `ray start --head` (2 CPUs, token auth on) for the queue, address, security and
    orchestrator-kill tests; each test leaves it idle (``assert_head_left_idle``). The queue
    servers they start are stopped by their recorded PIDs, then the head by its group."""
    import signal

    from cluster.local import start_head
    from tests.helpers import kill_server

    # Ray's Python proxy here, HAProxy on the embedded Ray: both ingress modes get served
    head = start_head(tmp_path_factory.mktemp("queue-head"), num_cpus=2, ingress="proxy")
    head.queue_dirs = []
    yield head
    for queue_dir in head.queue_dirs:
        kill_server(queue_dir, signal.SIGTERM)
    head.stop()


@pytest.fixture
def queue_client(queue_head, orch_home, monkeypatch):
    """The SDK's queue client on ``queue_head``, with this test's own ORCH_HOME (own queue)."""
    from orchestrator.queue_client import QueueClient

    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", queue_head.token_path)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.chdir(orch_home)
    client = QueueClient(queue_head.dashboard_url)
    queue_head.queue_dirs.append(client.state_dir)
    yield client
    assert_head_left_idle(queue_head)


def assert_head_left_idle(head, timeout_s: float = 120) -> None:
    """A test that shares a head leaves it idle: no Ray job running but the queue servers,
    every CPU free, no live placement group. Jobs a failed test left behind are stopped (we
    started them) so the next test still starts clean, and this one fails saying what was
    left."""
    from tests.helpers import head_idle_problems, stop_orch_jobs, wait_for

    try:
        wait_for(
            lambda: not head_idle_problems(head.dashboard_url, head.token),
            timeout_s,
            "the shared head to be idle",
            explain=lambda: "\n".join(head_idle_problems(head.dashboard_url, head.token)),
        )
    except AssertionError as error:
        stopped = stop_orch_jobs(head.dashboard_url, head.token)
        pytest.fail(f"the test left the shared head busy: {error}\n(stopped: {stopped})")
