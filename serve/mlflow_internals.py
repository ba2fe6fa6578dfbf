"""MLflow's private names, used in one place: the pickle check of a pt2 archive.

``torch.export.load`` unpickles parts of a ``.pt2`` archive, so an archive from the
registry must hold nothing but tensors and metadata before it is loaded: MLflow checks
exactly that before it loads a pt2 model itself, with the private
``mlflow.pytorch._validate_pt2_archive_is_pickle_free``. This is the only module that
touches MLflow's private names; tests/test_private_names.py checks that, and fails on the
MLflow upgrade that removes the name.
"""

from __future__ import annotations


def check_pt2_pickle_free(path: str) -> None:
    """Refuse a pt2 archive that holds a pickle.

    Raises:
        mlflow.exceptions.MlflowException: the archive holds something that is not a
            pickle-free payload.
    """
    from mlflow.pytorch import _validate_pt2_archive_is_pickle_free

    _validate_pt2_archive_is_pickle_free(path)
