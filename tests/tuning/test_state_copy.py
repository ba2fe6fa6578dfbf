"""A study killed while Ray Tune copies its state still resumes from the last whole one."""

from __future__ import annotations

import json

import pytest

from tuning.state_copy import COPY_DIR, StateCopy, put_back_if_cut_off


def write_state(tune, trials: list[str]) -> None:
    (tune / "experiment_state-2026-12-02_07-30-21.json").write_text(json.dumps(trials))
    (tune / "searcher-state-2026-12-02_07-30-21.pkl").write_bytes(bytes(len(trials)))


def test_a_cut_off_state_is_replaced_by_the_last_whole_copy(tmp_path):
    tune = tmp_path / "tune"
    tune.mkdir()
    copy = StateCopy(str(tune))
    write_state(tune, ["t1"])
    copy.refresh()  # first sight: Tune may still be writing, nothing copied yet
    assert not (tune / COPY_DIR).exists()
    copy.refresh()  # unchanged since the last step: whole, copied
    assert json.loads((tune / COPY_DIR / "experiment_state-2026-12-02_07-30-21.json").read_text())
    write_state(tune, ["t1", "t2"])
    copy.refresh()
    copy.refresh()
    state = tune / "experiment_state-2026-12-02_07-30-21.json"
    assert json.loads((tune / COPY_DIR / state.name).read_text()) == ["t1", "t2"]

    # the driver is killed while Tune copies a newer state over it
    state.write_text(json.dumps(["t1", "t2", "t3"])[:9])
    copy.refresh()
    copy.refresh()  # a cut-off state is never copied
    assert json.loads((tune / COPY_DIR / state.name).read_text()) == ["t1", "t2"]

    assert put_back_if_cut_off(tune) is True
    assert json.loads(state.read_text()) == ["t1", "t2"]
    assert (tune / "searcher-state-2026-12-02_07-30-21.pkl").read_bytes() == bytes(2)
    assert put_back_if_cut_off(tune) is False  # whole now: left alone


def test_a_cut_off_state_without_a_copy_is_refused_and_a_missing_one_left_to_tune(tmp_path):
    assert put_back_if_cut_off(tmp_path / "never-started") is False
    (tmp_path / "experiment_state-x.json").write_text('{"trial_data": [')
    with pytest.raises(ValueError, match="cut off while being written"):
        put_back_if_cut_off(tmp_path)
