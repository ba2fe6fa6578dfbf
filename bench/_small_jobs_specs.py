"""The pipeline specs of bench/small_jobs.py, and the peers' configs made from the same specs.

Each spec is a plain dict (written to YAML for ``orch``); ``peer_config`` turns one into
what ``bench/_small_jobs_peers.py`` reads, so the peer gets the spec's space, model,
optimizer, schedule, epochs, budget and split seed rather than a copy that could drift.
Imports nothing heavy: only the YAML reader, for examples/digits.yaml.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import yaml

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits.yaml"

# (a)'s search space; (b) takes examples/digits.yaml's.
SMALL_SPACE = {
    "train.optimizer.lr": {"loguniform": [1e-4, 1e-2]},
    "train.optimizer.weight_decay": {"loguniform": [1e-5, 1e-1]},
    "model.params.dropout": {"uniform": [0.0, 0.5]},
    "train.batch_size": {"choice": [16, 32, 64]},
}
ONE_CPU_WORKER = {"workers": 1, "resources_per_worker": {"CPU": 1}}


@dataclass(frozen=True)
class Sizes:
    """Trials and epochs of each part; ``None`` = the value of the source spec."""

    a_trials: int
    a_epochs: int
    b_trials: int | None
    b_epochs: int | None
    c_epochs: int
    d_trials: tuple[int, int]  # the two studies whose difference is (d)'s marginal cost
    e_epochs: int
    e_repeats: int
    e_variant_repeats: int  # runs of each (e) variant other than the defaults


FULL = Sizes(
    a_trials=6, a_epochs=12, b_trials=None, b_epochs=None, c_epochs=20, d_trials=(8, 32),
    e_epochs=4, e_repeats=3, e_variant_repeats=2,
)  # fmt: skip
QUICK = Sizes(
    a_trials=2, a_epochs=2, b_trials=2, b_epochs=2, c_epochs=2, d_trials=(2, 6), e_epochs=2,
    e_repeats=1, e_variant_repeats=1,
)  # fmt: skip


def study_a(sizes: Sizes) -> dict:
    """(a) breast_cancer, MLP [64, 32], TPE + ASHA (grace 3, factor 2), 2 trials at once."""
    return {
        "name": "small-breast-cancer",
        "data": {"source": "sklearn://breast_cancer"},
        "model": {"type": "mlp", "params": {"hidden_sizes": [64, 32], "dropout": 0.1}},
        "train": {
            "epochs": sizes.a_epochs,
            "batch_size": 32,
            "optimizer": {"type": "adamw", "lr": 0.001, "weight_decay": 0.0001},
            **ONE_CPU_WORKER,
        },
        "tune": {
            "metric": "val_accuracy",
            "mode": "max",
            "num_samples": sizes.a_trials,
            "max_concurrent_trials": 2,
            "search": {"algorithm": "bayesian", "seed": 0},
            "early_stopping": {
                "type": "asha",
                "grace_period": min(3, sizes.a_epochs),
                "reduction_factor": 2,
            },
            "space": copy.deepcopy(SMALL_SPACE),
        },
    }


# The study itself: whatever else the example's tune section asks (e.g. a refit of the best
# configuration) is not part of the comparison with a plain study.
STUDY_KEYS = (
    "metric", "mode", "num_samples", "max_concurrent_trials", "time_budget_s", "search",
    "early_stopping", "space",
)  # fmt: skip


def study_b(sizes: Sizes) -> dict:
    """(b) examples/digits.yaml's study with 1-worker trials (1 CPU, fp32, ZeRO-0), no serve."""
    spec = yaml.safe_load(DIGITS.read_text())
    spec["name"] = "small-digits"
    spec.pop("serve", None)
    spec["register"] = {"model_name": "small-digits"}
    spec["tune"] = {k: v for k, v in spec["tune"].items() if k in STUDY_KEYS}
    spec["train"].update(ONE_CPU_WORKER)
    # One worker: ZeRO partitions nothing; fp32 like the plain peer.
    spec["train"]["deepspeed"].update({"zero_stage": 0, "precision": "fp32"})
    if sizes.b_epochs is not None:
        spec["train"]["epochs"] = sizes.b_epochs
        early = spec["tune"]["early_stopping"]
        early["grace_period"] = min(early["grace_period"], sizes.b_epochs)
    if sizes.b_trials is not None:
        spec["tune"]["num_samples"] = sizes.b_trials
    return spec


def single_c(sizes: Sizes) -> dict:
    """(c) iris, one 1-CPU worker, no tune."""
    return {
        "name": "small-iris",
        "data": {"source": "sklearn://iris"},
        "model": {"type": "mlp", "params": {"hidden_sizes": [64, 32]}},
        "train": {
            "epochs": sizes.c_epochs,
            "batch_size": 16,
            "optimizer": {"type": "adamw", "lr": 0.01},
            **ONE_CPU_WORKER,
        },
    }


def overhead_d(sizes: Sizes, trials: int) -> dict:
    """(d) ``trials`` 1-epoch iris trials, 2 at a time: what a trial costs beyond its work."""
    spec = single_c(sizes)
    spec["name"] = f"small-iris-trials-{trials}"
    spec["train"]["epochs"] = 1
    spec["tune"] = {
        "metric": "val_accuracy",
        "num_samples": trials,
        "max_concurrent_trials": 2,
        "search": {"algorithm": "bayesian", "seed": 0},
        "early_stopping": {"type": "none"},
        "space": {"train.optimizer.lr": {"loguniform": [1e-3, 1e-1]}},
    }
    return spec


def zero2_e(sizes: Sizes) -> dict:
    """(e) iris on 2 data-parallel DeepSpeed workers, ZeRO-2, 1 CPU each."""
    spec = single_c(sizes)
    spec["name"] = "small-iris-zero2"
    spec["train"].update(
        epochs=sizes.e_epochs,
        workers=2,
        resources_per_worker={"CPU": 1},
        deepspeed={"zero_stage": 2, "precision": "fp32"},
    )
    return spec


def peer_config(spec: dict, n_jobs: int = 2) -> dict:
    """What the peer needs from a spec: split, model, training, space and study settings.

    Values the spec leaves out take our spec's defaults (jobs/spec.py, tuning/spec.py).
    """
    data = spec["data"]
    train = spec["train"]
    params = spec["model"].get("params", {})
    sections = {
        "model": {
            "hidden_sizes": params.get("hidden_sizes", [128, 64]),
            "dropout": params.get("dropout", 0.0),
            "activation": params.get("activation", "relu"),
        },
        "train": {
            "epochs": train.get("epochs", 10),
            "batch_size": train.get("batch_size", 64),
            "optimizer": {
                "type": "adamw",
                "lr": 1e-3,
                "weight_decay": 0.0,
                **train.get("optimizer", {}),
            },
            "scheduler": {"type": "none", **train.get("scheduler", {})},
            "gradient_clipping": train.get("deepspeed", {}).get("gradient_clipping", 0.0),
        },
    }
    config = {
        "data": {
            "source": data["source"],
            "validation_split": data.get("validation_split", 0.2),
            "seed": data.get("seed", 0),
        },
        "sections": sections,
        "torch_threads": 1,  # one core per trial (n_jobs threads) or per run, as our workers
    }
    tune = spec.get("tune")
    if tune is None:
        return config
    # Space paths name the spec (model.params.X); the peer's sections drop "params".
    config["space"] = {
        path.replace("model.params.", "model."): dist for path, dist in tune["space"].items()
    }
    trials = tune.get("num_samples", 16)
    search = tune.get("search", {})
    early = tune.get("early_stopping", {})
    config["study"] = {
        "n_trials": trials,
        "n_jobs": n_jobs,
        "seed": search.get("seed", 0),
        "n_startup_trials": search.get("initial_random_trials") or min(10, max(3, trials // 4)),
        "min_resource": min(early.get("grace_period", 2), sections["train"]["epochs"]),
        "reduction_factor": int(early.get("reduction_factor", 3)),
        "direction": "maximize" if tune.get("mode", "max") == "max" else "minimize",
    }
    return config
