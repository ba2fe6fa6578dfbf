"""Events are typed: matched on their class, read by their fields, never as dicts."""

from __future__ import annotations

import pickle

import pytest

from jobs.events import EpochEnded, Event
from orchestrator.events import StageStarted


def test_an_event_is_read_by_its_fields_and_named_by_its_kind():
    stage = StageStarted("train", mlflow_run_id="abc", epochs=3)
    assert (stage.kind, stage.stage, stage.epochs, stage.mlflow_run_id) == (
        "stage", "train", 3, "abc",
    )  # fmt: skip
    epoch = EpochEnded(metrics={"epoch": 1.0}, checkpointed=True)
    assert isinstance(epoch, Event) and epoch.kind == "epoch_ended"
    with pytest.raises(TypeError):
        epoch["metrics"]  # no dict reading: match on the class
    assert pickle.loads(pickle.dumps(epoch)) == epoch  # what the event hub sends
