"""One small actor per driver that carries training events from workers to the driver.

Workers (Ray Train's, or the local runner's actor) ``put`` typed events under their run's
key; the driver ``take``s its run's events every fraction of a second. One hub serves
every run this driver starts (a study's trials, a notebook's repeated fits), so a run no
longer pays for starting its own queue actor. The hub lives on the driver's node, like
Ray Train's controller: a worker node that dies must not take the progress channel along.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import ray


class _Hub:
    def __init__(self):
        self._events: dict[str, list] = defaultdict(list)

    def put(self, run_key: str, event) -> None:
        self._events[run_key].append(event)

    def take(self, run_key: str) -> list:
        return self._events.pop(run_key, [])


_lock = threading.Lock()
# (node id, Ray job id) -> this driver's hub: job ids restart at 01000000 in a new Ray (a
# notebook's ray.shutdown() and ray.init()), node ids do not, so a handle to the last
# Ray's hub is never reused
_hubs: dict[tuple[str, str], ray.actor.ActorHandle] = {}


def event_hub() -> ray.actor.ActorHandle:
    """This driver's hub, started on first use (one per Ray job, i.e. per connection)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    context = ray.get_runtime_context()
    job = (context.get_node_id(), context.get_job_id())
    with _lock:
        hub = _hubs.get(job)
        if hub is None:
            hub = (
                ray.remote(_Hub)
                .options(
                    num_cpus=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(
                        context.get_node_id(), soft=False
                    ),
                )
                .remote()
            )
            _hubs[job] = hub
    return hub
