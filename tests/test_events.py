"""Events are typed, and each still reads like the dict earlier releases passed to on_event."""

from __future__ import annotations

import pytest

from jobs.events import EpochEnded
from orchestrator.events import StageStarted


def test_a_typed_event_reads_like_its_old_dict():
    stage = StageStarted("train", mlflow_run_id="abc", epochs=3)
    assert (stage["type"], stage["stage"], stage.get("epochs")) == ("stage", "train", 3)
    data = StageStarted("data")
    assert "stage" in data and "epochs" not in data  # unset fields, as absent keys were
    assert data.get("study", "none") == "none" and data.get("nope", "none") == "none"
    with pytest.raises(KeyError):
        data["nope"]
    epoch = EpochEnded(metrics={"epoch": 1.0}, checkpointed=True)
    assert epoch["type"] == "epoch_ended" and epoch["metrics"] == {"epoch": 1.0}
