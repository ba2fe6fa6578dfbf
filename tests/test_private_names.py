"""The private names of Ray and MLflow that our code uses still exist.

Each use is deliberate (there is no public equivalent) and named here, so the upgrade that
renames or removes one fails this test instead of a feature breaking quietly:
- ``ray.serve.context._get_global_client``: the running Serve's HTTP port (serve/deploy.py);
- ``mlflow.pytorch._validate_pt2_archive_is_pickle_free``: refuse a pt2 archive that holds
  pickles before ``torch.export.load`` (serve/quantize.py);
- Ray Tune's ASHA and median-rule internals that say why a trial was stopped
  (tuning/search.py: the rungs and cutoffs the decision used).
Ray Train's ``DatasetsCallback`` is checked by tests/jobs/test_startup.py.
"""

from __future__ import annotations


def test_serve_client_lookup():
    from ray.serve.context import _get_global_client

    # None without a running Serve; a worker of the suite may already run one
    client = _get_global_client(raise_if_no_controller_running=False)
    assert client is None or client.http_config.port > 0


def test_mlflow_pt2_pickle_check(tmp_path):
    import pytest
    from mlflow.exceptions import MlflowException
    from mlflow.pytorch import _validate_pt2_archive_is_pickle_free

    archive = tmp_path / "model.pt2"
    archive.write_bytes(b"not a zip archive")
    with pytest.raises(MlflowException, match="not a pickle-free payload"):
        _validate_pt2_archive_is_pickle_free(str(archive))


def test_tune_scheduler_internals_the_stop_reasons_read():
    from ray.tune.schedulers import AsyncHyperBandScheduler, MedianStoppingRule

    asha = AsyncHyperBandScheduler(metric="val_accuracy", mode="max", grace_period=1)
    assert isinstance(asha._trial_info, dict) and asha._metric_op == 1.0
    assert asha._metric == "val_accuracy"
    (bracket,) = asha._brackets
    assert isinstance(bracket._rungs, list) and callable(bracket.cutoff) and bracket.rf > 1

    median = MedianStoppingRule(metric="val_accuracy", mode="max")
    for method in ("_trials_beyond_time", "_running_mean", "_best_result"):
        assert callable(getattr(median, method)), method
    assert callable(MedianStoppingRule._on_insufficient_samples)
    assert median._metric == "val_accuracy"
