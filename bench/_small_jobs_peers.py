"""The processes bench/small_jobs.py times: plain peers, and our SDK with a stopwatch on it.

    python bench/_small_jobs_peers.py study --config peer.json --out result.json
    python bench/_small_jobs_peers.py train --config peer.json --out result.json
    python bench/_small_jobs_peers.py sdk --spec spec.yaml --address auto --out result.json

* ``study``: a plain Optuna study in one process, ``n_jobs`` trials at a time on threads,
  each trial training the MLP with PyTorch; TPE sampler (seeded, multivariate, constant
  liar: our searcher's settings) and Optuna's SuccessiveHalvingPruner.
* ``train``: one plain PyTorch training of the MLP, saving its weights at the end.
* ``sdk``: ``orchestrator.Client(address).run(spec)`` with ``time.monotonic()`` recorded at
  every event the SDK hands back, so the harness can split our run into its stages.

The peers import numpy, scikit-learn, torch and Optuna, never our packages: they are what
a user would write without the platform. Their split is ``jobs.data.prepare``'s, rebuilt
from the same rule (``split``); the harness checks that both give the same arrays. Their
training loop is ``jobs.worker``'s for one worker: the same layers built after the same
seed, optimizer, per-step lr schedule, gradient clipping, per-epoch seeded shuffle with
full batches only, and validation after every epoch.

Results go to the ``--out`` JSON file (written atomically), never to stdout.
``time.monotonic()`` is the system-wide CLOCK_MONOTONIC on Linux, so the stamps compare
with the parent's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

STARTED = time.monotonic()  # before any heavy import: the interpreter is up


def _write(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- data


def split(source: str, validation_split: float, seed: int):
    """``jobs.data.prepare``'s split of a scikit-learn set, rebuilt with numpy.

    Rows permuted by ``default_rng(seed)``, the first ``round(n * validation_split)`` for
    validation; features standardised with the training split's mean and std (0 -> 1);
    labels are the index of their value among the sorted classes.

    Returns:
        (x_train, y_train, x_val, y_val) as float32 / int64 arrays, and the class count.
    """
    import numpy as np
    import sklearn.datasets as skd

    bunch = getattr(skd, f"load_{source.removeprefix('sklearn://')}")()
    x = np.asarray(bunch.data, dtype=np.float64)
    classes = sorted(set(bunch.target.tolist()))
    index = {v: i for i, v in enumerate(classes)}
    y = np.array([index[v] for v in bunch.target.tolist()], dtype=np.int64)
    n = len(x)
    n_val = int(round(n * validation_split))
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = order[:n_val], order[n_val:]
    mean = x[train_idx].mean(0)
    std = x[train_idx].std(0)
    std[std == 0] = 1.0
    x = ((x - mean) / std).astype(np.float32)
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx], len(classes)


# --------------------------------------------------------------------------- training


def _set_path(tree: dict, path: str, value) -> None:
    node = tree
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def _lr_factor(sched: dict, step: int, steps_per_epoch: int, epochs: int) -> float:
    """The per-step lr multiplier: linear warm-up, then cosine / linear / step / constant."""
    warmup = sched.get("warmup_epochs", 0) * steps_per_epoch
    if warmup and step < warmup:
        return (step + 1) / warmup
    total = max(1, epochs * steps_per_epoch - warmup)
    progress = min(1.0, (step - warmup) / total)
    kind = sched.get("type", "none")
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "linear":
        return max(0.0, 1 - progress)
    if kind == "step":
        return sched.get("gamma", 0.1) ** (
            (step - warmup) // (sched.get("step_size_epochs", 10) * steps_per_epoch)
        )
    return 1.0


def _build(model: dict, n_features: int, n_outputs: int):
    from torch import nn

    act = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[model.get("activation", "relu")]
    layers, width = [], n_features
    for hidden in model["hidden_sizes"]:
        layers.append(
            nn.Sequential(nn.Linear(width, hidden), act(), nn.Dropout(model.get("dropout", 0.0)))
        )
        width = hidden
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def _optimizer(opt: dict, params):
    import torch

    if opt["type"] == "sgd":
        return torch.optim.SGD(
            params, lr=opt["lr"], momentum=opt.get("momentum", 0.9),
            weight_decay=opt.get("weight_decay", 0.0),
        )  # fmt: skip
    cls = torch.optim.AdamW if opt["type"] == "adamw" else torch.optim.Adam
    return cls(
        params, lr=opt["lr"], betas=tuple(opt.get("betas", (0.9, 0.999))),
        weight_decay=opt.get("weight_decay", 0.0),
    )  # fmt: skip


def plain_epoch(
    model, optimizer, scheduler, xt, yt, batch: int, steps: int, clip: float, seed: int
):
    """One epoch of a plain torch peer as the real worker runs it: a shuffle seeded per
    epoch, ``steps`` full batches (drop_last), clipping, a scheduler step per batch."""
    import torch
    import torch.nn.functional as F

    model.train()
    order = torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed))
    for i in range(steps):
        rows = order[i * batch : (i + 1) * batch]
        loss = F.cross_entropy(model(xt[rows]), yt[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()


def plain_accuracy(model, xv, yv) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return (model(xv).argmax(-1) == yv).double().mean().item()


def train(sections: dict, data, seed: int, on_epoch=None, build_lock=None) -> dict:
    """One training run; ``on_epoch(epoch, val_accuracy)`` after each epoch.

    Returns:
        {"model", "val_accuracy", "epochs", "epoch_s"}.
    """
    import contextlib

    import torch

    x_train, y_train, x_val, y_val, n_classes = data
    model_cfg, tr = sections["model"], sections["train"]
    with build_lock or contextlib.nullcontext():  # manual_seed is process-wide
        torch.manual_seed(seed)
        model = _build(model_cfg, x_train.shape[1], n_classes)
    batch, epochs = int(tr["batch_size"]), int(tr["epochs"])
    steps_per_epoch = max(1, len(x_train) // batch)
    optimizer = _optimizer(tr["optimizer"], model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(tr.get("scheduler", {}), step, steps_per_epoch, epochs)
    )
    clip = tr.get("gradient_clipping", 0.0)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    xv, yv = torch.from_numpy(x_val), torch.from_numpy(y_val)
    epoch_s, accuracy = [], float("nan")
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        plain_epoch(
            model, optimizer, scheduler, xt, yt, batch, len(xt) // batch, clip, seed + epoch
        )
        accuracy = plain_accuracy(model, xv, yv)
        epoch_s.append(time.perf_counter() - started)
        if on_epoch is not None:
            on_epoch(epoch, accuracy)
    return {"model": model, "val_accuracy": accuracy, "epochs": epochs, "epoch_s": epoch_s}


# --------------------------------------------------------------------------- peers


def _suggest(trial, path: str, dist: dict):
    kind, args = next(iter(dist.items()))
    if kind == "loguniform":
        return trial.suggest_float(path, args[0], args[1], log=True)
    if kind == "uniform":
        return trial.suggest_float(path, args[0], args[1])
    if kind == "int":
        return trial.suggest_int(path, args[0], args[1])
    if kind == "logint":
        return trial.suggest_int(path, args[0], args[1], log=True)
    if kind == "choice":  # by index, as our searcher does: lists are not Optuna categories
        return args[trial.suggest_categorical(path, list(range(len(args))))]
    raise ValueError(f"the peer does not know distribution {kind!r}")


def peer_study(config: dict) -> dict:
    """Plain Optuna + PyTorch: the same space, budget, epochs and split as our study."""
    import copy
    import threading

    import optuna
    import torch

    imported = time.monotonic()
    torch.set_num_threads(config.get("torch_threads", 1))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    d = config["data"]
    data = split(d["source"], d["validation_split"], d["seed"])
    loaded = time.monotonic()
    s = config["study"]
    sampler = optuna.samplers.TPESampler(
        seed=s["seed"], n_startup_trials=s["n_startup_trials"], multivariate=True,
        constant_liar=True,
    )  # fmt: skip
    pruner = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=s["min_resource"], reduction_factor=s["reduction_factor"]
    )
    study = optuna.create_study(direction=s["direction"], sampler=sampler, pruner=pruner)
    lock = threading.Lock()

    def objective(trial) -> float:
        sections = copy.deepcopy(config["sections"])
        for path, dist in config["space"].items():
            _set_path(sections, path, _suggest(trial, path, dist))

        def on_epoch(epoch: int, accuracy: float) -> None:
            trial.report(accuracy, epoch)
            if epoch < sections["train"]["epochs"] and trial.should_prune():
                raise optuna.TrialPruned()

        return train(sections, data, d["seed"], on_epoch, lock)["val_accuracy"]

    study.optimize(objective, n_trials=s["n_trials"], n_jobs=s["n_jobs"])
    finished = time.monotonic()
    states = [t.state.name for t in study.trials]
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    best_params = None
    if completed:  # choices were suggested by index: report the values
        best_params = {
            path: dist["choice"][value] if "choice" in dist else value
            for path, dist in config["space"].items()
            for value in [study.best_params[path]]
        }
    return {
        "import_s": imported - STARTED,
        "data_s": loaded - imported,
        "study_s": finished - loaded,
        "best_val_accuracy": study.best_value if completed else None,
        "best_params": best_params,
        "trials": len(states),
        "completed": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "epochs_trained": sum(len(t.intermediate_values) for t in study.trials),
        "n_train": int(len(data[0])),
        "n_val": int(len(data[2])),
    }


def peer_train(config: dict, out_dir: str) -> dict:
    """Plain PyTorch: one training of the spec's MLP, its weights saved at the end."""
    import torch

    imported = time.monotonic()
    torch.set_num_threads(config.get("torch_threads", 1))
    d = config["data"]
    data = split(d["source"], d["validation_split"], d["seed"])
    loaded = time.monotonic()
    result = train(config["sections"], data, d["seed"])
    trained = time.monotonic()
    torch.save(result["model"].state_dict(), os.path.join(out_dir, "model.pt"))
    return {
        "import_s": imported - STARTED,
        "data_s": loaded - imported,
        "train_s": trained - loaded,
        "save_s": time.monotonic() - trained,
        "epoch_s": result["epoch_s"],
        "val_accuracy": result["val_accuracy"],
        "n_train": int(len(data[0])),
        "n_val": int(len(data[2])),
    }


# --------------------------------------------------------------------------- our SDK


def _kind(event) -> str:
    """An event's kind: a dict's "type", or a typed event's class name in snake case
    (``EpochEnded`` -> ``epoch_ended``), so both forms of the trainer's events read alike."""
    if isinstance(event, dict):  # events of the code before issue 15 (the "before" runs)
        return str(event.get("type"))
    kind = getattr(event, "kind", None)  # typed events: jobs.events.Event
    if kind is not None:
        return kind
    name = type(event).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _field(event, name: str):
    if isinstance(event, dict):
        return event.get(name)
    return getattr(event, name, None)


def _trial_id(event):
    trial = _field(event, "trial")
    return _field(trial, "trial_id") if trial is not None else _field(event, "trial_id")


def _record(event, t: float) -> dict:
    kind = _kind(event)
    record = {"t": t, "kind": kind}
    stage = _field(event, "stage")
    if isinstance(stage, str):
        record["stage"] = stage
    trial_id = _trial_id(event)
    if trial_id is not None:
        record["trial_id"] = str(trial_id)
        trial = _field(event, "trial")
        status = _field(trial, "status") if trial is not None else None
        if status is not None:
            record["status"] = str(status)
    metrics = _field(event, "metrics")
    if isinstance(metrics, dict) and "epoch" in metrics:
        record["epoch"] = int(metrics["epoch"])
    rank = _field(event, "rank")
    if isinstance(rank, int):
        record["rank"] = rank
    return record


def run_sdk(spec: str, address: str | None, probe_workers: bool) -> dict:
    """``Client(address).run(spec)``, with the monotonic time of every event it hands back."""
    from orchestrator import Client

    sdk_imported = time.monotonic()
    events: list[dict] = []

    def on_event(event) -> None:
        events.append(_record(event, time.monotonic()))

    client = Client(address, show_worker_logs=False)
    # As the CLI does before anything imports Ray: with "auto", the recorded head's token
    # settings go into the environment, which Ray reads when it is imported.
    client.address  # noqa: B018
    error = None
    result = None
    try:
        result = client.run(spec, on_event=on_event)
    except Exception as exc:  # recorded: the harness reports it and goes on
        error = f"{type(exc).__name__}: {exc}"[:1000]
    returned = time.monotonic()
    out = {
        "started": STARTED,
        "wall_minus_monotonic": time.time() - time.monotonic(),  # to place log timestamps
        "sdk_imported": sdk_imported,
        "returned": returned,
        "events": events,
        "error": error,
        "jobs_file": sys.modules["jobs"].__file__ if "jobs" in sys.modules else None,
    }
    if result is not None:
        out["metrics"] = dict(result.metrics)
        if result.study is not None:
            out["study_wall_s"] = result.study.wall_s
            out["best_metric"] = result.study.best_metric
            out["trial_statuses"] = [t.status for t in result.study.trials]
    if probe_workers:
        out["worker_jobs_file"] = _worker_jobs_file()
    return out


def _worker_jobs_file() -> str | None:
    """Which ``jobs`` package a Ray worker of this cluster imports (checks a code root)."""
    try:
        import ray

        if not ray.is_initialized():
            return None

        @ray.remote(num_cpus=0)
        def where() -> str:
            import jobs

            return jobs.__file__

        return ray.get(where.remote(), timeout=60)
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("study", "train"):
        p = sub.add_parser(name)
        p.add_argument("--config", required=True, help="JSON written by bench/small_jobs.py")
        p.add_argument("--out", required=True)
    p = sub.add_parser("sdk")
    p.add_argument("--spec", required=True)
    p.add_argument("--address", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--probe-workers", action="store_true")
    args = parser.parse_args()
    if args.command == "sdk":
        _write(args.out, run_sdk(args.spec, args.address, args.probe_workers))
        return 0
    with open(args.config) as f:
        config = json.load(f)
    if args.command == "study":
        _write(args.out, peer_study(config))
    else:
        _write(args.out, peer_train(config, os.path.dirname(os.path.abspath(args.out))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
