"""MLflow's UI opens an experiment on its training runs only when it is tagged as model
training (``mlflow.experimentKind``); every experiment orch logs to carries that tag."""

from __future__ import annotations

import mlflow

from jobs.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, RunTracker, ensure_experiment


def test_a_new_experiment_opens_on_its_training_runs(orch_home):
    uri = f"sqlite:///{orch_home / 'kind.db'}"

    tracker = RunTracker(uri, "digits", artifact_root=str(orch_home / "artifacts"))
    tracker.start("digits-mlp-1", tags={"orch.stage": "train"})
    tracker.end("FINISHED")

    experiment = mlflow.MlflowClient(uri).get_experiment(tracker.experiment_id)
    assert experiment.name == "digits"
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert experiment.artifact_location.endswith("/artifacts/digits")


def test_an_untagged_experiment_is_tagged_and_a_chosen_kind_is_kept(orch_home):
    uri = f"sqlite:///{orch_home / 'kind.db'}"
    client = mlflow.MlflowClient(uri)
    older = client.create_experiment("made-by-an-older-orch")
    chosen = client.create_experiment(
        "shared", tags={EXPERIMENT_KIND_TAG: "genai_development", "team": "nlp"}
    )

    assert RunTracker(uri, "made-by-an-older-orch").experiment_id == older
    assert ensure_experiment(client, "shared") == chosen

    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment(chosen).tags == {
        EXPERIMENT_KIND_TAG: "genai_development",
        "team": "nlp",
    }
