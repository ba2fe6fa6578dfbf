"""Driver side of training: the loop of ``jobs.worker`` under one of two runners.

``train.runner`` (``auto`` = local for one worker) picks a Ray Train TorchTrainer over N
workers or the local runner (``jobs.local``: one Ray task). Either way the loop sends typed
events (``jobs.events``) through this driver's ``EventHub``; the driver relays them to
``on_event`` while training runs, which is how the CLI draws its progress bar and how
MLflow gets per-epoch metrics without workers talking to MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.errors import TrainingError
from jobs.events import Diverged, EpochEnded, TrainingEvent, WorkerStarted
from jobs.loop_config import DATA_INFO_FILE, MODEL_FILE, STATE_FILE, LoopConfig
from jobs.plugins import import_root
from jobs.prepared import DataInfo, StreamedData, TrainingData
from jobs.profiling import PROFILE_DIR, StepProfile, profiles_in
from jobs.spec import ModelSpec, TrainSpec

if TYPE_CHECKING:
    from jobs.export import InferenceModel

# torch (about 2 s to import here) is imported where a model is built or read back: a driver
# on the local runner hands its training over first (see jobs.loop_config).

EventHandler = Callable[[TrainingEvent], None]
POLL_S = 0.25  # how often the driver collects events
# Ray Train settings, read in the driver or propagated from it to the controller.
RAY_TRAIN_SETTINGS = {
    # the controller takes one report per health-check tick (2 s by default), which would
    # cap short epochs at one per 2 s
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    # one actor less per run: it drains workers on a cloud's spot-preemption notice, which
    # nothing here promises (a lost node is a worker failure, resumed from a checkpoint)
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Prometheus gauges of Ray Train's own internals; our metrics go to MLflow
    "RAY_TRAIN_METRICS_ENABLED": "0",
}


@dataclass
class TrainResult:
    """What a finished training leaves: final metrics, the consolidated model, its history."""

    metrics: dict
    model: InferenceModel
    info: DataInfo
    checkpoint_path: str
    runner: str = "ray-train"  # which runner trained it: ray-train | local
    history: list[dict] = field(default_factory=list)
    resumed_from_epochs: list[int] = field(default_factory=list)
    worker_nodes: dict[int, str] = field(default_factory=dict)  # rank -> Ray node id (last start)
    profile: list[StepProfile] = field(default_factory=list)  # train.profile's, by rank
    profile_dir: str | None = None  # a local folder of its files (trace, table, breakdown)


def _load_model(checkpoint_dir: Path, model: ModelSpec) -> tuple[InferenceModel, DataInfo]:
    import torch

    from jobs.export import InferenceModel

    info = DataInfo.model_validate_json((checkpoint_dir / DATA_INFO_FILE).read_text())
    state = torch.load(checkpoint_dir / MODEL_FILE, weights_only=True)
    inference = InferenceModel.build(model, info)
    inference.net.load_state_dict(state)
    return inference.eval(), info


def load_trained_model(checkpoint_path: str, model: ModelSpec) -> tuple[InferenceModel, dict]:
    """The consolidated model and final metrics of a finished run's last checkpoint.

    Raises:
        TrainingError: the checkpoint is not a finished run's final one.
    """
    from ray.train import Checkpoint

    with Checkpoint(checkpoint_path).as_directory() as ckpt_dir:
        if not (Path(ckpt_dir) / MODEL_FILE).exists():
            raise TrainingError(f"{checkpoint_path} is not the final checkpoint of a finished run")
        inference, _ = _load_model(Path(ckpt_dir), model)
        state = json.loads((Path(ckpt_dir) / STATE_FILE).read_text())
    return inference, state["metrics"]


class _Relay:
    """Hands the run's events to ``on_event`` and keeps what the result reports."""

    def __init__(self, on_event: EventHandler | None):
        self.on_event = on_event
        self.history: list[dict] = []
        self.resumed: list[int] = []
        self.nodes: dict[int, str] = {}
        self.diverged: list[str] = []
        self.runner: str | None = None

    def __call__(self, event: TrainingEvent) -> None:
        if isinstance(event, Diverged):
            self.diverged.append(event.message)
        elif isinstance(event, EpochEnded):
            if event.replayed and not self._lost(event.metrics["epoch"]):
                return
            self.history.append(event.metrics)
        elif isinstance(event, WorkerStarted):
            self.runner = event.runner
            if event.node_id:
                self.nodes[event.rank] = event.node_id
            if event.rank == 0 and event.resumed_from_epoch:
                self.resumed.append(event.resumed_from_epoch)
        if self.on_event is not None:
            self.on_event(event)

    def _lost(self, epoch: float) -> bool:
        """A replayed epoch was lost in this run: earlier epochs arrived, this one never did.
        (A run resumed by a new driver starts its history after the checkpoint's epoch.)"""
        seen = {metrics["epoch"] for metrics in self.history}
        return bool(seen) and epoch not in seen


def _drain_while(hub, run_key: str, relay: _Relay, running: Callable[[], bool]) -> None:
    """Relay the hub's events for ``run_key`` until ``running()`` is false, then the rest."""
    import ray

    while running():
        for event in ray.get(hub.take.remote(run_key)):
            relay(event)
        time.sleep(POLL_S)
    for event in ray.get(hub.take.remote(run_key)):
        relay(event)


def fit(
    model: ModelSpec,
    train: TrainSpec,
    data: TrainingData,
    *,
    seed: int,
    run_name: str,
    storage_path: str,
    on_event: EventHandler | None = None,
    local_worker=None,
) -> TrainResult:
    """Train on the connected Ray cluster and return the consolidated model.

    ``train.runner`` picks how: Ray Train workers, or the local runner (one Ray task) for
    a single worker. A run named like an earlier one under ``storage_path`` resumes from
    its latest checkpoint, whichever runner wrote it. ``local_worker``: a ``LocalWorker``
    started earlier (``jobs.local_actor.start_local_worker``) for the local runner to use.

    Raises:
        TrainingError: the run failed beyond ``train.max_failures``; the message has the cause.
    """
    from jobs.event_hub import event_hub

    job = LoopConfig(
        model=model, train=train, info=data.info, seed=seed, import_root=import_root(model.type)
    )
    hub = event_hub()
    run_key = f"{run_name}-{uuid.uuid4().hex[:8]}"
    relay = _Relay(on_event)
    run_dir = Path(storage_path) / run_name
    if train.resolved_runner == "local":
        checkpoint_path = _fit_local(job, data, run_dir, hub, run_key, relay, local_worker)
    else:
        checkpoint_path = _fit_ray_train(job, data, run_name, storage_path, hub, run_key, relay)
    with _checkpoint_directory(checkpoint_path) as ckpt_dir:
        inference, info = _load_model(ckpt_dir, model)
        state = json.loads((ckpt_dir / STATE_FILE).read_text())
        profile, profile_dir = _profile_of(ckpt_dir, Path(checkpoint_path).is_dir())
    return TrainResult(
        metrics=state["metrics"],
        model=inference,
        info=info,
        checkpoint_path=checkpoint_path,
        runner=train.resolved_runner,
        history=relay.history,
        resumed_from_epochs=relay.resumed,
        worker_nodes=relay.nodes,
        profile=profile,
        profile_dir=profile_dir,
    )


def read_profile(checkpoint_path: str) -> tuple[list[StepProfile], str | None]:
    """A checkpoint's step profiles (``train.profile``) and a local folder of their files;
    ``([], None)`` when it holds none."""
    with _checkpoint_directory(checkpoint_path) as ckpt_dir:
        return _profile_of(ckpt_dir, Path(checkpoint_path).is_dir())


def _profile_of(ckpt_dir: Path, stays: bool) -> tuple[list[StepProfile], str | None]:
    """The checkpoint's step profiles and a local folder of their files (copied out of a
    downloaded checkpoint, which is deleted once read)."""
    profiles = profiles_in(ckpt_dir)
    if not profiles:
        return [], None
    folder = ckpt_dir / PROFILE_DIR
    if not stays:
        folder = Path(
            shutil.copytree(folder, Path(tempfile.mkdtemp(prefix="orch-profile-")) / PROFILE_DIR)
        )
    return profiles, str(folder)


@contextmanager
def _checkpoint_directory(checkpoint_path: str) -> Iterator[Path]:
    """The checkpoint as a local directory. A local path is read where it lies: importing
    ``ray.train`` for its ``Checkpoint`` (about 1 s here) would delay every local-runner run;
    any other storage goes through Ray Train's ``Checkpoint``, which downloads it."""
    if Path(checkpoint_path).is_dir():
        yield Path(checkpoint_path)
        return
    from ray.train import Checkpoint

    with Checkpoint(checkpoint_path).as_directory() as ckpt_dir:
        yield Path(ckpt_dir)


def _fit_local(
    job: LoopConfig,
    data: TrainingData,
    run_dir: Path,
    hub,
    run_key: str,
    relay: _Relay,
    worker=None,
) -> str:
    """One ``LocalWorker`` actor holding the worker's resources runs the loop.

    An actor that dies (its process killed, its node lost) is replaced, up to
    ``train.max_failures`` times, and the new one resumes from the run's latest checkpoint.
    """
    import ray

    from jobs.local_actor import start_local_worker
    from jobs.streaming import data_cpu_share

    train = job.train
    data_ref = ray.put(data)
    share = data_cpu_share(train, data)
    if share and worker is not None:  # started early with all of the worker's CPU
        ray.kill(worker)
        worker = None
    failures = 0
    while True:
        worker = worker or start_local_worker(train, share)
        ref = worker.run.remote(job, data_ref, str(run_dir), hub, run_key)
        _drain_while(hub, run_key, relay, lambda ref=ref: not ray.wait([ref], timeout=0)[0])
        try:
            outcome = ray.get(ref)
            break
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, TrainingError):
                raise TrainingError(str(exc.cause)) from None
            error: BaseException = exc
        except ray.exceptions.RayError as exc:  # the actor or its node died
            error = exc
        finally:
            ray.kill(worker)  # frees its resources; a retry starts a fresh process
            worker = None
        failures += 1
        if 0 <= train.max_failures < failures:
            raise TrainingError(describe_failure(error)) from error
    if relay.diverged:
        raise TrainingError(relay.diverged[0])
    if outcome.checkpoint_path is None:
        raise TrainingError("training finished without a final checkpoint")
    return outcome.checkpoint_path


def _fit_ray_train(
    job: LoopConfig,
    data: TrainingData,
    run_name: str,
    storage_path: str,
    hub,
    run_key: str,
    relay: _Relay,
) -> str:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from jobs.local import latest_checkpoint_in
    from jobs.rank_reader import reads_by_rank
    from jobs.ray_internals import in_memory_data_trainer
    from jobs.streaming import worker_resources
    from jobs.worker import train_loop_per_worker

    train = job.train
    for name, value in RAY_TRAIN_SETTINGS.items():  # a value the user set wins
        os.environ.setdefault(name, value)
    by_ray_data = isinstance(data, StreamedData) and not reads_by_rank(data)
    resume_from = latest_checkpoint_in(Path(storage_path) / run_name)
    trainer = in_memory_data_trainer()(
        train_loop_per_worker,
        train_loop_config={
            "job": job,
            # in memory, or files each rank reads: through the object store, no Ray Data
            # pipeline to start
            "data": None if by_ray_data else ray.put(data),
            "events": hub,
            "run_key": run_key,
            # a checkpoint the other runner wrote under this run's name (Ray Train resumes
            # from its own checkpoints first)
            "resume_from": str(resume_from) if resume_from else None,
        },
        scaling_config=ScalingConfig(
            num_workers=train.workers,
            use_gpu=train.uses_gpu,
            resources_per_worker=worker_resources(train, data),
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=train.checkpoint.keep),
        ),
        **_streamed_datasets(train, data),
    )
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="orch-train-fit", daemon=True)
    thread.start()
    _drain_while(hub, run_key, relay, thread.is_alive)
    if relay.diverged:
        raise TrainingError(relay.diverged[0])
    if "error" in outcome:
        raise TrainingError(describe_failure(outcome["error"])) from outcome["error"]
    result = outcome["result"]
    if result.error is not None:
        raise TrainingError(describe_failure(result.error))
    if result.checkpoint is None:
        raise TrainingError("training finished without a final checkpoint")
    return result.checkpoint.path


def _streamed_datasets(train: TrainSpec, data: TrainingData) -> dict:
    """TorchTrainer's ``datasets`` and ``dataset_config``: for data Ray Data streams (an
    image folder, a bundled set) a shard per data-parallel rank, read by Ray Data tasks
    within the CPU the workers leave them; none for files, which each rank reads itself."""
    from ray.train import DataConfig

    from jobs.rank_reader import reads_by_rank
    from jobs.streaming import data_cpu_share, datasets_of, rank_shards_config

    if not isinstance(data, StreamedData) or reads_by_rank(data):
        return {"datasets": None, "dataset_config": DataConfig()}
    data_cpus = data_cpu_share(train, data) * train.workers
    return {
        "datasets": datasets_of(data, data_cpus),
        "dataset_config": rank_shards_config(train.data_parallel_degree, data_cpus),
    }


def describe_failure(exc: BaseException) -> str:
    """One readable line from Ray's nested training errors."""
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = [line for line in f"{type(cause).__name__}: {cause}".splitlines() if line.strip()]
    return "training failed: " + lines[-1]
