"""Trainables of the tuning-efficiency benchmark (``bench/tune_efficiency.py``).

They live in their own module so that Ray Tune's trial actors import them by name, and so
that importing the benchmark module (listing, rendering) stays free of torch. (The digits
study's trials are the real ones: ``tuning.trial.run_trial``.)

* ``hartmann_trial``: the Hartmann-6 function as a trainable whose reported value gets
  less noisy with every epoch.
* ``noop_trial``: reports once and returns; measures Ray Tune's per-trial overhead.
"""

from __future__ import annotations

import zlib

import numpy as np

# --------------------------------------------------------------------------- Hartmann-6

HARTMANN_MIN = -3.32237
HARTMANN_ARGMIN = (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)
HARTMANN_DIMS = tuple(f"x{i}" for i in range(1, 7))
_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)


def hartmann6(x) -> float:
    """The 6-d Hartmann function on [0, 1]^6 (minimum -3.32237)."""
    x = np.asarray(x, dtype=float)
    return float(-np.sum(_ALPHA * np.exp(-np.sum(_A * (x - _P) ** 2, axis=1))))


def hartmann_point(config: dict) -> list[float]:
    return [float(config[k]) for k in HARTMANN_DIMS]


def hartmann_trial(config: dict, *, epochs: int, noise_sd: float, seed: int) -> None:
    """Reports ``h(x) + noise`` with noise sd ``noise_sd / epoch``, epoch 1..``epochs``.

    The value goes under ``val_loss`` (minimised) because our TuneSpec only accepts trainer
    metric names; it is the Hartmann value, not a loss. The noise is seeded by the search
    seed and the point, so a rerun reports the same numbers.
    """
    import ray.tune

    x = hartmann_point(config)
    value = hartmann6(x)
    key = zlib.crc32(repr([round(v, 12) for v in x]).encode())
    rng = np.random.default_rng([seed, key])
    for epoch in range(1, epochs + 1):
        noisy = value + rng.normal(0.0, noise_sd / epoch)
        ray.tune.report({"epoch": epoch, "val_loss": noisy})


# --------------------------------------------------------------------------- overhead


def noop_trial(config: dict) -> None:
    """A trial that does nothing: one report, then return."""
    import ray.tune

    ray.tune.report({"epoch": 1, "val_loss": 0.0})
