"""Searchers and schedulers, driven directly (no trials run): seeds, stop decisions, reasons."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from orchestrator import load_spec
from tuning import events
from tuning.search import create_scheduler, create_searcher
from tuning.space import param_space
from tuning.study import _StudyCallback

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def tune_spec(**search):
    spec = load_spec(EXAMPLES / "digits.yaml", check_data=False).tune
    return spec.model_copy(update={"search": spec.search.model_copy(update=search)})


def first_proposals(tune, n: int = 12) -> list[dict]:
    searcher = create_searcher(tune)
    assert searcher.set_search_properties(tune.metric, tune.resolved_mode, param_space(tune))
    proposals = []
    for i in range(n):
        config = searcher.suggest(f"t{i}")
        proposals.append(config)
        # feed a result back so the model-based part of the searcher has data
        searcher.on_trial_complete(f"t{i}", {tune.metric: config["train.optimizer.lr"]})
    return proposals


@pytest.mark.parametrize("algorithm", ["bayesian", "gp"])
def test_same_seed_proposes_the_same_first_configurations(algorithm):
    first = first_proposals(tune_spec(algorithm=algorithm, seed=7))
    again = first_proposals(tune_spec(algorithm=algorithm, seed=7))
    other = first_proposals(tune_spec(algorithm=algorithm, seed=8))
    assert first == again
    assert first != other


def test_bayesian_is_optuna_tpe_and_gp_is_optuna_gp():
    import optuna

    tpe = create_searcher(tune_spec(algorithm="bayesian"))
    gp = create_searcher(tune_spec(algorithm="gp"))
    assert isinstance(tpe._sampler, optuna.samplers.TPESampler)
    assert isinstance(gp._sampler, optuna.samplers.GPSampler)


def test_tpe_concentrates_on_the_better_region():
    """After the random start-up trials, TPE proposes large lr more often when it pays."""
    proposals = first_proposals(tune_spec(algorithm="bayesian", seed=0), n=40)
    startup, modelled = proposals[:10], proposals[20:]
    mean = lambda cs: sum(c["train.optimizer.lr"] for c in cs) / len(cs)  # noqa: E731
    assert mean(modelled) > 1.5 * mean(startup)


class FakeTrial(SimpleNamespace):
    """What the schedulers read of a Trial: its id (and they hash it)."""

    __hash__ = object.__hash__


def fake_trial(trial_id: str):
    return FakeTrial(trial_id=trial_id, config={}, evaluated_params={})


@contextmanager
def study_events(study: str):
    """The events a scheduler emits for ``study`` while the block runs."""
    got: list[dict] = []
    events.register(study, got.append)
    try:
        yield got
    finally:
        events.unregister(study)


def drive(scheduler, trials, results) -> dict:
    """Feed (trial, epoch, value) results; return the decisions."""
    decisions = {}
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    for trial, epoch, value in results:
        decisions[(trial.trial_id, epoch)] = scheduler.on_trial_result(
            None, trial, {"epoch": epoch, "val_accuracy": value}
        )
    return decisions


def test_asha_stops_a_weak_trial_at_its_rung_and_says_why():
    tune = tune_spec()  # asha, grace 2, reduction 3
    scheduler = create_scheduler(tune, epochs=20, study="unit")
    scheduler.set_search_properties("val_accuracy", "max")
    with study_events("unit") as got:
        trials = [fake_trial(f"t{i}") for i in range(4)]
        results = [(t, 2, v) for t, v in zip(trials, (0.9, 0.95, 0.97, 0.5), strict=True)]
        decisions = drive(scheduler, trials, results)
    assert decisions[("t3", 2)] == TrialScheduler.STOP
    assert decisions[("t2", 2)] == TrialScheduler.CONTINUE
    (stop,) = got
    assert stop.trial_id == "t3" and stop.epoch == 2
    assert stop.reason.startswith("ASHA: val_accuracy 0.5 at epoch 2 is below the rung cutoff")
    assert "of the 3 trials that reached epoch 2" in stop.reason


def test_a_trial_reaching_its_last_epoch_is_not_reported_as_stopped():
    scheduler = create_scheduler(tune_spec(), epochs=2, study="unit2")
    scheduler.set_search_properties("val_accuracy", "max")
    with study_events("unit2") as got:
        trial = fake_trial("t0")
        decisions = drive(scheduler, [trial], [(trial, 2, 0.9)])
    assert decisions[("t0", 2)] == TrialScheduler.STOP  # ASHA ends trials at max_t
    assert got == []


def test_median_rule_explains_the_median_it_compared_with():
    tune = tune_spec()
    tune = tune.model_copy(
        update={"early_stopping": tune.early_stopping.model_copy(update={"type": "median"})}
    )
    scheduler = create_scheduler(tune, epochs=10, study="unit3")
    scheduler.set_search_properties("val_accuracy", "max")
    with study_events("unit3") as got:
        trials = [fake_trial(f"t{i}") for i in range(4)]
        steady = list(zip(trials[:3], (0.8, 0.85, 0.9), strict=True))
        results = [(t, e, v) for e in (1, 2, 3) for t, v in steady]
        results.append((trials[3], 3, 0.3))
        drive(scheduler, trials, results)
    (stop,) = got
    assert stop.trial_id == "t3"
    assert (
        "median rule: best val_accuracy 0.3 by epoch 3 is worse than the median 0.85" in stop.reason
    )


def test_study_stops_after_max_failed_trials():
    callback = _StudyCallback("unit4", max_failed_trials=2)
    for i in range(2):
        assert not callback.stop_all()
        callback.failed.add(f"t{i}")
    assert callback.stop_all()
    assert not _StudyCallback("unit5", max_failed_trials=None).stop_all()


@pytest.mark.parametrize("algorithm", ["random", "grid"])
def test_random_and_grid_searchers_respect_the_concurrency_cap(algorithm):
    """With 2 trials live the searcher proposes no third; one ending lets the next in."""
    from ray.tune.experiment import Experiment

    spec = tune_spec(algorithm="random")
    space = {"train.batch_size": spec.space["train.batch_size"]}
    tune = spec.model_copy(
        update={"space": space, "search": spec.search.model_copy(update={"algorithm": algorithm})}
    )
    searcher = create_searcher(tune, max_concurrent=2)
    searcher.add_configurations(
        Experiment("cap", run=lambda config: None, config=param_space(tune), num_samples=3)
    )
    first, second = searcher.next_trial(), searcher.next_trial()
    assert first is not None and second is not None
    assert searcher.next_trial() is None  # two live: the cap holds
    searcher.on_trial_complete(first.trial_id)
    assert searcher.next_trial() is not None


def test_failure_count_survives_a_resume():
    callback = _StudyCallback("unit6", max_failed_trials=3)
    callback.failed |= {"t0", "t1"}
    restored = _StudyCallback("unit6", max_failed_trials=3)
    restored.set_state(callback.get_state())
    assert restored.failed == {"t0", "t1"}


def test_hyperband_is_asynchronous_brackets_with_growing_grace_periods():
    tune = tune_spec()
    tune = tune.model_copy(
        update={"early_stopping": tune.early_stopping.model_copy(update={"type": "hyperband"})}
    )
    scheduler = create_scheduler(tune, epochs=20, study="unit7")
    # grace 2, reduction 3, 20 epochs: brackets whose first rungs are at epochs 2, 6 and 18
    firsts = sorted(min(m for m, _ in bracket._rungs) for bracket in scheduler._brackets)
    assert firsts == [2, 6, 18]
    assert scheduler.label == "HyperBand"


def test_grid_proposes_every_combination_exactly_once():
    """`search.algorithm: grid` is Tune's grid over the choice and int dimensions."""
    from ray.tune.search.variant_generator import generate_variants

    from tuning.space import decode
    from tuning.spec import TuneSpec

    tune = TuneSpec.model_validate(
        {
            "metric": "val_accuracy",
            "search": {"algorithm": "grid"},
            "space": {
                "model.params.hidden_sizes": {"choice": [[64], [128, 64]]},
                "train.batch_size": {"choice": [32, 64, 128]},
                "train.epochs": {"int": [2, 3]},
            },
        }
    )
    assert tune.planned_trials() == tune.grid_size() == 12
    proposed = [decode(tune, config) for _, config in generate_variants(param_space(tune))]
    as_keys = sorted(json.dumps(values, sort_keys=True) for values in proposed)
    assert len(as_keys) == len(set(as_keys)) == 12
    assert {tuple(v["model.params.hidden_sizes"]) for v in proposed} == {(64,), (128, 64)}
    assert {v["train.batch_size"] for v in proposed} == {32, 64, 128}
    assert {v["train.epochs"] for v in proposed} == {2, 3}
