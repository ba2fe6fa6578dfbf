"""Driver side of training: a Ray Train TorchTrainer over ``jobs.worker``, with live events.

Workers push events (worker started or resumed, epoch metrics) into a small Ray queue; the
driver relays them to ``on_event`` while ``fit`` runs, which is how the CLI draws its
progress bar and how MLflow gets per-epoch metrics without workers talking to MLflow.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from jobs.data import DataInfo, PreparedData, to_ray_datasets
from jobs.errors import TrainingError
from jobs.export import InferenceModel
from jobs.spec import ModelSpec, TrainSpec
from jobs.worker import DATA_INFO_FILE, MODEL_FILE, STATE_FILE, train_loop_per_worker

EventHandler = Callable[[dict], None]


@dataclass
class TrainResult:
    """What a finished training leaves: final metrics, the consolidated model, its history."""

    metrics: dict
    model: InferenceModel
    info: DataInfo
    checkpoint_path: str
    history: list[dict] = field(default_factory=list)
    resumed_from_epochs: list[int] = field(default_factory=list)
    worker_nodes: dict[int, str] = field(default_factory=dict)  # rank -> Ray node id (last start)


def _load_model(checkpoint_dir: Path, model: ModelSpec) -> tuple[InferenceModel, DataInfo]:
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


def fit(
    model: ModelSpec,
    train: TrainSpec,
    data: PreparedData,
    *,
    seed: int,
    run_name: str,
    storage_path: str,
    on_event: EventHandler | None = None,
) -> TrainResult:
    """Train on the connected Ray cluster and return the consolidated model.

    Raises:
        TrainingError: the run failed beyond ``train.max_failures``; the message has the cause.
    """
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # Ray Train's controller takes one report per health-check tick (2 s by default), which
    # would cap short epochs at one per 2 s. The driver's value propagates to the controller.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    # The event queue lives on this driver's node, like Ray Train's controller: a worker node
    # that dies must not take the run's progress channel with it.
    here = ray.get_runtime_context().get_node_id()
    events = Queue(
        actor_options={
            "num_cpus": 0,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=False),
        }
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model": model.model_dump(),
            "train": train.model_dump(),
            "data_info": data.info.model_dump(),
            "seed": seed,
            "events": events,
        },
        scaling_config=ScalingConfig(
            num_workers=train.workers,
            use_gpu=train.uses_gpu,
            resources_per_worker=dict(train.resources_per_worker),
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=train.checkpoint.keep),
        ),
        datasets=to_ray_datasets(data),
        # Every worker streams the whole split and keeps its own slice of each global batch.
        # preserve_order: all workers must see rows in the same order for their slices to
        # partition each global batch.
        dataset_config=DataConfig(
            datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)
        ),
    )

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    history: list[dict] = []
    resumed: list[int] = []
    nodes: dict[int, str] = {}
    diverged: list[str] = []

    def relay(event: dict) -> None:
        if event["type"] == "diverged":
            diverged.append(event["message"])
        elif event["type"] == "epoch":
            history.append(event["metrics"])
        elif event["type"] == "worker_started":
            if event.get("node_id"):
                nodes[event["rank"]] = event["node_id"]
            if event["rank"] == 0 and event["resumed_from_epoch"]:
                resumed.append(event["resumed_from_epoch"])
        if on_event is not None:
            on_event(event)

    thread = threading.Thread(target=run, name="orch-train-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            try:
                relay(events.get(timeout=0.5))
            except Empty:
                pass
        while not events.empty():
            relay(events.get_nowait())
    finally:
        ray.kill(events.actor)

    if diverged:
        raise TrainingError(diverged[0])
    if "error" in outcome:
        raise TrainingError(describe_failure(outcome["error"])) from outcome["error"]
    result = outcome["result"]
    if result.error is not None:
        raise TrainingError(describe_failure(result.error))
    if result.checkpoint is None:
        raise TrainingError("training finished without a final checkpoint")
    with result.checkpoint.as_directory() as ckpt_dir:
        inference, info = _load_model(Path(ckpt_dir), model)
        state = json.loads((Path(ckpt_dir) / STATE_FILE).read_text())
    return TrainResult(
        metrics=state["metrics"],
        model=inference,
        info=info,
        checkpoint_path=result.checkpoint.path,
        history=history,
        resumed_from_epochs=resumed,
        worker_nodes=nodes,
    )


def describe_failure(exc: BaseException) -> str:
    """One readable line from Ray's nested training errors."""
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = [line for line in f"{type(cause).__name__}: {cause}".splitlines() if line.strip()]
    return "training failed: " + lines[-1]
