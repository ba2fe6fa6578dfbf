"""Baseline training loops for bench/train_throughput.py, without Ray or DeepSpeed.

Under ``torchrun --nproc_per_node N`` it is plain torch DDP over gloo; run directly with
``python bench/_ddp_baseline.py`` it is a single-process loop. Both mirror what a
``jobs.worker`` data-parallel rank does: the zoo's MLP built after the same seed, the spec's
AdamW, the worker's loss, one global batch per step of which each rank trains on its
contiguous slice. Every epoch is timed from its shuffle to its last optimizer step (no
validation, no checkpoint), like the worker's ``samples_per_s``.

Rank 0 prints ``{"samples_per_s": ..., "epoch_samples_per_s": [...], ...}`` as JSON on the
last stdout line; samples/s counts global samples and skips the first (warm-up) epoch.
With ``--profile-steps`` rank 0 profiles those steps with the trainer's own profiler
(``jobs.profiling``, the same phases), in the warm-up epoch, and adds its breakdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jobs.models import DataShape, build_layers
from jobs.profiling import StepProfiler, profiles_in
from jobs.schedule import build_optimizer
from jobs.spec import OptimizerSpec, ProfileSpec
from jobs.worker import loss_fn


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help=".npz file with x (float32), y (int64)")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True, help="global batch")
    parser.add_argument("--hidden", required=True, help="MLP hidden sizes, comma-separated")
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--profile-steps", type=int, default=0, help="steps to profile (0: off)")
    parser.add_argument("--profile-skip", type=int, default=10, help="steps before them")
    return parser.parse_args()


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    distributed = "LOCAL_RANK" in os.environ  # set by torchrun
    if distributed:
        torch.distributed.init_process_group("gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world = 0, 1

    data = np.load(args.data)
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    hidden = [int(h) for h in args.hidden.split(",")]
    torch.manual_seed(args.seed)  # the same initial weights as the trainer's workers
    layers = build_layers("mlp", {"hidden_sizes": hidden}, DataShape(x.shape[1], args.classes))
    model: nn.Module = nn.Sequential(*layers)
    if distributed:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = build_optimizer(OptimizerSpec(type="adamw", lr=args.lr), model.parameters())
    criterion = loss_fn("classification")

    batch = args.batch_size
    per_rank = batch // world
    steps = len(x) // batch  # drop_last, like the worker
    profile = None
    if args.profile_steps:
        profile = ProfileSpec(steps=args.profile_steps, skip=args.profile_skip)
    profiler = StepProfiler(profile, rank, torch.device("cpu"))
    rates: list[float] = []
    loss_sum = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed + epoch))
        if distributed:
            torch.distributed.barrier()
        started = time.perf_counter()
        xe, ye = x[order], y[order]
        loss_sum = 0.0
        for step in range(steps):
            lo = step * batch + rank * per_rank
            with profiler.phase("data_wait"):
                xb, yb = xe[lo : lo + per_rank], ye[lo : lo + per_rank]
            optimizer.zero_grad(set_to_none=True)
            with profiler.phase("forward"):
                loss = criterion(model(xb), yb)
            with profiler.phase("backward"):
                loss.backward()
            with profiler.phase("optimizer_step"):
                optimizer.step()
            loss_sum += loss.item()
            profiler.step_done()
        rates.append(steps * batch / (time.perf_counter() - started))

    with tempfile.TemporaryDirectory() as tmp:
        profiler.save_into(Path(tmp))
        profiles = [p.model_dump() for p in profiles_in(Path(tmp))]
    profiler.close()
    if rank == 0:
        steady = rates[1:] or rates
        result = {
            "samples_per_s": statistics.median(steady),
            "epoch_samples_per_s": rates,
            "world_size": world,
            "torch_threads": torch.get_num_threads(),
            "steps_per_epoch": steps,
            "final_train_loss": loss_sum / max(steps, 1),
            "profile": profiles,
        }
        print(json.dumps(result), flush=True)
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
