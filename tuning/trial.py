"""One trial: the pipeline's own training loop on one configuration.

Runs inside a Ray Tune trial actor, which Tune reuses for the next trial. A single-worker
trial (``train.runner`` local, or auto with one worker) runs the loop right here and
reports each epoch to Tune with its checkpoint; a multi-worker trial starts Ray Train
workers and relays their epochs. Either way schedulers can stop a weak trial after any
epoch, and the last epoch is reported once training has returned, with the path of the
final checkpoint (the consolidated model the best trial hands on).

The trial's run directory is named after the trial, so a trial that Tune restarts (a
restored study, a retried failure) resumes from its own last checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from jobs.errors import TrainingError
from jobs.plugins import importable
from jobs.prepared import TrainingData
from jobs.spec import ModelSpec, TrainSpec
from jobs.trainer import fit
from jobs.worker import STATE_FILE
from tuning.space import apply_values, decode
from tuning.spec import TuneSpec

CHECKPOINT_KEY = "orch_checkpoint"


def run_trial(
    config: dict,
    *,
    sections: dict,
    tune_spec: TuneSpec,
    data: TrainingData,
    seed: int,
    storage_path: str,
    import_root: str | None = None,
) -> None:
    """Tune function trainable. ``sections`` holds the spec's model and train as dicts;
    ``import_root``: where the driver imported an import-path model from."""
    import ray.tune

    importable(import_root)
    values = decode(tune_spec, config)
    resolved = apply_values(sections, values)
    try:
        model = ModelSpec.model_validate(resolved["model"])
        train = TrainSpec.model_validate(resolved["train"])
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise TrainingError(
            f"this trial's values {values} make an invalid spec: "
            f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        ) from None
    trial_id = ray.tune.get_context().get_trial_id()
    run_dir = Path(storage_path) / f"trial-{trial_id}"
    if train.resolved_runner == "local":
        checkpoint_path, metrics = _train_here(model, train, data, seed, run_dir)
    else:
        checkpoint_path, metrics = _train_on_ray_train(model, train, data, seed, run_dir)
    ray.tune.report({**metrics, CHECKPOINT_KEY: checkpoint_path})


def _train_here(
    model: ModelSpec, train: TrainSpec, data: TrainingData, seed: int, run_dir: Path
) -> tuple[str, dict]:
    """The local runner: the loop runs in this trial actor, reporting each epoch to Tune."""
    from jobs.events import Diverged
    from jobs.local import RunDirCheckpoints, TrialRuntime, run_here
    from jobs.worker import LoopConfig

    diverged: list[str] = []

    def note(event) -> None:
        if isinstance(event, Diverged):
            diverged.append(event.message)

    runtime = TrialRuntime(data, note, RunDirCheckpoints(run_dir, train.checkpoint.keep))
    outcome = run_here(runtime, LoopConfig(model=model, train=train, info=data.info, seed=seed))
    if diverged:
        raise TrainingError(diverged[0])
    if outcome.checkpoint_path is None:
        raise TrainingError("training finished without a final checkpoint")
    state = json.loads((Path(outcome.checkpoint_path) / STATE_FILE).read_text())
    return outcome.checkpoint_path, state["metrics"]


def _train_on_ray_train(
    model: ModelSpec, train: TrainSpec, data: TrainingData, seed: int, run_dir: Path
) -> tuple[str, dict]:
    """Ray Train workers; this actor relays their epochs to Tune as they arrive."""
    import ray.tune

    from jobs.events import EpochEnded

    def report(event) -> None:
        if isinstance(event, EpochEnded) and event.metrics["epoch"] < train.epochs:
            ray.tune.report(dict(event.metrics))

    result = fit(
        model,
        train,
        data,
        seed=seed,
        run_name=run_dir.name,
        storage_path=str(run_dir.parent),
        on_event=report,
    )
    return result.checkpoint_path, result.metrics
