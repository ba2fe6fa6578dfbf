"""Chaos: a Serve replica dies while a client keeps sending requests."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from sklearn.datasets import load_digits

from orchestrator import Client
from tests.conftest import free_port
from tests.helpers import wait_for
from tests.serve.conftest import pipeline, register_quick_model

pytestmark = pytest.mark.slow
DIGITS = load_digits().data


def _replicas(app: str) -> dict[str, str]:
    """Live replica actors of ``app`` on the connected Ray: actor name -> state."""
    import ray
    from ray.util.state import list_actors

    # this Ray by its address: with no address the state API looks for "the" local Ray,
    # and another test worker's Ray may be running beside it
    address = ray.get_runtime_context().gcs_address
    return {
        a.name: a.state
        for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
        if a.class_name.startswith(f"ServeReplica:{app}:")
    }


def test_a_killed_replica_costs_at_most_1_percent_and_is_replaced(ray_session, tmp_path):
    import ray
    from ray import serve

    port = free_port()
    spec = pipeline(
        tracking={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        register={"model_name": "digits-chaos"},
        serve={
            "name": "chaos",
            "port": port,
            "cpus_per_replica": 0.25,
            "autoscaling": {"min_replicas": 2, "max_replicas": 2},
        },
    )
    register_quick_model(spec)
    try:
        served = Client().serve(spec)
        before = wait_for(lambda: len(_replicas("chaos")) == 2 and _replicas("chaos"), 60, "2")
        statuses: list[int] = []
        stop = threading.Event()

        def send() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    try:
                        reply = http.post(
                            f"{served.endpoint}/predict", json={"instances": DIGITS[:1].tolist()}
                        )
                        statuses.append(reply.status_code)
                    except httpx.HTTPError:
                        statuses.append(0)

        clients = [threading.Thread(target=send) for _ in range(4)]
        for thread in clients:
            thread.start()
        time.sleep(3)
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        replaced = wait_for(
            lambda: (r := _replicas("chaos")) and len(r) == 2 and victim not in r and r,
            90,
            "a new replica",
        )
        time.sleep(3)
        stop.set()
        for thread in clients:
            thread.join()
    finally:
        serve.shutdown()
    failed = [s for s in statuses if s != 200]
    assert len(statuses) > 100
    assert len(failed) <= 0.01 * len(statuses), f"{len(failed)} of {len(statuses)} failed"
    assert victim not in replaced and len(replaced) == 2
