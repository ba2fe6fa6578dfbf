"""Same seed, same global batch: ZeRO-3 and a hybrid 2-stage x 2-way pipeline follow plain
data parallelism's loss curve (the layout changes where the math runs, not the math)."""

from __future__ import annotations

import pytest

from jobs.data import prepare
from jobs.spec import DataSpec, ModelSpec, TrainSpec
from jobs.trainer import fit

# fp32 sums in a different order (all-reduce vs. local, stage boundaries) differ in the last
# bits; over 3 epochs that stays far below this relative tolerance.
RTOL = 1e-3

pytestmark = pytest.mark.slow


def _train(layout: dict, tmp_path, name: str) -> list[dict]:
    data = prepare(DataSpec(source="sklearn://digits", seed=0))
    train = TrainSpec.model_validate(
        {
            "epochs": 3,
            "batch_size": 64,
            "optimizer": {"type": "adamw", "lr": 0.002},
            "checkpoint": {"every_epochs": 3, "keep": 1},
            **layout,
        }
    )
    model = ModelSpec(type="mlp", params={"hidden_sizes": [64, 32], "dropout": 0.0})
    result = fit(model, train, data, seed=0, run_name=name, storage_path=str(tmp_path))
    return result.history


def test_zero3_and_pipeline_match_data_parallel(ray_session, tmp_path):
    plain = _train({"workers": 2, "deepspeed": {"zero_stage": 0}}, tmp_path, "dp")
    zero3 = _train({"workers": 2, "deepspeed": {"zero_stage": 3}}, tmp_path, "zero3")
    hybrid = _train(
        {
            "workers": 4,
            "resources_per_worker": {"CPU": 0.5},
            "deepspeed": {"zero_stage": 1, "pipeline_stages": 2},
        },
        tmp_path,
        "pp2xdp2",
    )
    assert [m["epoch"] for m in plain] == [1, 2, 3]
    assert plain[-1]["train_loss"] < plain[0]["train_loss"] * 0.5  # it learns
    for other in (zero3, hybrid):
        assert [m["epoch"] for m in other] == [1, 2, 3]
        for ref, got in zip(plain, other, strict=True):
            for key in ("train_loss", "val_loss", "val_accuracy"):
                assert got[key] == pytest.approx(ref[key], rel=RTOL), (key, ref["epoch"])


def test_plain_data_parallel_accumulates_like_zero2_and_trains_in_bf16(ray_session, tmp_path):
    """ZeRO-0 reduces with torch DDP's reducer (jobs.worker._overlapping_reducer), skipping
    the all-reduce on micro-batches before the accumulation boundary; ZeRO-2 reduces with
    DeepSpeed's own. bf16 at ZeRO-0 is autocast over fp32 weights: it must still learn."""
    accumulate = {"workers": 2, "resources_per_worker": {"CPU": 1}}
    plain = _train(
        {**accumulate, "deepspeed": {"zero_stage": 0, "gradient_accumulation_steps": 2}},
        tmp_path,
        "dp-gas2",
    )
    zero2 = _train(
        {**accumulate, "deepspeed": {"zero_stage": 2, "gradient_accumulation_steps": 2}},
        tmp_path,
        "zero2-gas2",
    )
    for ref, got in zip(zero2, plain, strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert got[key] == pytest.approx(ref[key], rel=RTOL), (key, ref["epoch"])
    bf16 = _train(
        {**accumulate, "deepspeed": {"zero_stage": 0, "precision": "bf16"}}, tmp_path, "dp-bf16"
    )
    assert bf16[-1]["val_accuracy"] >= 0.85
    assert bf16[-1]["train_loss"] == pytest.approx(plain[-1]["train_loss"], rel=0.1)
