"""One trial: the pipeline's own trainer (TorchTrainer + DeepSpeed) on one configuration.

Runs inside a Ray Tune trial actor. The trainer's per-epoch events are reported to Tune as
they arrive, so schedulers can stop a weak trial after any epoch; Tune then ends this actor
and the training run it owns. The last epoch is reported once training has returned, with
the path of the final checkpoint (the consolidated model the best trial hands on).

The inner training run is named after the trial, so a trial that Tune restarts (a restored
study, a retried failure) resumes from its own last checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from jobs.data import PreparedData
from jobs.errors import TrainingError
from jobs.spec import ModelSpec, TrainSpec
from jobs.trainer import fit
from tuning.space import apply_values, decode
from tuning.spec import TuneSpec

CHECKPOINT_KEY = "orch_checkpoint"


def run_trial(
    config: dict,
    *,
    sections: dict,
    tune_spec: TuneSpec,
    data: PreparedData,
    seed: int,
    storage_path: str,
) -> None:
    """Tune function trainable. ``sections`` holds the spec's model and train as dicts."""
    import ray.tune

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
    last_epoch = train.epochs

    def report(event: dict) -> None:
        if event["type"] == "epoch" and event["metrics"]["epoch"] < last_epoch:
            ray.tune.report(dict(event["metrics"]))

    result = fit(
        model,
        train,
        data,
        seed=seed,
        run_name=f"trial-{trial_id}",
        storage_path=str(Path(storage_path)),
        on_event=report,
    )
    ray.tune.report({**result.metrics, CHECKPOINT_KEY: result.checkpoint_path})
