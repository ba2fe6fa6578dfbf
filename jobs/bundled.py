"""scikit-learn's bundled sets as Arrow tables (float32 features, a ``target`` label)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def sklearn_table(name: str) -> pa.Table:
    import sklearn.datasets as skd

    bunch = getattr(skd, f"load_{name}")()
    names = [str(n) for n in getattr(bunch, "feature_names", [])] or [
        f"f{i}" for i in range(bunch.data.shape[1])
    ]
    columns = {n: bunch.data[:, i].astype(np.float32) for i, n in enumerate(names)}
    columns["target"] = bunch.target
    return pa.table(columns)
